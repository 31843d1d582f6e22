/**
 * The MySQL path end to end: the mariadb CLI and mysql2 through the proxy to an RDS-like
 * MariaDB that accepts only valid IAM tokens (mysql_clear_password via PAM) over TLS.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import mysql from 'mysql2/promise';
import { createCA } from '../../src/net/certs';
import { startRdsLikeMariaDb, type RdsLikeMariaDb } from '../harness/mariadb';
import { LONG_SESSION_TOKEN, startTestProxy, testCredentials, type TestProxy } from '../harness/proxy';
import { IamTokenMinter } from '../../src/credentials/tokens';
import { runProgram, type ProcResult } from '../harness/clients';
import { TEST_SECRET_ACCESS_KEY } from '../harness/sign';

let db: RdsLikeMariaDb;
let proxy: TestProxy;
let dir: string;
let sock: string;

beforeAll(async () => {
  db = await startRdsLikeMariaDb({ users: ['alice', 'bob'] });
  dir = mkdtempSync(path.join(os.tmpdir(), 'rip-my-'));
  sock = path.join(dir, 'mysql.sock');
  const wrongCa = path.join(dir, 'wrong-ca.pem');
  writeFileSync(wrongCa, createCA('not the database CA').cert);
  const upstream = { host: db.host, port: db.port, address: db.address, tls: { ca: db.caFile } };
  const iam = { mode: 'iam' as const, region: db.region };
  proxy = await startTestProxy(
    {
      localTls: { caFile: path.join(dir, 'local-ca.pem') },
      listeners: [
        {
          name: 'app',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream,
          auth: iam,
          client: { tls: 'auto', auth: 'trust' },
        },
        {
          name: 'unix',
          engine: 'mysql',
          listen: sock,
          upstream,
          auth: iam,
          client: { tls: 'off', auth: 'trust' },
        },
        {
          name: 'pw',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream,
          auth: iam,
          client: {
            tls: 'auto',
            auth: 'password',
            users: [
              { name: 'alice', password: { env: 'ALICE_PW' } },
              { name: 'bob', password: { env: 'BOB_PW' } },
            ],
          },
        },
        {
          name: 'wrongregion',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream,
          auth: { mode: 'iam', region: 'eu-west-3' },
          client: { tls: 'off' },
        },
        {
          name: 'wrongca',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream: { ...upstream, tls: { ca: wrongCa } },
          auth: iam,
          client: { tls: 'off' },
        },
      ],
    },
    { env: { ...process.env, ALICE_PW: 'alice-local', BOB_PW: 'bob-local' } },
  );
  await db.sqlAdmin('CREATE TABLE appdb.loaded (line VARCHAR(64) NOT NULL) CHARACTER SET latin1;');
});

afterAll(async () => {
  await proxy?.close();
  await db?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

afterEach(() => {
  // Nothing secret may reach the logs, at any level (the proxy runs at trace).
  const all = proxy.logs.join('\n');
  expect(all).not.toContain('X-Amz-Signature');
  expect(all).not.toContain('X-Amz-Credential');
  expect(all).not.toContain(LONG_SESSION_TOKEN.slice(0, 40));
  expect(all).not.toContain(TEST_SECRET_ACCESS_KEY);
});

/** The mariadb CLI over TCP to a listener; `--no-defaults` keeps /etc/mysql out. */
function cli(
  listener: string,
  args: string[],
  o: { input?: string; user?: string } = {},
): Promise<ProcResult> {
  return runProgram(
    'mariadb',
    [
      '--no-defaults',
      '--protocol=TCP',
      '-h',
      '127.0.0.1',
      '-P',
      String(proxy.port(listener)),
      '-u',
      o.user ?? 'alice',
      '--batch',
      '--skip-column-names',
      ...args,
    ],
    { ...(o.input !== undefined ? { input: o.input } : {}), timeoutMs: 60_000 },
  );
}

const connect = (o: mysql.ConnectionOptions = {}): Promise<mysql.Connection> =>
  mysql.createConnection({
    host: '127.0.0.1',
    port: proxy.port('app'),
    user: 'alice',
    database: 'appdb',
    ...o,
  });

const lastEntry = (): RdsLikeMariaDb['verifier']['entries'][number] | undefined => db.verifier.entries.at(-1);

describe('mariadb CLI', () => {
  test('logs in as the IAM user with a token over 1 KB; the initial database is honoured', async () => {
    const r = await cli('app', [
      '--skip-ssl',
      '-D',
      'otherdb',
      '-e',
      'select current_user(), database(), connection_id() > 0',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('alice@%\totherdb\t1');
    expect(lastEntry()).toMatchObject({ user: 'alice', ok: true });
    expect(lastEntry()?.tokenLength).toBeGreaterThan(1024);
  });

  test('local TLS verify-full against the generated CA', async () => {
    const ca = proxy.app.localTls.caPath;
    const r = await cli('app', [
      '--ssl',
      `--ssl-ca=${ca}`,
      '--ssl-verify-server-cert',
      '-e',
      'status; select current_user();',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/SSL:\s+Cipher in use is TLS_/);
    expect(r.stdout).toContain('alice@%');
    const loggedIn = proxy.records().filter((l) => l.msg === 'logged in' && l.listener === 'app');
    expect(loggedIn.at(-1)).toMatchObject({ clientTls: true, user: 'alice' });
    const c = await connect({ ssl: { ca: readFileSync(ca, 'utf8'), rejectUnauthorized: true } });
    const [rows] = await c.query('select current_user() as u');
    expect(rows).toEqual([{ u: 'alice@%' }]);
    await c.end();
    expect(
      proxy
        .records()
        .filter((l) => l.msg === 'logged in' && l.listener === 'app')
        .at(-1),
    ).toMatchObject({ clientTls: true });
    // verify-full is real: the database's CA does not vouch for the proxy
    const bad = await cli('app', [
      '--ssl',
      `--ssl-ca=${db.caFile}`,
      '--ssl-verify-server-cert',
      '-e',
      'select 1',
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/certificate|SSL|TLS/i);
  });

  test('multi-statements and LOAD DATA LOCAL INFILE', async () => {
    const file = path.join(dir, 'cli-rows.txt');
    writeFileSync(file, Array.from({ length: 1000 }, (_, i) => `cli-row-${i}\n`).join(''));
    const r = await cli('app', [
      '--skip-ssl',
      '--local-infile=1',
      '-D',
      'appdb',
      '-e',
      `select 1; select 2; LOAD DATA LOCAL INFILE '${file}' INTO TABLE loaded; select count(*) from loaded where line like 'cli-row-%';`,
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toEqual(['1', '2', '1000']);
  });

  test('compression (--compress) is negotiated on both legs and spliced', async () => {
    const r = await cli('app', [
      '--skip-ssl',
      '--compress',
      '-e',
      "show session status like 'Compression'; select length(repeat('abc', 100000));",
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toEqual(['Compression\tON', '300000']);
  });

  test('unix socket listener', async () => {
    const r = await runProgram('mariadb', [
      '--no-defaults',
      '-S',
      sock,
      '-u',
      'alice',
      '--batch',
      '--skip-column-names',
      '-e',
      'select current_user()',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('alice@%');
    const c = await mysql.createConnection({ socketPath: sock, user: 'bob', database: 'appdb' });
    const [rows] = await c.query('select current_user() as u');
    expect(rows).toEqual([{ u: 'bob@%' }]);
    await c.end();
  });

  test("a refused login reaches the client with the server's ERR 1045 and the proxy's hint", async () => {
    const r = await cli('wrongregion', ['--skip-ssl', '-e', 'select 1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^ERROR 1045 \(28000\): Access denied for user 'alice'@'127\.0\.0\.1' .*\[rds-iam-proxy: .*AWSAuthenticationPlugin.*auth\.region \(eu-west-3\)/,
    );
    expect(lastEntry()).toMatchObject({ user: 'alice', ok: false });
    expect(lastEntry()?.reason).toMatch(/region/);
  });

  test('a 4 KB token (long session token) fits the length-encoded auth data', async () => {
    const big = await startTestProxy(
      {
        listeners: [
          {
            name: 'big',
            engine: 'mysql',
            listen: '127.0.0.1:0',
            upstream: { host: db.host, port: db.port, address: db.address, tls: { ca: db.caFile } },
            auth: { mode: 'iam', region: db.region },
            client: { tls: 'off' },
          },
        ],
      },
      {
        minter: new IamTokenMinter(testCredentials({ sessionToken: 'IQoJb3JpZ2luX2VjE' + 'B'.repeat(3650) })),
      },
    );
    try {
      const c = await mysql.createConnection({ host: '127.0.0.1', port: big.port('big'), user: 'alice' });
      const [rows] = await c.query('select current_user() as u');
      expect(rows).toEqual([{ u: 'alice@%' }]);
      await c.end();
      expect(lastEntry()).toMatchObject({ user: 'alice', ok: true });
      expect(lastEntry()?.tokenLength).toBeGreaterThan(4000);
      expect(lastEntry()?.tokenLength).toBeLessThanOrEqual(4096);
    } finally {
      await big.close();
    }
  });

  test('a wrong upstream CA is refused before any token is sent', async () => {
    const before = db.verifier.entries.length;
    const r = await cli('wrongca', ['--skip-ssl', '-e', 'select 1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^ERROR 1429 \(08S01\): rds-iam-proxy: upstream certificate for testdb-mariadb\.\S+ rejected/,
    );
    await new Promise((res) => setTimeout(res, 200));
    expect(db.verifier.entries.length).toBe(before);
  });

  test('a 200 MB result streams through with bounded proxy memory', async () => {
    const rows = 200_000;
    const rowBytes = 1000;
    const base = process.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    const t0 = performance.now();
    const received = await new Promise<number>((resolve, reject) => {
      const child = spawn('mariadb', [
        '--no-defaults',
        '--protocol=TCP',
        '-h',
        '127.0.0.1',
        '-P',
        String(proxy.port('app')),
        '-u',
        'alice',
        '--skip-ssl',
        '-D',
        'appdb',
        '--quick',
        '--batch',
        '--skip-column-names',
        '-e',
        `select repeat('x', ${rowBytes}) from seq_1_to_${rows}`,
      ]);
      let n = 0;
      let err = '';
      child.stdout.on('data', (d: Buffer) => (n += d.length));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('error', reject);
      child.on('close', (code) =>
        code === 0 ? resolve(n) : reject(new Error(`mariadb exited ${code}: ${err}`)),
      );
    });
    clearInterval(sampler);
    const secs = (performance.now() - t0) / 1000;
    const mb = (x: number): number => Math.round(x / 1024 / 1024);
    console.log(
      `200 MB result: ${mb(received)} MiB in ${secs.toFixed(1)} s (${(received / 1024 / 1024 / secs).toFixed(0)} MiB/s); ` +
        `jest+proxy RSS before ${mb(base)} MiB, peak ${mb(peak)} MiB (+${mb(peak - base)} MiB)`,
    );
    expect(received).toBe(rows * (rowBytes + 1));
    expect(peak - base).toBeLessThan(150 * 1024 * 1024); // streamed, not buffered
  });
});

describe('mysql2', () => {
  test('queries, prepared statements and multi-statements', async () => {
    const c = await connect({ multipleStatements: true });
    const [rows] = await c.query('select current_user() as u, database() as d, connection_id() as id');
    expect(rows).toEqual([{ u: 'alice@%', d: 'appdb', id: c.threadId }]); // the greeting's connection id is the server's
    const [exec] = await c.execute('select ? + ? as s, ? as t', [40, 2, 'text']);
    expect(exec).toEqual([{ s: 42, t: 'text' }]);
    const [again] = await c.execute('select ? + ? as s, ? as t', [1, 2, 'x']);
    expect(again).toEqual([{ s: 3, t: 'x' }]);
    const [multi] = await c.query('select 1 as a; select 2 as b');
    expect(multi).toEqual([[{ a: 1 }], [{ b: 2 }]]);
    await c.end();
  });

  test('LOAD DATA LOCAL INFILE with packets that begin with 0x11 and sequence ids wrapping through 0', async () => {
    const c = await connect();
    // One stream chunk per packet: 600 packets, each starting with the COM_CHANGE_USER byte.
    const lines = Array.from({ length: 600 }, (_, i) => Buffer.from(`\x11row-${i}\n`, 'latin1'));
    const [res] = await c.query({
      sql: "LOAD DATA LOCAL INFILE 'stream' INTO TABLE loaded",
      infileStreamFactory: () => Readable.from(lines, { objectMode: false }),
    });
    expect((res as mysql.ResultSetHeader).affectedRows).toBe(600);
    const [count] = await c.query('select count(*) as n from loaded where line like ?', ['\x11row-%']);
    expect(count).toEqual([{ n: 600 }]);
    const [after] = await c.query('select 7 as seven');
    expect(after).toEqual([{ seven: 7 }]);
    await c.end();
  });

  test('compression: large results and prepared statements', async () => {
    const c = await connect({ compress: true });
    const [status] = await c.query("show session status like 'Compression'");
    expect(status).toEqual([{ Variable_name: 'Compression', Value: 'ON' }]);
    const [big] = await c.query("select repeat('z', 2000000) as z");
    expect((big as { z: string }[])[0]?.z.length).toBe(2_000_000);
    const [exec] = await c.execute('select ? as v', ['compressed']);
    expect(exec).toEqual([{ v: 'compressed' }]);
    await c.end();
  });

  test('KILL QUERY from a second connection', async () => {
    const a = await connect();
    const b = await connect();
    const t0 = Date.now();
    const sleeping = a.query('select sleep(30) as s');
    sleeping.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    await b.query(`KILL QUERY ${a.threadId}`);
    await expect(sleeping).rejects.toMatchObject({ errno: 1317, code: 'ER_QUERY_INTERRUPTED' });
    expect(Date.now() - t0).toBeLessThan(10_000);
    const [ok] = await a.query('select 1 as one');
    expect(ok).toEqual([{ one: 1 }]);
    await Promise.all([a.end(), b.end()]);
  });

  test.each([false, true])(
    'COM_CHANGE_USER logs the new user in upstream with a fresh token (compress: %s)',
    async (compress) => {
      const c = await connect({ compress });
      await c.query('set @mark = 1');
      const before = db.verifier.entries.length;
      await c.changeUser({ user: 'bob', database: 'otherdb' });
      const [rows] = await c.query('select current_user() as u, database() as d, @mark as mark');
      expect(rows).toEqual([{ u: 'bob@%', d: 'otherdb', mark: null }]); // a new session, as the server sees it
      expect(db.verifier.entries.slice(before)).toEqual([expect.objectContaining({ user: 'bob', ok: true })]);
      await c.changeUser({ user: 'alice', database: 'appdb' });
      const [back] = await c.query('select current_user() as u');
      expect(back).toEqual([{ u: 'alice@%' }]);
      const [exec] = await c.execute('select ? as v', [5]);
      expect(exec).toEqual([{ v: 5 }]);
      await c.end();
    },
  );

  test('COM_CHANGE_USER to a user the server refuses: ERR 1045 with a hint naming the user; the session stays the old user', async () => {
    const c = await connect();
    const [before] = await c.query('select current_user() as u');
    db.verifier.revokedUsers.add('bob');
    try {
      const err = (await c.changeUser({ user: 'bob' }).catch((e: unknown) => e)) as {
        errno?: number;
        message: string;
      };
      expect(err).toMatchObject({ errno: 1045 });
      expect(err.message).toContain("the database user 'bob' was not created");
    } finally {
      db.verifier.revokedUsers.delete('bob');
    }
    const [after] = await c.query('select current_user() as u');
    expect(after).toEqual(before);
    c.destroy();
  });

  test('COM_CHANGE_USER to a user the server does not know: an error, then the session closes', async () => {
    const c = await connect();
    await expect(c.changeUser({ user: 'mallory' })).rejects.toMatchObject({ errno: 1045 });
    await expect(c.query('select 1')).rejects.toThrow();
    c.destroy();
  });

  test('client.auth password: local passwords at login and at COM_CHANGE_USER', async () => {
    const port = proxy.port('pw');
    const c = await mysql.createConnection({
      host: '127.0.0.1',
      port,
      user: 'alice',
      password: 'alice-local',
    });
    await c.changeUser({ user: 'bob', password: 'bob-local' });
    const [rows] = await c.query('select current_user() as u');
    expect(rows).toEqual([{ u: 'bob@%' }]);
    await expect(c.changeUser({ user: 'alice', password: 'wrong' })).rejects.toMatchObject({
      errno: 1045,
      sqlState: '28000',
    });
    c.destroy();
    await expect(
      mysql.createConnection({ host: '127.0.0.1', port, user: 'alice', password: 'nope' }),
    ).rejects.toMatchObject({ errno: 1045 });
    const r = await cli('pw', ['--skip-ssl', '-palice-local', '-e', 'select current_user()']);
    expect(r.stdout.trim()).toBe('alice@%');
  });

  test('COM_RESET_CONNECTION passes through', async () => {
    const c = await connect();
    await c.query('set @x = 5');
    await c.reset();
    const [rows] = await c.query('select @x as x, current_user() as u');
    expect(rows).toEqual([{ x: null, u: 'alice@%' }]);
    await c.end();
  });
});
