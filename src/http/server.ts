/**
 * The HTTP API module: one node:http server carrying the OpenAI chat API (openai.ts), the llama.cpp server
 * endpoints Frigate's provider reads, and the Ollama API Home Assistant's integration uses (ollama.ts). Every
 * generation is a job of kind `http` in the daemon's one scheduler (after spoken questions and transcripts,
 * before captions), so HTTP clients share the model with MQTT in priority order.
 *
 * At the edge: localhost unless configured, an optional bearer token, bodies bounded before they are read
 * whole, JSON validated before use, no CORS unless origins are configured. A client that goes away cancels
 * its job. Each API shapes its own errors; this file maps the engine's and scheduler's failures to statuses.
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from '../common/log.js';
import type { HttpSettings } from '../config/schema.js';
import type { AnswerEngine, GenerationRequest, GenerationResult } from '../engine/types.js';
import { errorCodeFor } from '../pipelines/ask.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import { ollamaRoutes } from './ollama.js';
import { openAiRoutes } from './openai.js';

/** What a route gets: the parsed request and the means to answer it. */
export interface RouteContext {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  url: URL;
  /** The body parsed as JSON (POST routes only). */
  body: unknown;
  /** Aborted when the client goes away before the answer is complete. */
  signal: AbortSignal;
}

export type Route = (ctx: RouteContext) => Promise<void>;

/** What the API handlers need from the daemon. */
export interface HttpApi {
  settings: HttpSettings;
  engine: () => AnswerEngine;
  /** Runs a generation as an `http` job; rejects with the scheduler's or the engine's error. */
  generate(request: Omit<GenerationRequest, 'signal'>, signal: AbortSignal): Promise<GenerationResult>;
  /** Whether `name` is this server's model (as clients write it: "perch", "perch:latest"). */
  isModel(name: unknown): boolean;
  version: string;
  /** model.context_tokens: what /props and /api/show report. */
  contextTokens: number;
}

/** A failure with its HTTP status and a stable code; each API renders it in its own error shape. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

/** Status and code for an engine or scheduler failure (the codes of the MQTT errors, docs/mqtt.md). */
export function httpErrorFor(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  const code = errorCodeFor(err);
  const message = err instanceof Error ? err.message : String(err);
  switch (code) {
    case 'invalid_request':
      return new HttpError(400, code, message);
    case 'invalid_output':
      return new HttpError(502, code, message);
    case 'busy':
    case 'deadline':
      return new HttpError(503, code, message, { 'Retry-After': '5' });
    case 'unavailable':
      return new HttpError(503, code, message, { 'Retry-After': '30' });
    case 'cancelled':
      return new HttpError(499, code, message);
    default:
      return new HttpError(500, 'internal', message);
  }
}

export interface HttpServerOptions {
  settings: HttpSettings;
  engine: () => AnswerEngine;
  scheduler: Scheduler;
  version: string;
  contextTokens: number;
  logger: Logger;
}

interface Counts {
  requests: number;
  generations: number;
  errors: number;
  rejected: number;
}

export class HttpServer {
  private server: http.Server | null = null;
  private readonly sockets = new Set<Socket>();
  private readonly routes: Map<string, { route: Route; api: 'openai' | 'ollama' }>;
  private readonly counts: Counts = { requests: 0, generations: 0, errors: 0, rejected: 0 };
  private readonly log: Logger;
  private readonly api: HttpApi;

  constructor(private readonly o: HttpServerOptions) {
    this.log = o.logger.child({ module: 'http' });
    const model = o.settings.model_name;
    this.api = {
      settings: o.settings,
      engine: o.engine,
      version: o.version,
      contextTokens: o.contextTokens,
      isModel: (name) =>
        typeof name === 'string' && (name === model || name === `${model}:latest` || name === `perch/${model}`),
      generate: (request, signal) => this.generate(request, signal),
    };
    this.routes = new Map();
    for (const [key, route] of Object.entries(openAiRoutes(this.api))) this.routes.set(key, { route, api: 'openai' });
    for (const [key, route] of Object.entries(ollamaRoutes(this.api))) this.routes.set(key, { route, api: 'ollama' });
  }

  /** The bound address (tests ask with port 0). */
  address(): AddressInfo | null {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a : null;
  }

  async start(): Promise<void> {
    const server = http.createServer((req, res) => void this.handle(req, res));
    server.requestTimeout = 0; // generations may take minutes on a slow board; the scheduler's deadlines apply
    server.headersTimeout = 30_000;
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.o.settings.port, this.o.settings.listen, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'HTTP server error'));
    this.server = server;
    const a = this.address();
    this.log.info(
      { address: a?.address, port: a?.port, auth: this.o.settings.token !== undefined },
      'HTTP API listening',
    );
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = null;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    // Open requests end now: their jobs are cancelled through the closed sockets.
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  stats(): { http: Counts } {
    return { http: { ...this.counts } };
  }

  private async generate(request: Omit<GenerationRequest, 'signal'>, signal: AbortSignal): Promise<GenerationResult> {
    const id = `http-${randomUUID()}`;
    const onAbort = (): void => void this.o.scheduler.cancel(id, 'the HTTP client went away');
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      this.counts.generations++;
      return await this.o.scheduler.submit({
        kind: 'http',
        id,
        run: (jobSignal) => this.o.engine().generate({ ...request, signal: jobSignal }),
      });
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    this.counts.requests++;
    const controller = new AbortController();
    // The response closing before it finished means the client went away.
    res.on('close', () => {
      if (!res.writableFinished) controller.abort();
    });
    const url = new URL(req.url ?? '/', 'http://localhost');
    const found = this.routes.get(`${req.method} ${url.pathname}`);
    const api = found?.api ?? (url.pathname.startsWith('/api/') ? 'ollama' : 'openai');
    try {
      if (!this.cors(req, res)) return;
      this.authorize(req);
      if (!found) {
        const known = [...this.routes.keys()].some((k) => k.endsWith(` ${url.pathname}`));
        throw known
          ? new HttpError(405, 'method_not_allowed', `${req.method} is not allowed on ${url.pathname}`)
          : new HttpError(404, 'not_found', `no such endpoint: ${url.pathname}`);
      }
      const body = req.method === 'POST' ? await this.readJson(req) : undefined;
      await found.route({ req, res, url, body, signal: controller.signal });
    } catch (err) {
      const e = httpErrorFor(err);
      if (e.status >= 500 && e.code === 'internal') this.log.error({ err, path: url.pathname }, 'HTTP request failed');
      if (e.status === 503) this.counts.rejected++;
      this.counts.errors++;
      if (res.headersSent) {
        res.end();
        return;
      }
      const body =
        api === 'ollama' ? { error: e.message } : { error: { message: e.message, type: e.code, code: e.code } };
      sendJson(res, e.status, body, e.headers);
    }
  }

  /** Answers a preflight and sets the CORS headers for allowed origins; false when the request is done. */
  private cors(req: http.IncomingMessage, res: http.ServerResponse): boolean {
    const origin = req.headers.origin;
    const allowed = origin !== undefined && this.o.settings.cors_origins.includes(origin);
    if (allowed) {
      res.setHeader('Access-Control-Allow-Origin', origin);
      res.setHeader('Vary', 'Origin');
    }
    if (req.method !== 'OPTIONS') return true;
    if (!allowed) throw new HttpError(403, 'forbidden', 'cross-origin requests are not allowed (http.cors_origins)');
    res.writeHead(204, {
      'Access-Control-Allow-Methods': 'GET, POST, OPTIONS',
      'Access-Control-Allow-Headers': 'Authorization, Content-Type',
      'Access-Control-Max-Age': '600',
    });
    res.end();
    return false;
  }

  private authorize(req: http.IncomingMessage): void {
    const token = this.o.settings.token;
    if (token === undefined) return;
    const given = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1]?.trim() ?? '';
    const a = Buffer.from(given);
    const b = Buffer.from(token);
    if (a.length !== b.length || !timingSafeEqual(a, b))
      throw new HttpError(401, 'unauthorized', 'missing or wrong bearer token (Authorization: Bearer <http.token>)');
  }

  /** Reads the body (at most http.max_body_bytes) and parses it as JSON. */
  private async readJson(req: http.IncomingMessage): Promise<unknown> {
    const limit = this.o.settings.max_body_bytes;
    const declared = Number(req.headers['content-length'] ?? Number.NaN);
    if (declared > limit) {
      req.resume();
      throw new HttpError(
        413,
        'payload_too_large',
        `request body of ${declared} bytes is over ${limit} (http.max_body_bytes)`,
      );
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > limit) {
        req.resume();
        throw new HttpError(413, 'payload_too_large', `request body is over ${limit} bytes (http.max_body_bytes)`);
      }
      chunks.push(chunk as Buffer);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    if (text.trim() === '')
      throw new HttpError(400, 'invalid_json', 'the request body is empty; a JSON object was expected');
    try {
      return JSON.parse(text) as unknown;
    } catch (err) {
      throw new HttpError(400, 'invalid_json', `the request body is not JSON: ${(err as Error).message}`);
    }
  }
}

export function sendJson(
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Zod issues as one sentence naming the fields. */
export function describeIssues(issues: ReadonlyArray<{ path: PropertyKey[]; message: string }>): string {
  return issues
    .slice(0, 5)
    .map((i) => `${i.path.length ? i.path.map(String).join('.') : '(body)'}: ${i.message}`)
    .join('; ');
}
