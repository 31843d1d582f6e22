/**
 * `rds-iam-proxy wait` and `rds-iam-proxy shutdown`: small clients of a running proxy's admin
 * server (src/admin/http.ts), for an app container's startup, an init step or a preStop hook.
 */
import { nodeHttp } from '../lazy';
import { parseListen } from '../config/load';
import { ErrorCode, ProxyError } from '../errors';

/** Where `wait` and `shutdown` look when neither --admin nor RDS_IAM_PROXY_ADMIN is given. */
export const DEFAULT_ADMIN = '127.0.0.1:9090';

/** What one admin request answered. */
interface Answer {
  status: number;
  body: string;
}

/** `host:port` (or a bare port) of the admin server as an http origin. */
export function adminOrigin(admin: string): string {
  let bind;
  try {
    bind = parseListen(admin);
  } catch (err) {
    throw new ProxyError(ErrorCode.Config, `--admin ${admin}: ${(err as Error).message}`);
  }
  if (bind.kind !== 'tcp') throw new ProxyError(ErrorCode.Config, `--admin ${admin}: expected host:port`);
  const host = bind.host.includes(':') ? `[${bind.host}]` : bind.host;
  return `http://${host}:${bind.port}`;
}

/** Parses `30s`, `500ms`, `2m` or a bare number of seconds into milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (!m) throw new ProxyError(ErrorCode.Config, `"${text}" is not a duration; use e.g. 30s, 500ms or 2m`);
  const n = Number(m[1]);
  return Math.round(m[2] === 'ms' ? n : m[2] === 'm' ? n * 60_000 : n * 1000);
}

function request(url: string, method: 'GET' | 'POST', timeoutMs: number): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = nodeHttp().request(url, { method, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: body.trim() }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Polls GET /readyz until it answers 200; resolves with its body. Rejects at `timeoutMs` with a
 * one-line reason: the last /readyz body, or why the admin server could not be reached.
 */
export async function waitReady(admin: string, timeoutMs: number, intervalMs = 200): Promise<string> {
  const url = `${adminOrigin(admin)}/readyz`;
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer yet';
  for (;;) {
    const left = deadline - Date.now();
    try {
      const a = await request(url, 'GET', Math.max(100, Math.min(left, 5000)));
      if (a.status === 200) return a.body;
      last = `/readyz ${a.status}: ${a.body.replace(/\s+/g, ' ')}`;
    } catch (err) {
      last = `cannot reach the admin server at ${admin} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); is the proxy running with --admin ${admin} (admin.listen)?`;
    }
    if (Date.now() + intervalMs >= deadline)
      throw new ProxyError(
        ErrorCode.Internal,
        `not ready after ${Math.round(timeoutMs / 100) / 10}s: ${last}`,
      );
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** POST /quitquitquit: the proxy starts the same drain as SIGTERM. Resolves once it is accepted. */
export async function requestShutdown(admin: string, timeoutMs = 10_000): Promise<string> {
  let a: Answer;
  try {
    a = await request(`${adminOrigin(admin)}/quitquitquit`, 'POST', timeoutMs);
  } catch (err) {
    throw new ProxyError(
      ErrorCode.Internal,
      `cannot reach the admin server at ${admin}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      { hint: `is the proxy running with --admin ${admin} (admin.listen)?` },
    );
  }
  if (a.status < 200 || a.status > 299)
    throw new ProxyError(ErrorCode.Internal, `shutdown refused: ${a.status} ${a.body}`);
  return a.body;
}
