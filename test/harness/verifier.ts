/**
 * Token verifier daemon for the RDS-like test databases: the PAM module pam_rdsiam.c sends it
 * `user '\0' token` over a unix socket and logs the user in iff it answers "OK".
 *
 * It checks what RDS checks, with test keys: the SigV4 signature (recomputed, never trusted),
 * the action, DBUser = the PAM user, host:port = this server's endpoint, the scope's region and
 * service, and the token's age. The reason for each decision lands in `entries` so tests can
 * assert *why* a login failed; the token itself is never kept (only its length and SHA-256).
 *
 * IMPORTANT: the daemon runs inside the jest process. A test that blocks the event loop
 * (execSync, spawnSync, Atomics.wait, a busy loop) while a database is authenticating
 * deadlocks the login until the module's 10 s socket timeout. Use only async child processes.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ALGORITHM, presignSignature } from './sign';

export interface VerifierOptions {
  socketPath: string;
  /** 'host:port' the token must be signed for (the endpoint name, not the address dialled). */
  endpoint: string;
  region: string;
  /** accessKeyId -> secretAccessKey */
  keys: Record<string, string>;
  /** Default 'rds-db'. */
  service?: string;
  /** Default 'connect'. */
  action?: string;
  /**
   * rds (default): RDS IAM tokens. dsql: Aurora DSQL tokens — no DBUser parameter, the action is
   * DbConnectAdmin for the user `admin` and DbConnect otherwise, `endpoint` is the host alone.
   */
  kind?: 'rds' | 'dsql';
  /** How far X-Amz-Date may lie in the future, seconds. Default 60. */
  maxSkewSeconds?: number;
  /** Milliseconds since the epoch; default Date.now. */
  now?: () => number;
  /** Answer each check this many milliseconds late, like a database whose token check is slow. Default 0. */
  delayMs?: number;
}

export interface VerifierEntry {
  /** Milliseconds since the epoch. */
  at: number;
  user: string;
  ok: boolean;
  reason: string;
  tokenLength: number;
  tokenSha256: string;
}

export interface Verifier {
  entries: VerifierEntry[];
  socketPath: string;
  /** Delay of each answer, milliseconds; may be changed while running. */
  delayMs: number;
  /** Users whose every token is refused (an IAM policy that lost rds-db:connect); may be changed. */
  revokedUsers: Set<string>;
  close(): Promise<void>;
}

/** Longest request accepted: far above any real token (~2.5 KB) and the databases' own caps. */
const MAX_REQUEST_BYTES = 256 * 1024;
const MAX_EXPIRES_SECONDS = 900;
const REQUIRED = [
  'Action',
  'DBUser',
  'X-Amz-Algorithm',
  'X-Amz-Credential',
  'X-Amz-Date',
  'X-Amz-Expires',
  'X-Amz-Signature',
  'X-Amz-SignedHeaders',
] as const;

type Verdict = { ok: boolean; reason: string };
const deny = (reason: string): Verdict => ({ ok: false, reason });

/** Parses `host:port/?k=v&...` strictly: duplicate or undecodable parameters make it malformed. */
function parseToken(token: string): { hostPort: string; params: Map<string, string> } | string {
  const q = token.indexOf('/?');
  if (q <= 0) return 'malformed token: no "host:port/?"';
  const params = new Map<string, string>();
  for (const part of token.slice(q + 2).split('&')) {
    const eq = part.indexOf('=');
    if (eq < 0) return 'malformed token: parameter without "="';
    let k: string, v: string;
    try {
      k = decodeURIComponent(part.slice(0, eq));
      v = decodeURIComponent(part.slice(eq + 1));
    } catch {
      return 'malformed token: bad percent-encoding';
    }
    if (params.has(k)) return `malformed token: duplicate ${k}`;
    params.set(k, v);
  }
  return { hostPort: token.slice(0, q), params };
}

/** `YYYYMMDDTHHMMSSZ` -> ms since the epoch, or NaN. */
function parseAmzDate(s: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  if (!m) return NaN;
  const [y, mo, d, h, mi, se] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  return Date.UTC(y, mo - 1, d, h, mi, se);
}

/** Decides one login. Checks authenticity first, then what the token is for, then its age. */
export function verifyToken(token: string, user: string, o: Omit<VerifierOptions, 'socketPath'>): Verdict {
  const service = o.service ?? 'rds-db';
  const parsed = parseToken(token);
  if (typeof parsed === 'string') return deny(parsed);
  const { hostPort, params } = parsed;
  const p = (k: (typeof REQUIRED)[number]): string => params.get(k) ?? '';
  const dsql = o.kind === 'dsql';
  for (const k of REQUIRED) if (!params.has(k) && !(dsql && k === 'DBUser')) return deny(`missing ${k}`);

  if (p('X-Amz-Algorithm') !== ALGORITHM) return deny(`algorithm ${p('X-Amz-Algorithm')}`);
  if (p('X-Amz-SignedHeaders') !== 'host') return deny(`signed headers ${p('X-Amz-SignedHeaders')}`);
  const date = p('X-Amz-Date');
  const signedAt = parseAmzDate(date);
  if (Number.isNaN(signedAt)) return deny(`bad X-Amz-Date ${date}`);
  const scope = p('X-Amz-Credential').split('/');
  if (scope.length !== 5 || scope[4] !== 'aws4_request') return deny('malformed X-Amz-Credential');
  const [keyId, day, region, scopeService] = scope as [string, string, string, string];
  if (day !== date.slice(0, 8)) return deny(`credential day ${day} does not match X-Amz-Date ${date}`);
  if (region !== o.region) return deny(`region ${region}, expected ${o.region}`);
  if (scopeService !== service) return deny(`service ${scopeService}, expected ${service}`);
  const secret = Object.prototype.hasOwnProperty.call(o.keys, keyId) ? o.keys[keyId] : undefined;
  if (secret === undefined) return deny(`unknown access key id ${keyId}`);

  const unsigned = [...params].filter(([k]) => k !== 'X-Amz-Signature');
  const expected = Buffer.from(
    presignSignature({ hostPort, params: unsigned, secret, date, region, service }),
  );
  const given = Buffer.from(p('X-Amz-Signature'));
  if (given.length !== expected.length || !timingSafeEqual(given, expected))
    return deny('signature mismatch');

  if (hostPort !== o.endpoint) return deny(`signed for ${hostPort}, expected ${o.endpoint}`);
  const action = o.action ?? (dsql ? (user === 'admin' ? 'DbConnectAdmin' : 'DbConnect') : 'connect');
  if (p('Action') !== action) return deny(`action ${p('Action')}, expected ${action}`);
  if (!dsql && p('DBUser') !== user) return deny(`DBUser ${p('DBUser')} does not match login user ${user}`);
  const expires = /^\d{1,4}$/.test(p('X-Amz-Expires')) ? Number(p('X-Amz-Expires')) : NaN;
  if (!(expires >= 1 && expires <= MAX_EXPIRES_SECONDS)) return deny(`X-Amz-Expires ${p('X-Amz-Expires')}`);
  const now = (o.now ?? Date.now)();
  if (now - signedAt > expires * 1000)
    return deny(`expired ${Math.round((now - signedAt) / 1000)} s after signing`);
  if (signedAt - now > (o.maxSkewSeconds ?? 60) * 1000) return deny('signed in the future');
  return { ok: true, reason: 'ok' };
}

/**
 * Listens on `o.socketPath` (replacing a stale socket file), world-connectable because the
 * database runs PAM as user postgres or mysql. Makes the socket's directory traversable too.
 */
export async function startVerifier(o: VerifierOptions): Promise<Verifier> {
  const entries: VerifierEntry[] = [];
  const self = { delayMs: o.delayMs ?? 0, revokedUsers: new Set<string>() } as Verifier;
  // Half-open: the module shuts down its side after the request, and a delayed answer must still go out.
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    const chunks: Buffer[] = [];
    let size = 0;
    socket.setTimeout(10_000, () => socket.destroy());
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_REQUEST_BYTES) socket.end('DENY request too large\n');
      else chunks.push(chunk);
    });
    socket.on('end', () => {
      if (size > MAX_REQUEST_BYTES) return;
      const request = Buffer.concat(chunks);
      const nul = request.indexOf(0);
      const user = nul < 0 ? '' : request.subarray(0, nul).toString('utf8');
      const token = nul < 0 ? '' : request.subarray(nul + 1).toString('utf8');
      const verdict =
        nul < 0
          ? deny('malformed request: no NUL after the user')
          : self.revokedUsers.has(user)
            ? deny(`access revoked for ${user} by the test`)
            : verifyToken(token, user, o);
      entries.push({
        at: (o.now ?? Date.now)(),
        user,
        ok: verdict.ok,
        reason: verdict.reason,
        tokenLength: Buffer.byteLength(token),
        tokenSha256: createHash('sha256').update(token).digest('hex'),
      });
      const answer = verdict.ok ? 'OK\n' : `DENY ${verdict.reason}\n`;
      if (self.delayMs > 0) setTimeout(() => socket.end(answer), self.delayMs);
      else socket.end(answer);
    });
  });
  await fs.rm(o.socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await fs.chmod(o.socketPath, 0o777);
  const dir = path.dirname(o.socketPath);
  const mode = (await fs.stat(dir)).mode & 0o7777;
  if ((mode & 0o011) !== 0o011) await fs.chmod(dir, mode | 0o011);
  Object.assign(self, {
    entries,
    socketPath: o.socketPath,
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await fs.rm(o.socketPath, { force: true });
    },
  });
  return self;
}
