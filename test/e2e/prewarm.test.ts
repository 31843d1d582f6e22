/**
 * Pre-warmed upstream logins (listeners[].prewarm) end to end: real clients (node-postgres,
 * psql) through the proxy to an RDS-like PostgreSQL whose token verifier counts every login.
 */
import net from 'node:net';
import mysql from 'mysql2/promise';
import { Client, Pool } from 'pg';
import { registry } from '../../src/admin/metrics';
import { psql } from '../harness/clients';
import { startRdsLikeMariaDb, type RdsLikeMariaDb } from '../harness/mariadb';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { LONG_SESSION_TOKEN, startTestProxy, type TestProxy } from '../harness/proxy';
import { waitFor } from '../harness/util';
import type { ConfigInput } from '../../src/config/schema';

let db: RdsLikePg;
let proxy: TestProxy;

const upstream = (d: RdsLikePg) => ({
  host: d.host,
  port: d.port,
  address: d.address,
  tls: { ca: d.caFile },
});

beforeAll(async () => {
  db = await startRdsLikePostgres({ users: ['alice', 'bob', 'carol'] });
  proxy = await startTestProxy({
    listeners: [
      {
        name: 'warm',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream: upstream(db),
        client: { tls: 'off' },
        prewarm: { size: 2, keys: [{ user: 'alice', database: 'appdb' }] },
      },
      {
        name: 'aged',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream: upstream(db),
        client: { tls: 'off' },
        prewarm: { size: 1, keys: [{ user: 'carol', database: 'appdb' }], maxAgeSeconds: 2 },
      },
      {
        name: 'cold',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream: upstream(db),
        client: { tls: 'off' },
      },
    ],
  });
});

afterAll(async () => {
  await proxy?.close();
  await db?.stop();
});

afterEach(() => {
  db.verifier.delayMs = 0;
  const all = proxy.logs.join('\n');
  expect(all).not.toContain('X-Amz-Signature');
  expect(all).not.toContain(LONG_SESSION_TOKEN.slice(0, 40));
});

/** Current value of a metric series, 0 when absent. */
async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const m = registry.getSingleMetric(name);
  if (!m) return 0;
  const { values } = await m.get();
  const hit = values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x));
  return hit?.value ?? 0;
}

const ready = (listener: string, key: string): Promise<number> =>
  metric('rds_iam_proxy_prewarm_ready', { listener, key });

async function untilReady(listener: string, key: string, n: number): Promise<void> {
  await waitFor(async () => (await ready(listener, key)) >= n, 20_000, `${n} warm sessions on ${listener}`);
}

/** The "logged in" records written since `from` (an index into proxy.logs). */
function loggedInSince(from: number): Record<string, unknown>[] {
  return proxy
    .records()
    .slice(from)
    .filter((r) => r['msg'] === 'logged in');
}

function client(listener: string, o: Record<string, unknown> = {}): Client {
  return new Client({
    host: '127.0.0.1',
    port: proxy.port(listener),
    user: 'alice',
    database: 'appdb',
    ...o,
  });
}

test('a warm session gets the client application_name and -c options, and reports them as ParameterStatus', async () => {
  await untilReady('warm', 'alice/appdb', 2);
  const from = proxy.logs.length;
  const handouts = await metric('rds_iam_proxy_prewarm_handouts_total', {
    listener: 'warm',
    key: 'alice/appdb',
  });
  const c = client('warm', {
    application_name: 'warm-app',
    options: '-c statement_timeout=4321 -c DateStyle=SQL,DMY --search-path=public',
  });
  const status: Record<string, string> = {};
  c.connection.on('parameterStatus', (m: { parameterName: string; parameterValue: string }) => {
    status[m.parameterName] = m.parameterValue;
  });
  await c.connect();
  try {
    const r = await c.query<{ application_name: string; st: string; sp: string }>(
      `select application_name, current_setting('statement_timeout') st, current_setting('search_path') sp
         from pg_stat_activity where pid = pg_backend_pid()`,
    );
    expect(r.rows[0]).toEqual({ application_name: 'warm-app', st: '4321ms', sp: 'public' });
    expect(status).toMatchObject({
      application_name: 'warm-app',
      DateStyle: 'SQL, DMY',
      client_encoding: 'UTF8',
    });
  } finally {
    await c.end();
  }
  expect(loggedInSince(from)).toEqual([expect.objectContaining({ prewarmed: true, listener: 'warm' })]);
  expect(await metric('rds_iam_proxy_prewarm_handouts_total', { listener: 'warm', key: 'alice/appdb' })).toBe(
    handouts + 1,
  );
});

test('psql through a warm session: its settings, and each session goes to one client only', async () => {
  const conn = `host=127.0.0.1 port=${proxy.port('warm')} user=alice dbname=appdb application_name=p`;
  // The previous test taught the key its -c options; psql's login drops them from the profile,
  // which replaces the ready sessions that carry them (a psql client could not use those).
  const discards = { listener: 'warm', key: 'alice/appdb', reason: 'stale' };
  const staleBefore = await metric('rds_iam_proxy_prewarm_discards_total', discards);
  expect((await psql(conn, ['-c', 'select 1'])).stderr).toBe('');
  expect(await metric('rds_iam_proxy_prewarm_discards_total', discards)).toBeGreaterThan(staleBefore);
  await untilReady('warm', 'alice/appdb', 2);
  const from = proxy.logs.length;
  const runs = await Promise.all(
    [1, 2, 3].map(() =>
      psql(conn, [
        '-c',
        'select pg_backend_pid(), application_name from pg_stat_activity where pid = pg_backend_pid()',
      ]),
    ),
  );
  for (const r of runs) expect(r.stderr).toBe('');
  const pids = runs.map((r) => r.stdout.trim().split('|')[0]);
  expect(runs.map((r) => r.stdout.trim().split('|')[1])).toEqual(['p', 'p', 'p']);
  expect(new Set(pids).size).toBe(3);
  const logged = loggedInSince(from);
  expect(logged).toHaveLength(3);
  // Two sessions were ready; a third client got a refill or a fresh login.
  expect(logged.filter((r) => r['prewarmed'] === true).length).toBeGreaterThanOrEqual(2);
});

test('cancel through a warm session reaches its backend (pg_sleep cancelled)', async () => {
  // Earlier tests' clients (psql, other settings) shaped the key's learned startup, so this
  // client may miss the ready session; its fresh login teaches the key its shape, which replaces
  // the ready sessions it could not use: the second connect is served warm.
  let c: Client | undefined;
  let from = 0;
  for (let attempt = 0; attempt < 2 && !c; attempt++) {
    await untilReady('warm', 'alice/appdb', 1);
    from = proxy.logs.length;
    const candidate = client('warm');
    await candidate.connect();
    if (loggedInSince(from)[0]?.['prewarmed'] === true) c = candidate;
    else await candidate.end();
  }
  if (!c) {
    const m = await registry.getSingleMetric('rds_iam_proxy_prewarm_misses_total')?.get();
    throw new Error(
      `no client was served a warm session in 2 attempts; misses: ${JSON.stringify(m?.values)}; ${proxy.logs
        .slice(from)
        .filter((l) => /warm|miss/.test(l))
        .join(' | ')}`,
    );
  }
  try {
    expect(loggedInSince(from)).toEqual([expect.objectContaining({ prewarmed: true })]);
    const q = c.query('select pg_sleep(30)');
    await waitFor(
      async () =>
        (await db.psqlAdmin(`select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'`)) ===
        '1',
      10_000,
      'pg_sleep to start',
    );
    const canceller = client('warm');
    (canceller as unknown as { cancel(c: Client, q: unknown): void }).cancel(
      c,
      (c as unknown as { activeQuery: unknown }).activeQuery,
    );
    await expect(q).rejects.toMatchObject({ code: '57014' });
  } finally {
    await c.end();
  }
});

test('a warm session killed on the server is never handed out', async () => {
  await untilReady('warm', 'alice/appdb', 2);
  const closedBefore = await metric('rds_iam_proxy_prewarm_discards_total', {
    listener: 'warm',
    key: 'alice/appdb',
    reason: 'closed',
  });
  const killed = (
    await db.psqlAdmin(
      `select pid from (select pid from pg_stat_activity where usename = 'alice' offset 0) s where pg_terminate_backend(pid)`,
    )
  ).split('\n');
  expect(killed.length).toBeGreaterThanOrEqual(2);
  await waitFor(
    async () =>
      (await metric('rds_iam_proxy_prewarm_discards_total', {
        listener: 'warm',
        key: 'alice/appdb',
        reason: 'closed',
      })) >=
      closedBefore + 2,
    10_000,
    'the proxy to notice both killed sessions',
  );
  const c = client('warm');
  await c.connect();
  try {
    const r = await c.query<{ pid: number }>('select pg_backend_pid() pid');
    expect(killed).not.toContain(String(r.rows[0]?.pid));
  } finally {
    await c.end();
  }
});

test('a startup the warm session cannot reproduce falls back to a fresh login', async () => {
  await untilReady('warm', 'alice/appdb', 2);
  const from = proxy.logs.length;
  // ignore_system_indexes is taken at connection start only: set_config refuses it afterwards.
  const c = client('warm', { options: '-c ignore_system_indexes=on' });
  await c.connect();
  try {
    const r = await c.query<{ v: string }>(`select current_setting('ignore_system_indexes') v`);
    expect(r.rows[0]?.v).toBe('on');
  } finally {
    await c.end();
  }
  const logged = loggedInSince(from);
  expect(logged).toHaveLength(1);
  expect(logged[0]?.['prewarmed']).toBeUndefined();
  expect(
    await metric('rds_iam_proxy_prewarm_misses_total', {
      listener: 'warm',
      key: 'alice/appdb',
      reason: 'apply_failed',
    }),
  ).toBeGreaterThanOrEqual(1);
  // Another database is another key: a fresh login.
  const other = client('warm', { database: 'otherdb' });
  await other.connect();
  await other.end();
  expect(loggedInSince(from).at(-1)?.['prewarmed']).toBeUndefined();
});

test('a warm session older than maxAgeSeconds is replaced', async () => {
  await untilReady('aged', 'carol/appdb', 1);
  const first = (await db.psqlAdmin(`select pid from pg_stat_activity where usename = 'carol'`)).split('\n');
  expect(first.length).toBeGreaterThanOrEqual(1);
  const aged = (): Promise<number> =>
    metric('rds_iam_proxy_prewarm_discards_total', {
      listener: 'aged',
      key: 'carol/appdb',
      reason: 'max_age',
    });
  const before = await aged();
  // Two replacements: every session that existed when `first` was read is gone. Right after a
  // replacement the new session has most of its 2 s ahead of it.
  await waitFor(async () => (await aged()) >= before + 2, 15_000, 'two max_age discards');
  await untilReady('aged', 'carol/appdb', 1);
  const from = proxy.logs.length;
  const c = client('aged', { user: 'carol' });
  await c.connect();
  try {
    const r = await c.query<{ pid: number }>('select pg_backend_pid() pid');
    expect(first).not.toContain(String(r.rows[0]?.pid));
  } finally {
    await c.end();
  }
  expect(loggedInSince(from)).toEqual([expect.objectContaining({ prewarmed: true, listener: 'aged' })]);
});

test('node-postgres with 100 ms connection and query timeouts succeeds against a slow token check', async () => {
  await untilReady('warm', 'alice/appdb', 2);
  db.verifier.delayMs = 500;
  const pool = (listener: string): Pool =>
    new Pool({
      host: '127.0.0.1',
      port: proxy.port(listener),
      user: 'alice',
      database: 'appdb',
      connectionTimeoutMillis: 100,
      query_timeout: 100,
      max: 1,
    });
  const warm = pool('warm');
  try {
    const r = await warm.query<{ one: number }>('select 1 as one');
    expect(r.rows).toEqual([{ one: 1 }]);
  } finally {
    await warm.end();
  }
  // The same pool through a listener without prewarm waits for the slow check and times out.
  const cold = pool('cold');
  try {
    await expect(cold.query('select 1')).rejects.toThrow(/timeout/i);
    expect(db.verifier.entries.at(-1)).toMatchObject({ user: 'alice', ok: true });
  } finally {
    await cold.end();
  }
});

describe('refills and the login rate limit', () => {
  let limited: TestProxy;
  afterAll(async () => {
    await limited?.close();
  });

  test('refills take login slots (limits.loginsPerSecond) like clients do', async () => {
    const since = Date.now();
    limited = await startTestProxy({
      limits: { loginsPerSecond: 2 },
      listeners: [
        {
          name: 'bob',
          engine: 'postgres',
          listen: '127.0.0.1:0',
          upstream: upstream(db),
          client: { tls: 'off' },
          prewarm: { size: 8, keys: [{ user: 'bob' }] },
        },
      ],
    });
    const bobLogins = (): number =>
      db.verifier.entries.filter((e) => e.user === 'bob' && e.at >= since).length;
    await waitFor(async () => bobLogins() >= 3, 20_000, 'three refill logins');
    const seconds = (Date.now() - since) / 1000;
    // A burst of 2, then 2 per second: never all 8 at once.
    expect(bobLogins()).toBeLessThanOrEqual(2 + Math.ceil(2 * seconds));
  });
});

describe('MySQL', () => {
  let my: RdsLikeMariaDb;
  let mp: TestProxy;
  const KEY = 'alice/'; // a configured key without a database: COM_INIT_DB selects the client's

  beforeAll(async () => {
    my = await startRdsLikeMariaDb({ users: ['alice', 'bob'] });
    const upstream = { host: my.host, port: my.port, address: my.address, tls: { ca: my.caFile } };
    // Every listener: plaintext clients, prewarm for alice (and bob) with no database.
    type ListenerInput = ConfigInput['listeners'][number];
    const listener = (name: string, size: number, o: Partial<ListenerInput> = {}): ListenerInput => ({
      name,
      engine: 'mysql',
      listen: '127.0.0.1:0',
      upstream,
      client: { tls: 'off' },
      prewarm: { size, keys: [{ user: 'alice' }] },
      ...o,
    });
    const localUsers: ListenerInput['client'] = {
      tls: 'off',
      auth: 'password',
      users: [{ name: 'alice', password: { env: 'ALICE_PW' } }],
    };
    mp = await startTestProxy(
      {
        listeners: [
          listener('mywarm', 2),
          listener('mykeys', 1, { prewarm: { size: 1, keys: [{ user: 'alice' }, { user: 'bob' }] } }),
          listener('myauth', 1, { client: localUsers }),
          listener('mypending', 2, { maxPendingHandshakes: 1 }),
        ],
      },
      { env: { ...process.env, ALICE_PW: 'alice-local' } },
    );
    // The first client of each key teaches it mysql2's capabilities; sessions logged in with the
    // initial profile are replaced.
    for (const [listener, user] of [
      ['mywarm', 'alice'],
      ['mykeys', 'alice'],
      ['mykeys', 'bob'],
      ['myauth', 'alice'],
    ] as const) {
      const c = await connectMy({ port: mp.port(listener), user, password: 'alice-local' });
      await c.end();
    }
    await untilReady('mywarm', KEY, 2);
  });

  afterAll(async () => {
    await mp?.close();
    await my?.stop();
  });

  const connectMy = (o: mysql.ConnectionOptions = {}): Promise<mysql.Connection> =>
    mysql.createConnection({
      host: '127.0.0.1',
      port: mp.port('mywarm'),
      user: 'alice',
      database: 'otherdb',
      ...o,
    });

  const loggedIn = (from: number): Record<string, unknown>[] =>
    mp
      .records()
      .slice(from)
      .filter((r) => r['msg'] === 'logged in');

  test('a warm session: its greeting is the connection id, COM_INIT_DB selects the database', async () => {
    await untilReady('mywarm', KEY, 1);
    const from = mp.logs.length;
    const handouts = await metric('rds_iam_proxy_prewarm_handouts_total', { listener: 'mywarm', key: KEY });
    const c = await connectMy();
    try {
      const [rows] = await c.query<mysql.RowDataPacket[]>('SELECT CONNECTION_ID() AS id, DATABASE() AS db');
      expect(rows[0]).toEqual({ id: c.threadId, db: 'otherdb' });
    } finally {
      await c.end();
    }
    expect(loggedIn(from)).toEqual([expect.objectContaining({ prewarmed: true, listener: 'mywarm' })]);
    expect(await metric('rds_iam_proxy_prewarm_handouts_total', { listener: 'mywarm', key: KEY })).toBe(
      handouts + 1,
    );
  });

  test('KILL QUERY with the greeted connection id reaches the warm session', async () => {
    await untilReady('mywarm', KEY, 1);
    const from = mp.logs.length;
    const c = await connectMy();
    const killer = await connectMy({ database: 'appdb' });
    try {
      expect(loggedIn(from)[0]).toMatchObject({ prewarmed: true });
      // Settled into a value at once: the interruption may arrive before the KILL's own answer.
      const slow = c.query<mysql.RowDataPacket[]>('SELECT SLEEP(60) AS s').then(
        () => undefined,
        (err: unknown) => err,
      );
      await waitFor(
        async () => {
          const [p] = await killer.query<mysql.RowDataPacket[]>(
            'SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE ID = ? AND INFO LIKE ?',
            [c.threadId, 'SELECT SLEEP%'],
          );
          return Number(p[0]?.['n']) === 1;
        },
        10_000,
        'the SLEEP to run',
      );
      await killer.query(`KILL QUERY ${c.threadId}`);
      // MariaDB: ER_QUERY_INTERRUPTED; the session itself lives on.
      expect(await slow).toMatchObject({ errno: 1317 });
      const [rows] = await c.query<mysql.RowDataPacket[]>('SELECT CONNECTION_ID() AS id');
      expect(rows[0]).toEqual({ id: c.threadId });
    } finally {
      await Promise.all([c.end(), killer.end()]);
    }
  });

  test("several keys: a client greeted with another key's session gets a ready one of its own", async () => {
    await untilReady('mykeys', 'alice/', 1);
    await untilReady('mykeys', 'bob/', 1);
    const discarded = (): Promise<number> =>
      metric('rds_iam_proxy_prewarm_discards_total', { listener: 'mykeys', key: 'bob/', reason: 'greeted' });
    const before = await discarded();
    const handouts = await metric('rds_iam_proxy_prewarm_handouts_total', {
      listener: 'mykeys',
      key: 'alice/',
    });
    const from = mp.logs.length;
    // bob's key was used last, so the greeting is from bob's session; alice's login takes her own.
    const c = await connectMy({ port: mp.port('mykeys') });
    try {
      const [rows] = await c.query<mysql.RowDataPacket[]>('SELECT CURRENT_USER() AS u, DATABASE() AS db');
      expect(rows[0]).toEqual({ u: 'alice@%', db: 'otherdb' });
    } finally {
      await c.end();
    }
    expect(loggedIn(from)).toEqual([expect.objectContaining({ prewarmed: true, listener: 'mykeys' })]);
    expect(await discarded()).toBe(before + 1);
    expect(await metric('rds_iam_proxy_prewarm_handouts_total', { listener: 'mykeys', key: 'alice/' })).toBe(
      handouts + 1,
    );
  });

  test('client.auth password: the greeting sent on accept carries the scramble the password is checked against', async () => {
    await untilReady('myauth', KEY, 1);
    const from = mp.logs.length;
    const c = await connectMy({ port: mp.port('myauth'), password: 'alice-local' });
    try {
      const [rows] = await c.query<mysql.RowDataPacket[]>('SELECT CONNECTION_ID() AS id, DATABASE() AS db');
      expect(rows[0]).toEqual({ id: c.threadId, db: 'otherdb' });
    } finally {
      await c.end();
    }
    expect(loggedIn(from)).toEqual([expect.objectContaining({ prewarmed: true, listener: 'myauth' })]);
    await untilReady('myauth', KEY, 1);
    await expect(connectMy({ port: mp.port('myauth'), password: 'wrong' })).rejects.toMatchObject({
      errno: 1045,
    });
  });

  test('a client greeted from a warm session holds a pending-handshake slot until it answers', async () => {
    await untilReady('mypending', KEY, 2);
    const port = mp.port('mypending');
    const greeted = (s: net.Socket): Promise<boolean> =>
      new Promise((resolve) => {
        const t = setTimeout(() => resolve(false), 500);
        s.once('data', () => {
          clearTimeout(t);
          resolve(true);
        });
      });
    const open = (): net.Socket => net.connect(port, '127.0.0.1').on('error', () => undefined);
    const first = open();
    expect(await greeted(first)).toBe(true);
    // Two warm sessions are ready, but the one slot is held by a client that has not answered.
    const second = open();
    const later = new Promise<void>((resolve) => second.once('data', () => resolve()));
    expect(await greeted(second)).toBe(false);
    first.destroy();
    await later; // greeted once the slot is free
    second.destroy();
  });

  test('a client with other capability flags gets a fresh login', async () => {
    await untilReady('mywarm', KEY, 1);
    const from = mp.logs.length;
    const misses = await metric('rds_iam_proxy_prewarm_misses_total', {
      listener: 'mywarm',
      key: KEY,
      reason: 'capabilities',
    });
    const c = await connectMy({ multipleStatements: true });
    try {
      const [rows] = await c.query<mysql.RowDataPacket[][]>('SELECT 1 AS a; SELECT DATABASE() AS db');
      expect(rows).toEqual([[{ a: 1 }], [{ db: 'otherdb' }]]);
    } finally {
      await c.end();
    }
    const [line] = loggedIn(from);
    expect(line).toMatchObject({ listener: 'mywarm' });
    expect(line?.['prewarmed']).toBeUndefined();
    expect(
      await metric('rds_iam_proxy_prewarm_misses_total', {
        listener: 'mywarm',
        key: KEY,
        reason: 'capabilities',
      }),
    ).toBe(misses + 1);
  });
});
