/**
 * Logs and metrics an SRE can query (issue 11): the JSON lines of a real session through the
 * proxy carry the upstream endpoint, the dialled address and the server's own connection id
 * (matched against pg_backend_pid() and CONNECTION_ID()), failures keep a fixed `msg` with the
 * error in `err`, close reasons use the metrics' vocabulary, and /metrics shows bytes of a
 * session that is still streaming (a slow COPY), counted once when it ends.
 */
import http from 'node:http';
import { Writable } from 'node:stream';
import { Client } from 'pg';
import mysql from 'mysql2/promise';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { startRdsLikeMariaDb, type RdsLikeMariaDb } from '../harness/mariadb';
import { LONG_SESSION_TOKEN, testCredentials } from '../harness/proxy';
import { psql, type ProcResult } from '../harness/clients';
import { waitFor } from '../harness/util';
import { validateConfig } from '../../src/config/load';
import { createLogger } from '../../src/log';
import { IamTokenMinter } from '../../src/credentials/tokens';
import { Runtime } from '../../src/runtime';

type Rec = Record<string, unknown>;

let pg: RdsLikePg;
let my: RdsLikeMariaDb;
let rt: Runtime;
const logs: string[] = [];
const records = (): Rec[] => logs.map((l) => JSON.parse(l) as Rec);

beforeAll(async () => {
  [pg, my] = await Promise.all([startRdsLikePostgres(), startRdsLikeMariaDb()]);
  let partial = '';
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      logs.push(...lines.filter((l) => l.length > 0));
      cb();
    },
  });
  const upstream = (s: RdsLikePg | RdsLikeMariaDb) => ({
    host: s.host,
    port: s.port,
    address: s.address,
    tls: { ca: s.caFile },
  });
  const config = validateConfig({
    log: { level: 'debug', format: 'json' },
    admin: { listen: '127.0.0.1:0' },
    listeners: [
      {
        name: 'pg',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream: upstream(pg),
        client: { tls: 'off' },
      },
      {
        name: 'copy',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream: upstream(pg),
        client: { tls: 'off' },
      },
      {
        // Tokens signed for another region: the server refuses every login.
        name: 'badregion',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream: upstream(pg),
        auth: { mode: 'iam', region: 'eu-west-1' },
        client: { tls: 'off' },
      },
      { name: 'my', engine: 'mysql', listen: '127.0.0.1:0', upstream: upstream(my), client: { tls: 'off' } },
    ],
  });
  rt = new Runtime({
    config,
    log: createLogger({ level: 'debug', format: 'json', destination }),
    version: '0.0.0-test',
    deps: { minter: new IamTokenMinter(testCredentials({ sessionToken: LONG_SESSION_TOKEN })) },
  });
  await rt.start();
}, 60_000);

afterAll(async () => {
  rt?.shutdown('SIGINT');
  await rt?.done;
  await Promise.all([pg?.stop(), my?.stop()]);
});

const port = (name: string): number => rt.app.listeners.find((l) => l.name === name)?.port() ?? 0;

function metricsBody(): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(`http://127.0.0.1:${rt.adminServer?.port()}/metrics`, { agent: false }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

async function bytesMetric(listener: string, direction: 'upstream' | 'downstream'): Promise<number> {
  const line = (await metricsBody())
    .split('\n')
    .find((l) => l.startsWith(`rds_iam_proxy_bytes_total{listener="${listener}",direction="${direction}"}`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

/** The newest record with `msg` on `listener` (optionally for one connId). */
function last(msg: string, listener: string, connId?: unknown): Rec | undefined {
  return records()
    .filter(
      (r) =>
        r['msg'] === msg && r['listener'] === listener && (connId === undefined || r['connId'] === connId),
    )
    .at(-1);
}

test('Postgres "logged in" names the endpoint, the dialled address and the backend pid; "closed" says client_closed', async () => {
  const c = new Client({ host: '127.0.0.1', port: port('pg'), user: 'alice', database: 'appdb' });
  await c.connect();
  const pid = Number((await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid);
  const loggedIn = last('logged in', 'pg');
  expect(loggedIn).toMatchObject({
    level: 'info',
    service: 'rds-iam-proxy',
    version: expect.any(String),
    hostname: expect.any(String),
    user: 'alice',
    database: 'appdb',
    upstreamHost: pg.host,
    upstreamAddress: `127.0.0.1:${pg.port}`,
    serverConnectionId: pid,
  });
  await c.end();
  await waitFor(
    async () => last('closed', 'pg', loggedIn?.['connId']) !== undefined,
    5000,
    'the closed line',
  );
  expect(last('closed', 'pg', loggedIn?.['connId'])).toMatchObject({
    reason: 'client_closed',
    user: 'alice',
  });
});

test('MySQL "logged in" carries the thread id the server gave this session (CONNECTION_ID())', async () => {
  const c = await mysql.createConnection({ host: '127.0.0.1', port: port('my'), user: 'alice' });
  const [rows] = await c.query('select connection_id() as id');
  const id = Number((rows as { id: number }[])[0]?.id);
  expect(last('logged in', 'my')).toMatchObject({
    upstreamHost: my.host,
    upstreamAddress: `127.0.0.1:${my.port}`,
    serverConnectionId: id,
  });
  await c.end();
});

test('a refused login (token for another region): msg "handshake failed" with the error in err {code, message, serverCode}', async () => {
  const c = new Client({ host: '127.0.0.1', port: port('badregion'), user: 'alice', database: 'appdb' });
  c.on('error', () => undefined);
  await expect(c.connect()).rejects.toMatchObject({ code: '28000' });
  const failed = records().filter((r) => r['msg'] === 'handshake failed' && r['listener'] === 'badregion');
  expect(failed).toHaveLength(1);
  expect(failed[0]).toMatchObject({
    level: 'warn',
    user: 'alice',
    err: {
      code: 'UPSTREAM_AUTH',
      message: expect.stringMatching(/alice/),
      serverCode: '28000',
    },
  });
});

test('every connection of one user can be found by the fields (what the README jq / LogQL examples select)', () => {
  const alice = records().filter((r) => r['user'] === 'alice' && r['msg'] === 'logged in');
  expect(new Set(alice.map((r) => r['listener']))).toEqual(new Set(['pg', 'my']));
  for (const r of alice) expect(typeof r['serverConnectionId']).toBe('number');
});

test('bytes in /metrics grow while a long COPY streams, and the session is counted once when it ends', async () => {
  const before = await bytesMetric('copy', 'downstream');
  let result: ProcResult | undefined;
  // ~2 KB a row, one row every 10 ms: the server flushes every few rows for about 3 s.
  const copy = psql(`host=127.0.0.1 port=${port('copy')} user=alice dbname=appdb sslmode=disable`, [
    '-c',
    "COPY (SELECT repeat('x', 2000) || pg_sleep(0.01)::text FROM generate_series(1, 300)) TO STDOUT",
  ]).then((r) => (result = r));
  const during: number[] = [];
  while (result === undefined) {
    const v = await bytesMetric('copy', 'downstream');
    if (result === undefined) during.push(v);
    await new Promise((r) => setTimeout(r, 100));
  }
  await copy;
  expect(result.code).toBe(0);
  expect(result.stdout.split('\n').filter((l) => l.length > 0)).toHaveLength(300);
  // Seen growing before the COPY ended: more than at the start, less than the final total.
  await waitFor(async () => last('closed', 'copy') !== undefined, 5000, 'the closed line');
  const closed = last('closed', 'copy');
  const after = await bytesMetric('copy', 'downstream');
  expect(after - before).toBe(closed?.['bytesToClient']);
  expect(during.some((v) => v > before && v < after)).toBe(true);
  expect((await bytesMetric('copy', 'upstream')) > 0).toBe(true);
});
