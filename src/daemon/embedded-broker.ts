/**
 * A small MQTT broker (aedes) inside Perch, so it can be tried without installing Mosquitto.
 *
 * aedes itself puts no limit on packet size: its parser buffers whatever remaining length a client
 * announces (up to MQTT's 256 MiB). Every connection therefore passes through PacketSizeGuard, which reads
 * each packet's fixed header and drops the connection before an oversized body is buffered; publishes are
 * also checked for their exact payload size.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { Aedes, type Client } from 'aedes';
import type { PerchConfig } from '../config/schema.js';
import type { Logger } from '../common/log.js';
import { silentLogger } from '../common/log.js';

export type EmbeddedBrokerSettings = PerchConfig['embedded_broker'];

/** Room for topic, properties and headers on top of the largest payload. */
export const PACKET_OVERHEAD_BYTES = 128 * 1024;

export interface EmbeddedBrokerOptions {
  /** Host and port to listen on (the enabled flag is the caller's business). Port 0 picks a free one. */
  settings: Pick<EmbeddedBrokerSettings, 'host' | 'port'>;
  /** Largest publish payload accepted (mqtt.max_payload_bytes); bigger ones drop the client. */
  maxPayloadBytes?: number;
  logger?: Logger;
}

export class BrokerPortInUseError extends Error {
  constructor(
    readonly host: string,
    readonly port: number,
  ) {
    super(
      `embedded broker cannot listen on ${host}:${port}: port ${port} is already in use ` +
        '(is Mosquitto or another broker running there? change embedded_broker.port)',
    );
    this.name = 'BrokerPortInUseError';
  }
}

/**
 * Passes one TCP connection through to aedes, watching MQTT fixed headers: a packet whose remaining length
 * exceeds maxPacketBytes (or a malformed length) destroys the connection before its body is read.
 */
class PacketSizeGuard extends Duplex {
  private skip = 0;
  private inHeader = false;
  private length = 0;
  private multiplier = 1;
  private lengthBytes = 0;

  constructor(
    private readonly socket: Socket,
    private readonly maxPacketBytes: number,
    private readonly onReject: (why: string) => void,
  ) {
    super();
    socket.on('data', (chunk: Buffer) => {
      const problem = this.inspect(chunk);
      if (problem) {
        this.onReject(problem);
        this.destroy();
        return;
      }
      if (!this.push(chunk)) socket.pause();
    });
    socket.on('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
    socket.on('close', () => {
      if (!this.destroyed) this.destroy();
    });
  }

  /** Walks packet boundaries in a chunk; returns why the connection must go, or null. */
  private inspect(chunk: Buffer): string | null {
    let i = 0;
    while (i < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        this.skip -= n;
        i += n;
        continue;
      }
      if (!this.inHeader) {
        // First byte of a packet: type and flags. The remaining length (1-4 bytes) follows.
        this.inHeader = true;
        this.length = 0;
        this.multiplier = 1;
        this.lengthBytes = 0;
        i++;
        continue;
      }
      const byte = chunk[i++]!;
      this.length += (byte & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      this.lengthBytes++;
      if (byte & 0x80) {
        if (this.lengthBytes >= 4) return 'malformed remaining length';
        continue;
      }
      this.inHeader = false;
      if (this.length > this.maxPacketBytes) return `packet of ${this.length} bytes exceeds ${this.maxPacketBytes}`;
      this.skip = this.length;
    }
    return null;
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.socket.write(chunk)) cb();
    else this.socket.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.socket.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.socket.destroy();
    cb(err);
  }
}

export class EmbeddedBroker {
  private readonly log: Logger;
  private readonly maxPayloadBytes: number;
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private bound: { host: string; port: number } | null = null;

  constructor(private readonly opts: EmbeddedBrokerOptions) {
    this.log = (opts.logger ?? silentLogger).child({ module: 'embedded-broker' });
    this.maxPayloadBytes = opts.maxPayloadBytes ?? 1024 * 1024;
  }

  /** Where it listens once started (the real port when settings.port was 0). */
  get address(): { host: string; port: number } | null {
    return this.bound;
  }

  /** mqtt://host:port of the running broker. */
  get url(): string {
    if (!this.bound) throw new Error('embedded broker is not running');
    const host = this.bound.host.includes(':') ? `[${this.bound.host}]` : this.bound.host;
    return `mqtt://${host}:${this.bound.port}`;
  }

  async start(): Promise<{ host: string; port: number }> {
    if (this.broker) throw new Error('embedded broker already started');
    const { host, port } = this.opts.settings;
    const max = this.maxPayloadBytes;
    const broker = await Aedes.createBroker({
      authorizePublish: (client, packet, cb) => {
        const size = typeof packet.payload === 'string' ? Buffer.byteLength(packet.payload) : packet.payload.length;
        if (size > max) {
          this.log.warn(
            { client_id: client?.id, topic: packet.topic, bytes: size, max },
            'payload too large; dropping client',
          );
          cb(new Error(`payload of ${size} bytes exceeds ${max}`));
          return;
        }
        cb(null);
      },
    });
    broker.on('client', (client: Client) => this.log.info({ client_id: client.id }, 'client connected'));
    broker.on('clientDisconnect', (client: Client) => this.log.info({ client_id: client.id }, 'client disconnected'));
    broker.on('clientError', (client: Client, err: Error) =>
      this.log.warn({ client_id: client.id, err: err.message }, 'client error'),
    );
    broker.on('connectionError', (_client: Client, err: Error) =>
      this.log.warn({ err: err.message }, 'connection error'),
    );

    const server = createServer((socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
      const remote = `${socket.remoteAddress}:${socket.remotePort}`;
      const guard = new PacketSizeGuard(socket, max + PACKET_OVERHEAD_BYTES, (why) =>
        this.log.warn({ remote, why }, 'connection dropped'),
      );
      broker.handle(guard);
    });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      await new Promise<void>((r) => broker.close(() => r()));
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EADDRINUSE') throw new BrokerPortInUseError(host, port);
      throw new Error(`embedded broker cannot listen on ${host}:${port}: ${(err as Error).message}`, { cause: err });
    }
    server.on('error', (err) => this.log.error({ err }, 'embedded broker server error'));
    const addr = server.address() as AddressInfo;
    this.broker = broker;
    this.server = server;
    this.bound = { host, port: addr.port };
    this.log.info({ host, port: addr.port, max_payload_bytes: max }, 'embedded broker listening');
    return this.bound;
  }

  /** Disconnect every client and stop listening. Safe to call twice. */
  async stop(): Promise<void> {
    const { broker, server } = this;
    if (!broker || !server) return;
    this.broker = null;
    this.server = null;
    const serverClosed = new Promise<void>((r) => server.close(() => r()));
    await new Promise<void>((r) => broker.close(() => r()));
    // aedes destroys client streams; anything still open (e.g. a socket that never sent CONNECT) goes too.
    for (const s of this.sockets) s.destroy();
    await serverClosed;
    this.bound = null;
    this.log.info('embedded broker stopped');
  }
}
