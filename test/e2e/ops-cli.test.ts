/**
 * The built CLI's lifecycle as operators drive it with signals: SIGTERM drains (a transaction in
 * flight commits, then exit 0), the drain deadline (handshaking clients get 57P01, exit 143 with
 * shutdown.exitCode143), a second signal exits at once, and SIGHUP reloads the config (adds,
 * changes and removes listeners) without dropping sessions, keeping the old config when the new
 * one is invalid.
 */
import http from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { psql, type ProcResult } from '../harness/clients';
import { requireBuilt, startCli, type CliProc } from '../harness/cliproc';
import { rawConnect } from '../harness/pgraw';
import { LONG_SESSION_TOKEN } from '../harness/proxy';
import { TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../harness/sign';

const AWS_ENV = {
  AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY,
  AWS_SESSION_TOKEN: LONG_SESSION_TOKEN,
  AWS_REGION: 'us-east-1',
  AWS_EC2_METADATA_DISABLED: 'true',
};

let dir: string;
let db: RdsLikePg;
const procs: CliProc[] = [];

beforeAll(async () => {
  requireBuilt();
  dir = mkdtempSync(path.join(os.tmpdir(), 'rip-ops-cli-'));
  db = await startRdsLikePostgres();
  await db.psqlAdmin('create table drain_t (id int); grant all on drain_t to alice;', 'appdb');
});

afterAll(async () => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
  await db?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

afterEach(() => {
  for (const p of procs) {
    const out = p.stdout() + p.stderr();
    expect(out).not.toContain('X-Amz-Signature');
    expect(out).not.toContain(LONG_SESSION_TOKEN.slice(0, 40));
    expect(out).not.toContain(TEST_SECRET_ACCESS_KEY);
  }
});

interface ListenerSpec {
  name: string;
  extra?: string[];
}

function writeConfig(
  file: string,
  o: { listeners: ListenerSpec[]; shutdown?: string; admin?: boolean },
): void {
  const lines = ['log: { level: trace, format: json }', `localTls: { caFile: ${path.join(dir, 'ca.pem')} }`];
  if (o.admin) lines.push('admin: { listen: 127.0.0.1:0 }');
  if (o.shutdown) lines.push(`shutdown: ${o.shutdown}`);
  lines.push('listeners:');
  for (const l of o.listeners) {
    lines.push(
      `  - name: ${l.name}`,
      '    engine: postgres',
      '    listen: 127.0.0.1:0',
      '    client: { tls: off }',
      `    upstream: { host: ${db.host}, port: ${db.port}, address: ${db.address}, tls: { ca: ${db.caFile} } }`,
      ...(l.extra ?? []).map((x) => `    ${x}`),
    );
  }
  writeFileSync(file, lines.join('\n') + '\n');
}

interface Started {
  proc: CliProc;
  ports: Record<string, number>;
  adminPort: number;
}

async function startProxyCli(
  name: string,
  o: Parameters<typeof writeConfig>[1],
): Promise<Started & { file: string }> {
  const file = path.join(dir, `${name}.yaml`);
  writeConfig(file, o);
  const proc = startCli(['run', '--config', file], AWS_ENV);
  procs.push(proc);
  const ready = JSON.parse(await proc.waitForLine(/rds-iam-proxy ready/)) as {
    listeners: { name: string; address: string }[];
    admin?: string;
  };
  return { proc, file, ...addresses(ready) };
}

function addresses(rec: { listeners: { name: string; address: string }[]; admin?: string }): {
  ports: Record<string, number>;
  adminPort: number;
} {
  const ports = Object.fromEntries(rec.listeners.map((l) => [l.name, Number(l.address.split(':').pop())]));
  return { ports, adminPort: Number(rec.admin?.split(':').pop() ?? 0) };
}

/** Parsed stdout lines whose msg matches. */
function records(proc: CliProc, msg: string | RegExp): Record<string, unknown>[] {
  return proc
    .stdout()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((r) => (typeof msg === 'string' ? r['msg'] === msg : msg.test(String(r['msg']))));
}

async function until(
  check: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function get(port: number, p: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
  });
}

const conninfo = (port: number): string =>
  `host=127.0.0.1 port=${port} user=alice dbname=appdb sslmode=disable connect_timeout=5`;

/** Resolves once the server runs a query containing `needle` (the client is past login). */
async function serverRuns(needle: string): Promise<void> {
  await until(
    async () =>
      Number(
        await db.psqlAdmin(
          `select count(*) from pg_stat_activity where query like '%${needle}%' and pid <> pg_backend_pid()`,
        ),
      ) > 0,
    `the server to run ${needle}`,
  );
}

async function pgClient(port: number): Promise<Client> {
  const c = new Client({ host: '127.0.0.1', port, user: 'alice', database: 'appdb' });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

describe('SIGTERM', () => {
  test('drains: a transaction in flight commits, new connections are refused, /readyz is 503, exit 0', async () => {
    const { proc, ports, adminPort } = await startProxyCli('drain', {
      admin: true,
      shutdown: '{ minDelayMs: 300, maxDelayMs: 20000 }',
      listeners: [{ name: 'app' }],
    });
    const port = ports['app'] as number;
    expect(await get(adminPort, '/readyz')).toBe(200);
    const tx = psql(conninfo(port), ['-q'], {
      input: 'begin;\nselect pg_sleep(2) as drain_marker;\ninsert into drain_t values (1);\ncommit;\n',
    });
    await serverRuns('drain_marker');
    proc.child.kill('SIGTERM');
    // Still accepting during minDelayMs is allowed; after it, not ready and refusing.
    await until(async () => (await get(adminPort, '/readyz')) === 503, '/readyz to turn 503');
    expect(await get(adminPort, '/healthz')).toBe(200);
    const late = await psql(conninfo(port), ['-c', 'select 1']);
    expect(late.code).not.toBe(0);
    expect(late.stderr).toMatch(/refused/i);
    const r: ProcResult = await tx;
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await proc.exited).toBe(0);
    expect(await db.psqlAdmin('select count(*) from drain_t', 'appdb')).toBe('1');
    expect(records(proc, 'closed').at(-1)).toMatchObject({ reason: 'client_closed' });
    for (const m of [
      'shutting down: still accepting for shutdown.minDelayMs',
      'draining: stopped accepting; waiting for sessions to end',
      'stopped',
    ]) {
      expect(records(proc, m)).toHaveLength(1);
    }
  });

  test('at shutdown.maxDelayMs handshaking clients get 57P01 and sessions are closed; exitCode143 exits 143', async () => {
    const { proc, ports } = await startProxyCli('deadline', {
      shutdown: '{ minDelayMs: 0, maxDelayMs: 1000, exitCode143: true }',
      listeners: [{ name: 'app' }],
    });
    const port = ports['app'] as number;
    const long = psql(conninfo(port), ['-c', 'select pg_sleep(30) as deadline_marker']);
    await serverRuns('deadline_marker');
    const raw = await rawConnect(port); // never sends a startup packet: still handshaking
    raw.parse();
    await until(() => records(proc, 'accepted').length === 2, 'both connections to be accepted');
    proc.child.kill('SIGTERM');
    const err = (await raw.waitFor('error', 15_000)) as (Error & { code?: string }) | undefined;
    expect(err?.code).toBe('57P01');
    expect(err?.message).toMatch(/rds-iam-proxy: the proxy is shutting down/);
    const r = await long;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/server closed the connection unexpectedly|connection to server was lost/);
    expect(await proc.exited).toBe(143);
    expect(records(proc, /drain deadline/)).toHaveLength(1);
    expect(records(proc, 'closed').at(-1)).toMatchObject({ reason: 'shutdown' });
  });

  test('a second signal exits at once', async () => {
    const { proc, ports } = await startProxyCli('twice', {
      shutdown: '{ minDelayMs: 0, maxDelayMs: 60000 }',
      listeners: [{ name: 'app' }],
    });
    const long = psql(conninfo(ports['app'] as number), ['-c', 'select pg_sleep(30) as twice_marker']);
    await serverRuns('twice_marker');
    proc.child.kill('SIGTERM');
    await proc.waitForLine(/draining: stopped accepting/);
    proc.child.kill('SIGINT');
    expect(await proc.exited).toBe(0);
    const r = await long; // cut, not finished after 30 s
    expect(r.code).not.toBe(0);
    expect(records(proc, 'second stop request: exiting now')).toHaveLength(1);
  });
});

describe('SIGHUP', () => {
  test('reload adds, changes and removes listeners without dropping sessions; an invalid config is refused', async () => {
    const { proc, file, ports } = await startProxyCli('reload', { listeners: [{ name: 'a' }] });
    const portA = ports['a'] as number;
    const held = await pgClient(portA);
    expect((await held.query('select 1 as x')).rows).toEqual([{ x: 1 }]);

    // Add b; change a (same address: the bound socket is handed over).
    writeConfig(file, { listeners: [{ name: 'a', extra: ['handshakeTimeoutMs: 20000'] }, { name: 'b' }] });
    proc.child.kill('SIGHUP');
    await until(() => records(proc, 'config reloaded').length === 1, 'the first reload');
    const first = records(proc, 'config reloaded')[0] as Record<string, unknown> & {
      listeners: { name: string; address: string }[];
    };
    expect(first).toMatchObject({ added: ['b'], changed: ['a'], removed: [], unchanged: [] });
    const after = addresses(first).ports;
    expect(after['a']).toBe(portA);
    const portB = after['b'] as number;
    expect((await held.query('select 2 as x')).rows).toEqual([{ x: 2 }]); // the old session is still up
    const onB = await pgClient(portB);
    expect((await onB.query('select current_user as u')).rows).toEqual([{ u: 'alice' }]);
    const fresh = await psql(conninfo(portA), ['-c', 'select 3']);
    expect(fresh.stdout.trim()).toBe('3');

    // An invalid config is logged and the running one kept.
    writeFileSync(file, 'listeners:\n  - name: a\n    engine: oracle\n    listen: 127.0.0.1:0\n');
    proc.child.kill('SIGHUP');
    await until(() => records(proc, /^reload failed/).length === 1, 'the refused reload');
    expect(JSON.stringify(records(proc, /^reload failed/)[0])).toMatch(/listeners\.0\.engine/);
    expect((await held.query('select 4 as x')).rows).toEqual([{ x: 4 }]);
    expect((await psql(conninfo(portB), ['-c', 'select 5'])).stdout.trim()).toBe('5');

    // Remove b: it stops accepting, its session keeps running.
    writeConfig(file, { listeners: [{ name: 'a', extra: ['handshakeTimeoutMs: 20000'] }] });
    proc.child.kill('SIGHUP');
    await until(() => records(proc, 'config reloaded').length === 2, 'the second reload');
    expect(records(proc, 'config reloaded')[1]).toMatchObject({
      added: [],
      changed: [],
      removed: ['b'],
      unchanged: ['a'],
    });
    expect((await onB.query('select 6 as x')).rows).toEqual([{ x: 6 }]);
    const gone = await psql(conninfo(portB), ['-c', 'select 1']);
    expect(gone.stderr).toMatch(/refused/i);
    expect((await held.query('select 7 as x')).rows).toEqual([{ x: 7 }]);

    await Promise.all([held.end(), onB.end()]);
    proc.child.kill('SIGTERM');
    expect(await proc.exited).toBe(0);
  });
});
