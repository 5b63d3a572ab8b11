/**
 * mDNS advertisement of the Wyoming server as `<name>._wyoming._tcp.local.`, the service type Home
 * Assistant's wyoming integration browses for (it reads no TXT records: on discovery it connects and sends
 * `describe`). bonjour-service answers queries and announces the service; stop() sends its goodbye.
 */
import { Bonjour } from 'bonjour-service';
import type { Logger } from '../common/log.js';

export interface Advertisement {
  stop(): Promise<void>;
}

export function advertise(o: { name: string; port: number; logger: Logger }): Advertisement {
  const bonjour = new Bonjour({}, (err: unknown) => o.logger.warn({ err }, 'mDNS advertisement failed'));
  const service = bonjour.publish({ name: o.name, type: 'wyoming', protocol: 'tcp', port: o.port });
  service.on('up', () => o.logger.info(`Wyoming server advertised over mDNS as ${o.name}._wyoming._tcp.local`));
  service.on('error', (err: unknown) => o.logger.warn({ err }, 'mDNS advertisement failed'));
  return {
    stop: () =>
      new Promise<void>((resolve) => {
        bonjour.unpublishAll(() => bonjour.destroy(() => resolve()));
      }),
  };
}

/** Whether an address to listen on reaches this machine only (nothing to advertise then). */
export function isLoopback(listen: string): boolean {
  return listen === 'localhost' || listen === '::1' || /^127\./.test(listen);
}
