/**
 * The Postgres path end to end: real clients (psql, pgbench, node-postgres) through the proxy to
 * RDS-like PostgreSQL servers that accept only valid IAM tokens over TLS.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { LONG_SESSION_TOKEN, startTestProxy, type TestProxy } from '../harness/proxy';
import { psql, runProgram } from '../harness/clients';
import { TEST_SECRET_ACCESS_KEY } from '../harness/sign';

let db: RdsLikePg;
let db2: RdsLikePg;
let proxy: TestProxy;
let sockDir: string;
const UNIX_PORT = 6543;

const url = (port: number, extra = ''): string =>
  `host=127.0.0.1 port=${port} user=alice dbname=appdb sslmode=disable ${extra}`;

beforeAll(async () => {
  [db, db2] = await Promise.all([
    startRdsLikePostgres(),
    startRdsLikePostgres({
      endpoint: 'second.cluster-xyz987.eu-west-1.rds.amazonaws.com',
      region: 'eu-west-1',
      users: ['bob'],
    }),
  ]);
  sockDir = mkdtempSync(path.join(os.tmpdir(), 'rip-sock-'));
  const upstream = (d: RdsLikePg) => ({
    host: d.host,
    port: d.port,
    address: d.address,
    tls: { ca: d.caFile },
  });
  proxy = await startTestProxy({
    localTls: { caFile: path.join(sockDir, 'local-ca.pem') },
    listeners: [
      {
        name: 'app',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream: upstream(db),
        client: { tls: 'auto', auth: 'trust' },
      },
      // region read from the endpoint name (eu-west-1)
      { name: 'second', engine: 'postgres', listen: '127.0.0.1:0', upstream: upstream(db2) },
      {
        name: 'unix',
        engine: 'postgres',
        listen: path.join(sockDir, `.s.PGSQL.${UNIX_PORT}`),
        upstream: upstream(db),
        client: { tls: 'off' },
      },
      {
        name: 'fixed',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream: { ...upstream(db), user: 'alice', database: 'otherdb' },
      },
    ],
  });
});

afterAll(async () => {
  await proxy?.close();
  await Promise.all([db?.stop(), db2?.stop()]);
  if (sockDir) rmSync(sockDir, { recursive: true, force: true });
});

afterEach(() => {
  // Nothing secret may reach the logs, at any level (the proxy runs at trace).
  const all = proxy.logs.join('\n');
  expect(all).not.toContain('X-Amz-Signature');
  expect(all).not.toContain(LONG_SESSION_TOKEN.slice(0, 40));
  expect(all).not.toContain(TEST_SECRET_ACCESS_KEY);
});

describe('psql', () => {
  test('logs in as the IAM user with a token over 1 KB, through verified TLS', async () => {
    const r = await psql(url(proxy.port('app')), [
      '-c',
      'select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('alice|t');
    const last = db.verifier.entries.at(-1);
    expect(last).toMatchObject({ user: 'alice', ok: true });
    expect(last?.tokenLength).toBeGreaterThan(1024);
  });

  test('COPY in and out', async () => {
    const r = await psql(url(proxy.port('app')), ['-q'], {
      input: [
        'create table copy_t (id int, name text);',
        '\\copy copy_t from stdin with (format csv)',
        '1,one',
        '2,two',
        '3,"three, with a comma"',
        '\\.',
        'select count(*) from copy_t;',
        '\\copy (select * from copy_t order by id) to stdout with (format csv)',
      ].join('\n'),
    });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toEqual(['3', '1,one', '2,two', '3,"three, with a comma"']);
  });

  test('local TLS with verify-full against the generated CA', async () => {
    const r = await psql(
      `host=localhost port=${proxy.port('app')} user=alice dbname=appdb sslmode=verify-full sslrootcert=${proxy.app.localTls.caPath}`,
      ['-c', 'select 42'],
    );
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('42');
    const rec = proxy
      .records()
      .filter((x) => x['msg'] === 'logged in')
      .at(-1);
    expect(rec?.['clientTls']).toBe(true);
  });

  test('a unix socket listener (.s.PGSQL.<port> in a directory)', async () => {
    const r = await psql(`host=${sockDir} port=${UNIX_PORT} user=alice dbname=appdb`, [
      '-c',
      'select current_database()',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('appdb');
  });

  test('cancel (SIGINT) stops a running pg_sleep', async () => {
    const t0 = Date.now();
    const r = await psql(url(proxy.port('app')), ['-c', 'select pg_sleep(30)'], {
      onSpawn: (kill) => setTimeout(() => kill('SIGINT'), 1500),
    });
    expect(r.stderr).toMatch(/canceling statement due to user request/);
    expect(Date.now() - t0).toBeLessThan(20_000);
  });

  test('two listeners reach two databases at once, each with its own token', async () => {
    const [a, b] = await Promise.all([
      psql(url(proxy.port('app')), ['-c', 'select current_user, inet_server_port()']),
      psql(`host=127.0.0.1 port=${proxy.port('second')} user=bob dbname=appdb sslmode=disable`, [
        '-c',
        'select current_user, inet_server_port()',
      ]),
    ]);
    expect(a.stdout.trim()).toBe(`alice|${db.port}`);
    expect(b.stdout.trim()).toBe(`bob|${db2.port}`);
    expect(db2.verifier.entries.at(-1)).toMatchObject({ user: 'bob', ok: true });
  });

  test('upstream.user and upstream.database override what the client asks for', async () => {
    const r = await psql(
      `host=127.0.0.1 port=${proxy.port('fixed')} user=someone dbname=whatever sslmode=disable`,
      ['-c', 'select current_user, current_database()'],
    );
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('alice|otherdb');
  });
});

describe('pgbench', () => {
  test('initializes and runs select-only and TPC-B-like transactions with no failures', async () => {
    const env = {
      PGHOST: '127.0.0.1',
      PGPORT: String(proxy.port('app')),
      PGUSER: 'alice',
      PGDATABASE: 'appdb',
      PGSSLMODE: 'disable',
    };
    const init = await runProgram('pgbench', ['-i', '-s', '1', '-q'], { env });
    expect(init.code).toBe(0);
    const run = await runProgram('pgbench', ['-c', '4', '-j', '2', '-t', '100', '-n'], { env });
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/number of transactions actually processed: 400\/400/);
    const sel = await runProgram('pgbench', ['-S', '-C', '-c', '2', '-t', '20', '-n'], { env });
    expect(sel.code).toBe(0);
    expect(sel.stdout).toMatch(/number of failed transactions: 0/);
  });
});

describe('node-postgres', () => {
  const connect = async (
    extra: Partial<ConstructorParameters<typeof Client>[0] & object> = {},
  ): Promise<Client> => {
    const c = new Client({
      host: '127.0.0.1',
      port: proxy.port('app'),
      user: 'alice',
      database: 'appdb',
      ...extra,
    });
    await c.connect();
    return c;
  };

  test('simple and extended query protocol', async () => {
    const c = await connect();
    try {
      const simple = await c.query('select 1 as one; select 2 as two');
      expect(Array.isArray(simple)).toBe(true);
      const ext = await c.query({
        text: 'select $1::int + $2::int as sum, $3::text as t',
        values: [40, 2, 'héllo'],
      });
      expect(ext.rows).toEqual([{ sum: 42, t: 'héllo' }]);
      const named = { name: 'stmt1', text: 'select $1::text || $1::text as d', values: ['ab'] };
      expect((await c.query(named)).rows[0].d).toBe('abab');
      expect((await c.query({ ...named, values: ['cd'] })).rows[0].d).toBe('cdcd');
    } finally {
      await c.end();
    }
  });

  test('application_name is visible in pg_stat_activity', async () => {
    const c = await connect({ application_name: 'billing-worker' });
    try {
      const r = await c.query('select application_name from pg_stat_activity where pid = pg_backend_pid()');
      expect(r.rows[0].application_name).toBe('billing-worker');
    } finally {
      await c.end();
    }
  });

  test('startup parameters (options, search_path) are forwarded verbatim', async () => {
    const c = await connect({ options: '-c search_path=pg_catalog,public -c statement_timeout=12345' });
    try {
      expect((await c.query('show search_path')).rows[0].search_path).toBe('pg_catalog,public');
      expect((await c.query('show statement_timeout')).rows[0].statement_timeout).toBe('12345ms');
    } finally {
      await c.end();
    }
  });

  test('LISTEN/NOTIFY across two sessions', async () => {
    const listener = await connect();
    const notifier = await connect();
    try {
      const got = new Promise<{ channel: string; payload?: string }>((resolve) =>
        listener.on('notification', resolve),
      );
      await listener.query('listen jobs');
      await notifier.query("select pg_notify('jobs', 'payload-1')");
      await expect(got).resolves.toMatchObject({ channel: 'jobs', payload: 'payload-1' });
    } finally {
      await Promise.all([listener.end(), notifier.end()]);
    }
  });

  test('a client library cancel stops a running pg_sleep', async () => {
    const c = await connect();
    try {
      const q = c.query('select pg_sleep(30)');
      await new Promise((r) => setTimeout(r, 500));
      const canceller = new Client({
        host: '127.0.0.1',
        port: proxy.port('app'),
        user: 'alice',
        database: 'appdb',
      });
      // node-postgres sends CancelRequest on a new connection with the session's pid and key.
      (canceller as unknown as { cancel(c: Client, q: unknown): void }).cancel(
        c,
        (c as unknown as { activeQuery: unknown }).activeQuery,
      );
      await expect(q).rejects.toMatchObject({ code: '57014' });
      expect(proxy.records().some((r) => r['msg'] === 'cancel request forwarded')).toBe(true);
    } finally {
      await c.end();
    }
  });

  test('TLS to the proxy with the generated CA (verify-full)', async () => {
    const c = await connect({
      host: 'localhost',
      ssl: { ca: readFileSync(proxy.app.localTls.caPath, 'utf8') },
    });
    try {
      expect((await c.query('select current_user as u')).rows[0].u).toBe('alice');
    } finally {
      await c.end();
    }
  });
});
