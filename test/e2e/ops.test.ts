/**
 * Production operations, in process: the admin endpoints (/healthz, /readyz, /metrics,
 * POST /quitquitquit) against real traffic, the per-connection log lines, draining, and every
 * limit with its protocol-native error (53300 through node-postgres). The proxy runs at trace
 * level and no token, secret key or password may appear in its logs or admin responses.
 */
import http from 'node:http';
import net from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Client, type ClientConfig } from 'pg';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { LONG_SESSION_TOKEN, testCredentials } from '../harness/proxy';
import { psql } from '../harness/clients';
import { rawConnect } from '../harness/pgraw';
import { TEST_SECRET_ACCESS_KEY } from '../harness/sign';
import { validateConfig } from '../../src/config/load';
import type { ConfigInput } from '../../src/config/schema';
import { createLogger } from '../../src/log';
import { IamTokenMinter } from '../../src/credentials/tokens';
import { Runtime } from '../../src/runtime';

const UPSTREAM_PASSWORD = 'Upstream-S3cret-Pw-7f3a9c';

let db: RdsLikePg;
let tmp: string;
/** Every log line and admin response body of every runtime started here, checked for secrets. */
const seen: string[] = [];
const runtimes: Runtime[] = [];

interface Running {
  rt: Runtime;
  logs: string[];
  records(): Record<string, unknown>[];
  port(listener: string): number;
  admin(path: string, method?: string): Promise<{ status: number; body: string }>;
}

async function start(
  cfg: Omit<ConfigInput, 'log'>,
  env: NodeJS.ProcessEnv = {},
  load?: () => Omit<ConfigInput, 'log'>,
): Promise<Running> {
  const logs: string[] = [];
  let partial = '';
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines.filter((x) => x.length > 0)) {
        logs.push(l);
        seen.push(l);
      }
      cb();
    },
  });
  const full = (c: Omit<ConfigInput, 'log'>) =>
    validateConfig({ log: { level: 'trace', format: 'json' }, admin: { listen: '127.0.0.1:0' }, ...c });
  const config = full(cfg);
  const log = createLogger({ level: 'trace', format: 'json', destination });
  const minter = new IamTokenMinter(testCredentials({ sessionToken: LONG_SESSION_TOKEN }));
  const rt = new Runtime({
    config,
    log,
    version: '0.0.0-test',
    deps: { minter, env },
    ...(load ? { load: () => full(load()) } : {}),
  });
  await rt.start();
  runtimes.push(rt);
  return {
    rt,
    logs,
    records: () => logs.map((l) => JSON.parse(l) as Record<string, unknown>),
    port(name) {
      const l = rt.app.listeners.find((x) => x.name === name);
      if (!l) throw new Error(`no listener ${name}`);
      return l.port();
    },
    async admin(path, method = 'GET') {
      const port = rt.adminServer?.port();
      const r = await request(`http://127.0.0.1:${port}${path}`, method);
      seen.push(r.body);
      return r;
    },
  };
}

function request(url: string, method: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent: false }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const upstream = () => ({ host: db.host, port: db.port, address: db.address, tls: { ca: db.caFile } });
const listener = (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  engine: 'postgres' as const,
  listen: '127.0.0.1:0',
  upstream: upstream(),
  client: { tls: 'off' as const },
  ...extra,
});

async function connect(port: number, extra: Partial<ClientConfig> = {}): Promise<Client> {
  const c = new Client({ host: '127.0.0.1', port, user: 'alice', database: 'appdb', ...extra });
  c.on('error', () => undefined); // asserted through query results and 'end'
  await c.connect();
  return c;
}

/** Connects and returns the error (with its SQLSTATE) the proxy answered with, or undefined on success. */
async function connectError(port: number): Promise<(Error & { code?: string }) | undefined> {
  const c = new Client({ host: '127.0.0.1', port, user: 'alice', database: 'appdb' });
  c.on('error', () => undefined);
  try {
    await c.connect();
    await c.end();
    return undefined;
  } catch (err) {
    return err as Error & { code?: string };
  }
}

/** The value of one sample in a Prometheus text body, or undefined. */
function sample(body: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of body.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(m[3]);
  }
  return undefined;
}

async function until(
  check: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'rip-ops-'));
  db = await startRdsLikePostgres();
});

afterAll(async () => {
  for (const rt of runtimes) {
    rt.shutdown('SIGTERM');
    rt.shutdown('SIGTERM'); // at once
    await rt.done;
  }
  await db?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

afterEach(() => {
  // Nothing secret may reach the logs or an admin response, at any level (trace here).
  const all = seen.join('\n');
  expect(all).not.toContain('X-Amz-Signature');
  expect(all).not.toContain(LONG_SESSION_TOKEN.slice(0, 40));
  expect(all).not.toContain(TEST_SECRET_ACCESS_KEY);
  expect(all).not.toContain(UPSTREAM_PASSWORD);
});

describe('admin endpoints and logs', () => {
  let p: Running;
  beforeAll(async () => {
    p = await start({ listeners: [listener('app')] });
  });

  test('/healthz is 200; /readyz is 200 naming each listener, without the token', async () => {
    const h = await p.admin('/healthz');
    expect(h.status).toBe(200);
    expect(JSON.parse(h.body)).toEqual({ status: 'ok' });
    const r = await p.admin('/readyz');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toEqual({ status: 'ready', listeners: [{ listener: 'app', ready: true }] });
    expect(r.body).not.toMatch(/Action=connect|X-Amz/);
  });

  test('unknown paths are 404, wrong methods 405', async () => {
    expect((await p.admin('/nope')).status).toBe(404);
    expect((await p.admin('/healthz', 'POST')).status).toBe(405);
    expect((await p.admin('/quitquitquit', 'GET')).status).toBe(405);
    expect((await p.admin('/healthz', 'HEAD')).status).toBe(200);
  });

  test('/metrics reports real traffic: connections, phases, bytes, tokens, process', async () => {
    const r = await psql(`host=127.0.0.1 port=${p.port('app')} user=alice dbname=appdb sslmode=disable`, [
      '-c',
      'select 42',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('42');
    await until(() => p.rt.app.connections() === 0, 'the session to end');
    const m = await p.admin('/metrics');
    expect(m.status).toBe(200);
    const body = m.body;
    expect(sample(body, 'rds_iam_proxy_connections_total', { listener: 'app', outcome: 'spliced' })).toBe(1);
    expect(sample(body, 'rds_iam_proxy_connections_active', { listener: 'app' })).toBe(0);
    for (const phase of [
      'downstream',
      'token',
      'upstream_connect',
      'upstream_tls',
      'upstream_login',
      'total',
    ]) {
      expect(sample(body, 'rds_iam_proxy_handshake_duration_seconds_count', { listener: 'app', phase })).toBe(
        1,
      );
    }
    expect(
      sample(body, 'rds_iam_proxy_bytes_total', { listener: 'app', direction: 'upstream' }),
    ).toBeGreaterThan(0);
    expect(
      sample(body, 'rds_iam_proxy_bytes_total', { listener: 'app', direction: 'downstream' }),
    ).toBeGreaterThan(0);
    expect(
      sample(body, 'rds_iam_proxy_sessions_closed_total', { listener: 'app', reason: 'client_closed' }),
    ).toBe(1);
    expect(sample(body, 'rds_iam_proxy_session_duration_seconds_count', { listener: 'app' })).toBe(1);
    const endpoint = `${db.host}:${db.port}`;
    // alice is a name the client chose (auth: trust), not one the config names: folded into one series.
    expect(
      sample(body, 'rds_iam_proxy_token_mints_total', { endpoint, user: '(other)' }),
    ).toBeGreaterThanOrEqual(1);
    expect(sample(body, 'rds_iam_proxy_token_mints_total', { endpoint, user: 'alice' })).toBeUndefined();
    const expiry =
      sample(body, 'rds_iam_proxy_token_expiry_timestamp_seconds', { endpoint, user: '(other)' }) ?? 0;
    expect(expiry * 1000).toBeGreaterThan(Date.now());
    expect(sample(body, 'rds_iam_proxy_build_info', { version: '0.0.0-test' })).toBe(1);
    expect(sample(body, 'rds_iam_proxy_draining')).toBe(0);
    expect(sample(body, 'process_cpu_seconds_total')).toBeGreaterThan(0);
    expect(body).toMatch(/^nodejs_heap_size_used_bytes \d/m);
    expect(body).toContain('# TYPE rds_iam_proxy_clock_skew_seconds gauge');
    expect(body).toContain('# TYPE rds_iam_proxy_limit_rejections_total counter');
  });

  test('accepted (info), logged in (user, database, phase timings) and closed (bytes, duration, reason)', () => {
    const recs = p.records();
    const accepted = recs.find((r) => r['msg'] === 'accepted');
    expect(accepted).toMatchObject({
      level: 'info',
      listener: 'app',
      connId: expect.any(Number),
      remote: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
    });
    const loggedIn = recs.find((r) => r['msg'] === 'logged in');
    expect(loggedIn).toMatchObject({
      level: 'info',
      listener: 'app',
      user: 'alice',
      database: 'appdb',
      connId: accepted?.['connId'],
    });
    expect(loggedIn?.['timings']).toMatchObject({
      downstreamMs: expect.any(Number),
      upstreamConnectMs: expect.any(Number),
      upstreamTlsMs: expect.any(Number),
      upstreamLoginMs: expect.any(Number),
    });
    const closed = recs.find((r) => r['msg'] === 'closed');
    expect(closed).toMatchObject({
      user: 'alice',
      database: 'appdb',
      connId: accepted?.['connId'],
      bytesFromClient: expect.any(Number),
      bytesToClient: expect.any(Number),
      durationMs: expect.any(Number),
      reason: 'client_closed',
    });
    expect(JSON.stringify(recs.filter((r) => r['msg'] === 'logged in'))).not.toMatch(/"user".*"user"/);
  });
});

describe('readiness failures and draining', () => {
  let p: Running;
  beforeAll(async () => {
    p = await start(
      {
        shutdown: { minDelayMs: 0, maxDelayMs: 1500 },
        listeners: [
          listener('good'),
          // The secret cannot be read: not ready.
          listener('nocreds', { auth: { mode: 'password', password: { env: 'NO_SUCH_PASSWORD_VAR' } } }),
          // The secret is there but the server refuses it (alice is an IAM user): ready, logins fail.
          listener('badpw', { auth: { mode: 'password', password: { env: 'UPSTREAM_PW' } } }),
        ],
      },
      { UPSTREAM_PW: UPSTREAM_PASSWORD },
    );
  });

  test('/readyz is 503 and names the listener whose credentials fail', async () => {
    const r = await p.admin('/readyz');
    expect(r.status).toBe(503);
    const body = JSON.parse(r.body) as {
      status: string;
      listeners: { listener: string; ready: boolean; reason?: string }[];
    };
    expect(body.status).toBe('not ready');
    expect(body.listeners).toEqual([
      { listener: 'good', ready: true },
      {
        listener: 'nocreds',
        ready: false,
        reason: expect.stringMatching(/^credentials: .*NO_SUCH_PASSWORD_VAR/),
      },
      { listener: 'badpw', ready: true },
    ]);
  });

  test('a refused upstream login is counted by SQLSTATE; the password never reaches a log', async () => {
    const err = await connectError(p.port('badpw'));
    expect(err?.code).toBe('28000');
    await until(() => p.rt.app.connections() === 0, 'the failed connection to close');
    const m = (await p.admin('/metrics')).body;
    expect(
      sample(m, 'rds_iam_proxy_upstream_login_failures_total', {
        listener: 'badpw',
        code: 'UPSTREAM_AUTH',
        server_code: '28000',
      }),
    ).toBe(1);
    expect(
      sample(m, 'rds_iam_proxy_handshake_failures_total', { listener: 'badpw', code: 'UPSTREAM_AUTH' }),
    ).toBe(1);
    expect(sample(m, 'rds_iam_proxy_connections_total', { listener: 'badpw', outcome: 'failed' })).toBe(1);
    const failed = p.records().find((r) => r['msg'] === 'handshake failed');
    expect(failed).toMatchObject({ listener: 'badpw', user: 'alice', err: { code: 'UPSTREAM_AUTH' } });
  });

  test('POST /quitquitquit drains: 503 draining, no new connections, handshakes get 57P01 at the deadline', async () => {
    const held = await connect(p.port('good'));
    let ended = false;
    held.on('end', () => (ended = true));
    const raw = await rawConnect(p.port('good')); // connected, never sends its startup: still handshaking
    raw.parse();
    await until(() => p.rt.app.connections() === 2, 'both connections to be open');
    const port = p.port('good');

    const q = await p.admin('/quitquitquit', 'POST');
    expect(q.status).toBe(202);
    await until(async () => (await p.admin('/readyz')).status === 503, 'readyz to turn 503');
    expect(JSON.parse((await p.admin('/readyz')).body)).toEqual({ status: 'draining', listeners: [] });
    expect((await p.admin('/healthz')).status).toBe(200);
    expect(sample((await p.admin('/metrics')).body, 'rds_iam_proxy_draining')).toBe(1);
    const refused = await connectError(port);
    expect(refused?.message).toMatch(/ECONNREFUSED/);
    // The held session still works while draining.
    expect((await held.query('select 7 as n')).rows).toEqual([{ n: 7 }]);

    expect(await p.rt.done).toBe(0);
    const m = (await raw.waitFor('error')) as (Error & { code?: string; severity?: string }) | undefined;
    expect(m?.code).toBe('57P01');
    expect(m?.message).toMatch(/shutting down/);
    await until(() => ended, 'the spliced session to be closed');
    const msgs = p.records().map((r) => r['msg']);
    expect(msgs).toEqual(
      expect.arrayContaining(['shutting down: still accepting for shutdown.minDelayMs', 'stopped']),
    );
    expect(p.records().find((r) => r['msg'] === 'closed' && r['listener'] === 'good')).toMatchObject({
      reason: 'shutdown',
    });
  });
});

describe('limits', () => {
  let p: Running;
  beforeAll(async () => {
    p = await start({
      limits: { maxConnections: 3 },
      localTls: { caFile: path.join(tmp, 'local-ca.pem') },
      listeners: [
        listener('capped', { maxConnections: 1 }),
        listener('other'),
        listener('idle', { idleTimeoutMs: 300, client: { tls: 'auto' } }),
      ],
    });
  });

  test('per-listener and global maxConnections: 53300 with the limit named', async () => {
    const a = await connect(p.port('capped'));
    const perListener = await connectError(p.port('capped'));
    expect(perListener?.code).toBe('53300');
    expect(perListener?.message).toMatch(/too many connections to listener "capped" \(maxConnections 1\)/);
    const b = await connect(p.port('other'));
    const c = await connect(p.port('other'));
    const global = await connectError(p.port('other'));
    expect(global?.code).toBe('53300');
    expect(global?.message).toMatch(/limits\.maxConnections 3/);
    // Sessions that were let in are unaffected.
    expect((await a.query('select 1 as x')).rows).toEqual([{ x: 1 }]);
    await Promise.all([a.end(), b.end(), c.end()]);
    await until(() => p.rt.app.connections() === 0, 'sessions to end');
    expect(await connectError(p.port('capped'))).toBeUndefined();
    const m = (await p.admin('/metrics')).body;
    expect(
      sample(m, 'rds_iam_proxy_limit_rejections_total', {
        listener: 'capped',
        limit: 'listener_max_connections',
      }),
    ).toBe(1);
    expect(
      sample(m, 'rds_iam_proxy_limit_rejections_total', { listener: 'other', limit: 'max_connections' }),
    ).toBe(1);
    expect(sample(m, 'rds_iam_proxy_connections_total', { listener: 'other', outcome: 'rejected' })).toBe(1);
    expect(
      p
        .records()
        .some(
          (r) =>
            r['msg'] === 'refused' &&
            (r['err'] as { message?: string } | undefined)?.message ===
              'too many connections to listener "capped" (maxConnections 1)',
        ),
    ).toBe(true);
  });

  test.each([
    ['plaintext', false],
    ['local TLS', true],
  ])('idle timeout closes a quiet spliced session (%s)', async (_name, tls) => {
    const before =
      sample((await p.admin('/metrics')).body, 'rds_iam_proxy_sessions_closed_total', {
        listener: 'idle',
        reason: 'idle_timeout',
      }) ?? 0;
    const c = await connect(
      p.port('idle'),
      tls
        ? { ssl: { ca: readFileSync(path.join(tmp, 'local-ca.pem'), 'utf8'), servername: 'localhost' } }
        : {},
    );
    let ended = false;
    c.on('end', () => (ended = true));
    expect((await c.query('select 1 as x')).rows).toEqual([{ x: 1 }]);
    expect(
      p
        .records()
        .filter((r) => r['msg'] === 'logged in' && r['listener'] === 'idle')
        .at(-1)?.['clientTls'],
    ).toBe(tls);
    await until(() => ended, 'the idle session to be closed');
    await expect(c.query('select 1')).rejects.toThrow();
    const closed = p
      .records()
      .filter((r) => r['msg'] === 'closed' && r['listener'] === 'idle')
      .at(-1);
    expect(closed).toMatchObject({ reason: 'idle_timeout', detail: '300 ms' });
    const m = (await p.admin('/metrics')).body;
    expect(
      sample(m, 'rds_iam_proxy_sessions_closed_total', { listener: 'idle', reason: 'idle_timeout' }),
    ).toBe(before + 1);
  });
});

describe('login rate limit', () => {
  test('beyond limits.loginQueue new logins get 53300; queued ones log in', async () => {
    const p = await start({ limits: { loginsPerSecond: 1, loginQueue: 1 }, listeners: [listener('rated')] });
    const results = await Promise.all([0, 1, 2, 3].map(() => connectError(p.port('rated'))));
    const refused = results.filter((r) => r !== undefined);
    expect(refused.length).toBeGreaterThanOrEqual(1);
    expect(results.length - refused.length).toBeGreaterThanOrEqual(1);
    for (const r of refused) {
      expect(r?.code).toBe('53300');
      expect(r?.message).toMatch(/too many connections waiting to log in \(limits\.loginQueue 1\)/);
    }
    const m = (await p.admin('/metrics')).body;
    expect(
      sample(m, 'rds_iam_proxy_limit_rejections_total', { listener: 'rated', limit: 'login_queue' }),
    ).toBe(refused.length);
    expect(sample(m, 'rds_iam_proxy_connections_total', { listener: 'rated', outcome: 'rejected' })).toBe(
      refused.length,
    );
  });
});

describe('reload (in process)', () => {
  test('a failed bind changes nothing; limits, listeners and the admin address change without dropping sessions', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const taken = (blocker.address() as net.AddressInfo).port;
    let next: Omit<ConfigInput, 'log'> = { listeners: [listener('r1')] };
    const p = await start(next, {}, () => next);
    const held = await connect(p.port('r1'));

    next = { listeners: [listener('r1'), listener('r2', { listen: `127.0.0.1:${taken}` })] };
    expect(await p.rt.reload()).toBe(false);
    expect(p.rt.app.listeners.map((l) => l.name)).toEqual(['r1']);
    expect(
      (
        p.records().find((r) => r['msg'] === 'reload failed; keeping the running configuration')?.['err'] as
          { message?: string } | undefined
      )?.message,
    ).toMatch(/listener r2 cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/);
    blocker.close();

    const oldAdmin = p.rt.adminServer?.port();
    next = {
      admin: { listen: 'localhost:0' },
      limits: { maxConnections: 2 },
      listeners: [listener('r1'), listener('r2')],
    };
    expect(await p.rt.reload()).toBe(true);
    expect(p.rt.adminServer?.port()).not.toBe(oldAdmin);
    expect((await p.admin('/readyz')).status).toBe(200);
    const onR2 = await connect(p.port('r2'));
    // held + onR2 = 2 = the new limits.maxConnections
    expect((await connectError(p.port('r1')))?.code).toBe('53300');
    expect((await held.query('select 1 as x')).rows).toEqual([{ x: 1 }]);
    await Promise.all([held.end(), onR2.end()]);
    const m = (await p.admin('/metrics')).body;
    expect(sample(m, 'rds_iam_proxy_config_reloads_total', { result: 'success' })).toBeGreaterThanOrEqual(1);
    expect(sample(m, 'rds_iam_proxy_config_reloads_total', { result: 'failure' })).toBeGreaterThanOrEqual(1);
  });
});
