/**
 * The one-line start through the built CLI: database URLs (Postgres and MySQL, TCP and unix
 * sockets) logging in to the RDS-like servers, `check` on the same arguments, `wait`, `shutdown`,
 * `--run-connection-test`, `--quiet`, `-v` and the message when nothing names a database.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { startRdsLikeMariaDb, type RdsLikeMariaDb } from '../harness/mariadb';
import { psql, runProgram } from '../harness/clients';
import { CLI, requireBuilt, startCli, type CliProc } from '../harness/cliproc';
import { LONG_SESSION_TOKEN } from '../harness/proxy';
import { TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../harness/sign';
import { freePort } from '../harness/util';
import { version } from '../../package.json';

/** The SDK's default chain reads these, as on a host with temporary credentials. */
const CREDS = {
  AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY,
  AWS_SESSION_TOKEN: LONG_SESSION_TOKEN,
};

let dir: string;
let pg: RdsLikePg;
let maria: RdsLikeMariaDb;
const procs: CliProc[] = [];

beforeAll(async () => {
  requireBuilt();
  dir = mkdtempSync(path.join(os.tmpdir(), 'rip-cli-url-'));
  [pg, maria] = await Promise.all([startRdsLikePostgres(), startRdsLikeMariaDb()]);
});

afterAll(async () => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
  await Promise.all([pg?.stop(), maria?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

/** The servers' endpoint names do not resolve: `?dial=` sends the connection to the loopback server. */
const pgUrl = (user = 'alice'): string =>
  `postgres://${user}@${pg.host}:${pg.port}/appdb?dial=127.0.0.1&ca=${encodeURIComponent(pg.caFile)}`;
const myUrl = (extra = ''): string =>
  `mysql://alice@${maria.host}:${maria.port}?dial=127.0.0.1&ca=${encodeURIComponent(maria.caFile)}${extra}`;

const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  runProgram(process.execPath, [CLI, ...args], { env, timeoutMs: 60_000 });

function start(args: string[], env: NodeJS.ProcessEnv = CREDS): CliProc {
  const p = startCli(['run', ...args], env);
  procs.push(p);
  return p;
}

function mariadb(args: string[]) {
  return runProgram(
    'mariadb',
    [
      '--no-defaults',
      '-u',
      'someone-else',
      '--batch',
      '--skip-column-names',
      ...args,
      '-e',
      'select current_user()',
    ],
    { timeoutMs: 60_000 },
  );
}

const lines = (p: CliProc): Record<string, unknown>[] =>
  p
    .stdout()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

test('-v and --version print the version', async () => {
  for (const flag of ['-v', '--version']) {
    const r = await cli([flag]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(version);
  }
});

test('with no listeners, run and check say how to give one', async () => {
  for (const cmd of ['run', 'check']) {
    const r = await cli([cmd]);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/give a database URL \(rds-iam-proxy run postgres:\/\//);
    expect(r.stderr).toMatch(/--config FILE or RDS_IAM_PROXY_CONFIG/);
    expect(r.stderr).not.toMatch(/expected array/);
  }
});

test('check accepts the same arguments as run', async () => {
  const r = await cli(['check', pgUrl(), myUrl(), '--port', '15432', '--client-tls', 'off']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(r.stdout).toContain(`testdb (postgres) 127.0.0.1:15432 -> ${pg.host}`);
  expect(r.stdout).toContain(`testdb-mariadb (mysql) 127.0.0.1:15433 -> ${maria.host}`);
  const bad = await cli(['check', 'postgres://alice:pw@db.x/app', '--port', '15432']);
  expect(bad.code).toBe(78);
  expect(bad.stderr).toMatch(/URL 1: .*carries a password/);
  expect(bad.stderr).not.toContain(':pw@');
});

describe('TCP: a Postgres and a MySQL URL, admin server, wait and shutdown', () => {
  let p: CliProc;
  let pgPort: number;
  let myPort: number;
  let admin: string;

  beforeAll(async () => {
    [pgPort, myPort] = [await freePort(), await freePort()];
    admin = `127.0.0.1:${await freePort()}`;
    p = start([
      pgUrl(),
      myUrl(`&port=${myPort}`),
      '--port',
      String(pgPort),
      '--admin',
      admin,
      '--client-tls',
      'off',
    ]);
  });

  test('wait exits 0 once the proxy is ready', async () => {
    const r = await cli(['wait', '--admin', admin, '--timeout', '30s']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('ready');
    const ready = lines(p).find((l) => l['msg'] === 'rds-iam-proxy ready');
    expect(ready).toMatchObject({
      level: 'info',
      service: 'rds-iam-proxy',
      version,
      hostname: os.hostname(),
    });
  });

  test('psql logs in through the Postgres URL listener as the URL user, to the URL database', async () => {
    // The client names another user and database; the URL fixes both upstream.
    const r = await psql(`host=127.0.0.1 port=${pgPort} user=someone-else dbname=otherdb sslmode=disable`, [
      '-c',
      'select current_user, current_database()',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('alice|appdb');
  });

  test('the mariadb CLI logs in through the MySQL URL listener', async () => {
    const r = await mariadb(['--protocol=TCP', '-h', '127.0.0.1', '-P', String(myPort)]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toMatch(/^alice@/);
  });

  test('shutdown drains the proxy, which exits 0', async () => {
    const r = await cli(['shutdown', '--admin', admin]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('draining');
    expect(await p.exited).toBe(0);
    expect(lines(p).map((l) => l['msg'])).toContain('stopped');
  });

  test('wait and shutdown fail with the reason when nothing answers', async () => {
    const w = await cli(['wait', '--admin', admin, '--timeout', '300ms']);
    expect(w.code).toBe(1);
    expect(w.stderr).toMatch(
      /not ready after 0\.3s: cannot reach the admin server at 127\.0\.0\.1:\d+ \(ECONNREFUSED\)/,
    );
    const s = await cli(['shutdown'], { RDS_IAM_PROXY_ADMIN: admin });
    expect(s.code).toBe(1);
    expect(s.stderr).toMatch(/cannot reach the admin server/);
  });
});

test('wait exits non-zero at the timeout with the last /readyz answer (no credentials)', async () => {
  const admin = `127.0.0.1:${await freePort()}`;
  const p = start([pgUrl(), '--port', String(await freePort()), '--admin', admin, '--client-tls', 'off'], {});
  await p.waitForLine(/admin server listening/);
  const r = await cli(['wait', '--timeout', '1s'], { RDS_IAM_PROXY_ADMIN: admin });
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/not ready after 1s: \/readyz 503: .*"status":"not ready"/);
  expect(r.stderr).toMatch(/"listener":"testdb"/);
  p.child.kill('SIGTERM');
  expect(await p.exited).toBe(0);
});

test('unix sockets: psql with host=DIR, the mariadb CLI with --socket; --quiet logs no info lines', async () => {
  const sockets = mkdtempSync(path.join(dir, 'sock-'));
  const admin = `127.0.0.1:${await freePort()}`;
  const p = start([
    pgUrl(),
    myUrl(),
    '--unix-socket',
    sockets,
    '--admin',
    admin,
    '--client-tls',
    'off',
    '--quiet',
  ]);
  const w = await cli(['wait', '--admin', admin]);
  expect(w.code).toBe(0);
  const r = await psql(`host=${sockets} port=5432 dbname=appdb`, ['-c', 'select current_user']);
  expect(r.stderr).toBe('');
  expect(r.stdout.trim()).toBe('alice');
  const m = await mariadb([`--socket=${path.join(sockets, 'testdb-mariadb.sock')}`]);
  expect(m.stderr).toBe('');
  expect(m.stdout.trim()).toMatch(/^alice@/);
  p.child.kill('SIGTERM');
  expect(await p.exited).toBe(0);
  // Logins and the start-up happened; at warn nothing of it is logged.
  expect(lines(p).filter((l) => ['trace', 'debug', 'info'].includes(String(l['level'])))).toEqual([]);
});

describe('--run-connection-test', () => {
  test('logs in once before opening, then serves', async () => {
    const port = await freePort();
    const p = start([pgUrl(), '--port', String(port), '--client-tls', 'off', '--run-connection-test']);
    await p.waitForLine(/rds-iam-proxy ready/);
    const msgs = lines(p).map((l) => l['msg']);
    expect(msgs.indexOf('connection test passed')).toBeGreaterThanOrEqual(0);
    expect(msgs.indexOf('connection test passed')).toBeLessThan(msgs.indexOf('rds-iam-proxy ready'));
    const r = await psql(`host=127.0.0.1 port=${port} dbname=appdb sslmode=disable`, ['-c', 'select 1']);
    expect(r.stdout.trim()).toBe('1');
    p.child.kill('SIGTERM');
    expect(await p.exited).toBe(0);
  });

  test("a failing login exits 1 with doctor's diagnosis, and nothing listens", async () => {
    const port = await freePort();
    const p = start([
      pgUrl('mallory'),
      '--port',
      String(port),
      '--client-tls',
      'off',
      '--run-connection-test',
    ]);
    expect(await p.exited).toBe(1);
    expect(p.stderr()).toMatch(/login/);
    expect(p.stderr()).toMatch(/mallory/);
    expect(p.stdout()).not.toMatch(/rds-iam-proxy ready/);
    expect(lines(p).find((l) => l['msg'] === 'connection test failed; not starting')).toMatchObject({
      level: 'error',
      failed: [{ listener: 'testdb', step: 'login' }],
    });
  });
});
