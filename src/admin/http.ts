/**
 * The admin HTTP server (node:http, no framework), on `admin.listen`:
 *   GET  /healthz         liveness: 200 while the process serves requests (also while draining)
 *   GET  /readyz          200 when every listener is bound and can get a secret; 503 with a JSON
 *                         body naming what is not ready; 503 while draining
 *   GET  /metrics         Prometheus text format (the one registry in metrics.ts)
 *   POST /quitquitquit    starts the same drain as SIGTERM; loopback clients only
 * Bodies never contain a token or password: readiness only reports whether one could be made.
 */
import type http from 'node:http';
import { isIP } from 'node:net';
import { nodeHttp } from '../lazy';
import type { Logger } from '../log';
import { parseListen } from '../config/load';
import { ErrorCode, ProxyError } from '../errors';
import { renderMetrics } from './metrics';

/** One listener's line in /readyz. */
export interface ReadinessEntry {
  listener: string;
  ready: boolean;
  reason?: string;
}

/** What /readyz reports. */
export interface ReadinessReport {
  /** ready, not ready, or draining. */
  status: 'ready' | 'not ready' | 'draining';
  listeners: ReadinessEntry[];
}

/** What the admin server asks the runtime. */
export interface AdminHandlers {
  readiness(): Promise<ReadinessReport>;
  /** POST /quitquitquit: start draining (idempotent). */
  quit(): void;
}

/** True for loopback peers (127.0.0.0/8, ::1, and IPv4-mapped loopback). */
export function isLoopbackPeer(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.startsWith('::ffff:') ? address.slice(7) : address;
  if (isIP(a) === 4) return a.startsWith('127.');
  return a === '::1';
}

export class AdminServer {
  private constructor(
    private readonly server: http.Server,
    private readonly log: Logger,
  ) {}

  /** Binds `listen` (host:port; host defaults to 127.0.0.1). Rejects with a ProxyError naming the address. */
  static async start(listen: string | number, handlers: AdminHandlers, log: Logger): Promise<AdminServer> {
    const bind = parseListen(listen);
    if (bind.kind !== 'tcp') throw new ProxyError(ErrorCode.Config, 'admin.listen must be host:port');
    const server = nodeHttp().createServer((req, res) => {
      route(req, res, handlers).catch((err: unknown) => {
        log.error({ err }, 'admin request failed');
        if (!res.headersSent) send(res, 500, { error: 'internal error' });
        else res.destroy();
      });
    });
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new ProxyError(
            ErrorCode.Config,
            `admin server cannot listen on ${bind.host}:${bind.port}: ${err.code ?? err.message}`,
            { cause: err },
          ),
        ),
      );
      server.listen({ host: bind.host, port: bind.port }, resolve);
    });
    server.removeAllListeners('error');
    server.on('error', (err) => log.error({ err }, 'admin server error'));
    const admin = new AdminServer(server, log);
    log.info({ address: admin.address() }, 'admin server listening');
    return admin;
  }

  /** host:port actually bound. */
  address(): string {
    const a = this.server.address();
    if (a && typeof a === 'object')
      return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    return String(a);
  }

  port(): number {
    const a = this.server.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  /** Stops listening and closes open admin connections. */
  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    this.log.debug('admin server closed');
  }
}

async function route(req: http.IncomingMessage, res: http.ServerResponse, h: AdminHandlers): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  const method = req.method ?? 'GET';
  const read = method === 'GET' || method === 'HEAD';
  switch (path) {
    case '/healthz':
      if (!read) return notAllowed(res, 'GET, HEAD');
      return send(res, 200, { status: 'ok' });
    case '/readyz': {
      if (!read) return notAllowed(res, 'GET, HEAD');
      const report = await h.readiness();
      return send(res, report.status === 'ready' ? 200 : 503, report);
    }
    case '/metrics': {
      if (!read) return notAllowed(res, 'GET, HEAD');
      const m = await renderMetrics();
      res.writeHead(200, { 'Content-Type': m.contentType, 'Cache-Control': 'no-store' });
      res.end(method === 'HEAD' ? undefined : m.body);
      return;
    }
    case '/quitquitquit':
      if (method !== 'POST') return notAllowed(res, 'POST');
      if (!isLoopbackPeer(req.socket.remoteAddress))
        return send(res, 403, { error: 'only loopback clients may ask the proxy to quit' });
      send(res, 202, { status: 'draining' });
      h.quit();
      return;
    default:
      return send(res, 404, {
        error: 'not found',
        endpoints: ['/healthz', '/readyz', '/metrics', 'POST /quitquitquit'],
      });
  }
}

function notAllowed(res: http.ServerResponse, allow: string): void {
  res.setHeader('Allow', allow);
  send(res, 405, { error: 'method not allowed' });
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Cache-Control': 'no-store',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(res.req.method === 'HEAD' ? undefined : text);
}
