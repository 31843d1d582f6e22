/**
 * Connect time with and without prewarm (issue 14), IAM path. Postgres: `pgbench -n -C` (a new
 * connection per transaction) running `select 1`, directly to the RDS-like server with a token
 * as password, and through the proxy without and with `prewarm`. The proxy runs in this process
 * (like the token verifier), so the numbers compare the three paths on the same machine, not
 * absolute RDS latencies. `verifierDelayMs` makes the database's token check slow.
 *
 * Method: connects are spaced (`pgbench -R`, see connectRate) so that each client arrives when
 * a warm session is ready, as with per-request connects or a churning pool; back-to-back
 * connects (plain `-C`) would empty the pool faster than logins refill it and measure the login
 * rate instead. Before measuring, 8 clients teach the key pgbench's startup (application_name),
 * and the pool refills. The mean is pgbench's "average connection time".
 *
 * MySQL: the same three paths with bench/myconnect, a C client (mysqlConnectMs).
 *
 * Run alone: `npm run build && node dist/bench/prewarm.js [transactions] [verifierDelayMs] [postgres|mysql]`.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startProxy } from '../src/app';
import { validateConfig } from '../src/config/load';
import { IamTokenMinter } from '../src/credentials/tokens';
import { createLogger } from '../src/log';
import { startRdsLikeMariaDb } from '../test/harness/mariadb';
import { startRdsLikePostgres } from '../test/harness/pg';
import { testCredentials } from '../test/harness/proxy';
import { signToken, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../test/harness/sign';
import { buildTool } from './far';
import { runProgram } from './util';

/** Mean connection time per path, milliseconds, as pgbench reports it. */
export interface PrewarmConnectResult {
  transactions: number;
  verifierDelayMs: number;
  directMs: number;
  proxyMs: number;
  prewarmMs: number;
  /** prewarmMs / directMs (the target: <= 0.2). */
  ratio: number;
}

async function pgbenchConnectMs(
  conn: string,
  transactions: number,
  env: NodeJS.ProcessEnv,
  script: string,
  rate: number,
): Promise<number> {
  const args = ['-n', '-C', '-R', String(rate), '-t', String(transactions), '-f', script, conn];
  const r = await runProgram('pgbench', args, { env });
  const m = /average connection time = ([\d.]+) ms/.exec(r.stdout);
  if (r.code !== 0 || !m) throw new Error(`pgbench failed (${String(r.code)}): ${r.stderr || r.stdout}`);
  return Number(m[1]);
}

/** Measures the three paths; `transactions` new connections each. */
export async function benchPrewarmConnect(
  transactions = 50,
  verifierDelayMs = 0,
): Promise<PrewarmConnectResult> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-prewarm-'));
  const script = path.join(dir, 'select1.sql');
  await fs.writeFile(script, 'select 1;\n');
  const db = await startRdsLikePostgres({ users: ['alice'] });
  db.verifier.delayMs = verifierDelayMs;
  const upstream = { host: db.host, port: db.port, address: db.address, tls: { ca: db.caFile } };
  const config = validateConfig({
    log: { level: 'warn', format: 'json' },
    listeners: [
      { name: 'cold', engine: 'postgres', listen: '127.0.0.1:0', upstream, client: { tls: 'off' } },
      {
        name: 'warm',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream,
        client: { tls: 'off' },
        // Enough ready sessions that refills keep up with pgbench's serial connects.
        prewarm: { size: 4, keys: [{ user: 'alice', database: 'appdb' }] },
      },
    ],
  });
  const log = createLogger({ level: 'warn', format: 'json', destination: process.stderr });
  const app = await startProxy(config, { log, minter: new IamTokenMinter(testCredentials()) });
  try {
    const port = (name: string): number => {
      const l = app.listeners.find((x) => x.name === name);
      if (!l) throw new Error(`no listener ${name}`);
      return l.port();
    };
    const token = signToken({
      host: db.host,
      port: db.port,
      user: 'alice',
      region: db.region,
      accessKeyId: TEST_ACCESS_KEY_ID,
      secretAccessKey: TEST_SECRET_ACCESS_KEY,
    });
    const direct = `host=127.0.0.1 port=${db.port} user=alice dbname=appdb sslmode=require`;
    const local = (p: number): string => `host=127.0.0.1 port=${p} user=alice dbname=appdb sslmode=disable`;
    // Let the pool fill before measuring.
    await new Promise((r) => setTimeout(r, 1000 + 4 * verifierDelayMs));
    const rate = connectRate(verifierDelayMs);
    // Steady state: a few clients first, so the key's sessions start like pgbench's (its
    // application_name is learned and needs no set_config), then let the pool fill again.
    await pgbenchConnectMs(local(port('warm')), 8, {}, script, rate);
    await new Promise((r) => setTimeout(r, 1000 + 4 * verifierDelayMs));
    const directMs = await pgbenchConnectMs(direct, transactions, { PGPASSWORD: token }, script, rate);
    const proxyMs = await pgbenchConnectMs(local(port('cold')), transactions, {}, script, rate);
    const prewarmMs = await pgbenchConnectMs(local(port('warm')), transactions, {}, script, rate);
    return {
      transactions,
      verifierDelayMs,
      directMs,
      proxyMs,
      prewarmMs,
      ratio: Math.round((prewarmMs / directMs) * 1000) / 1000,
    };
  } finally {
    await app.close();
    await db.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** Where a MySQL connect goes: dialled address and port, login, and the CA for TLS (none = plaintext). */
interface MyTarget {
  address: string;
  port: number;
  user: string;
  password: string;
  database: string;
  caFile?: string;
}

/**
 * The MySQL equivalent of `pgbench -C -R`: bench/myconnect, a C client on MariaDB Connector/C
 * (the mariadb CLI's library), opens `n` connections `1000 / rate` ms apart, each timed from
 * mysql_real_connect to logged in, runs `select 1` and closes it. A Node client (mysql2) was used
 * before: it spends 2.4-3.7 ms of its own per connect here (against a fake server that answers at
 * once), more than the whole hand-out, so it measured itself.
 * Direct TLS verifies the chain against `caFile` but not the name (the harness's certificate
 * names the endpoint, dialled here as 127.0.0.1), which only makes direct cheaper. Resolves with
 * the mean, milliseconds.
 */
async function mysqlConnectMs(t: MyTarget, n: number, rate: number): Promise<number> {
  const bin = await buildTool('myconnect');
  const args = [t.address, String(t.port), t.user, t.database, t.caFile ?? '-', String(n), String(rate)];
  const r = await runProgram(bin, args, { env: { MYCONNECT_PASSWORD: t.password } });
  if (r.code !== 0) throw new Error(`myconnect failed (${String(r.code)}): ${r.stderr || r.stdout}`);
  return Number(r.stdout.trim());
}

/** The MySQL paths: direct with a token over verified TLS, through the proxy, and with prewarm. */
export async function benchPrewarmConnectMysql(
  transactions = 50,
  verifierDelayMs = 0,
): Promise<PrewarmConnectResult> {
  const db = await startRdsLikeMariaDb({ users: ['alice'] });
  db.verifier.delayMs = verifierDelayMs;
  const upstream = { host: db.host, port: db.port, address: db.address, tls: { ca: db.caFile } };
  const config = validateConfig({
    log: { level: 'warn', format: 'json' },
    listeners: [
      { name: 'cold', engine: 'mysql', listen: '127.0.0.1:0', upstream, client: { tls: 'off' } },
      {
        name: 'warm',
        engine: 'mysql',
        listen: '127.0.0.1:0',
        upstream,
        client: { tls: 'off' },
        prewarm: { size: 4, keys: [{ user: 'alice', database: 'appdb' }] },
      },
    ],
  });
  const log = createLogger({ level: 'warn', format: 'json', destination: process.stderr });
  const app = await startProxy(config, { log, minter: new IamTokenMinter(testCredentials()) });
  try {
    const port = (name: string): number => {
      const l = app.listeners.find((x) => x.name === name);
      if (!l) throw new Error(`no listener ${name}`);
      return l.port();
    };
    const token = signToken({
      host: db.host,
      port: db.port,
      user: 'alice',
      region: db.region,
      accessKeyId: TEST_ACCESS_KEY_ID,
      secretAccessKey: TEST_SECRET_ACCESS_KEY,
    });
    const direct: MyTarget = {
      address: db.address,
      port: db.port,
      user: 'alice',
      password: token,
      database: 'appdb',
      caFile: db.caFile,
    };
    const local = (p: number): MyTarget => ({
      address: '127.0.0.1',
      port: p,
      user: 'alice',
      password: '',
      database: 'appdb',
    });
    const rate = connectRate(verifierDelayMs);
    // Steady state, as for Postgres: the key learns mysql2's capabilities, then the pool refills.
    await mysqlConnectMs(local(port('warm')), 8, rate);
    await new Promise((r) => setTimeout(r, 1000 + 4 * verifierDelayMs));
    const directMs = await mysqlConnectMs(direct, transactions, rate);
    const proxyMs = await mysqlConnectMs(local(port('cold')), transactions, rate);
    const prewarmMs = await mysqlConnectMs(local(port('warm')), transactions, rate);
    return {
      transactions,
      verifierDelayMs,
      directMs,
      proxyMs,
      prewarmMs,
      ratio: Math.round((prewarmMs / directMs) * 1000) / 1000,
    };
  } finally {
    await app.close();
    await db.stop();
  }
}

/** A row of bench/run.ts's targets table. */
export interface PrewarmTarget {
  measure: string;
  target: string;
  result: string;
  ok: boolean;
}

/** The target per engine, measured with token-check delays of 0 and 150 ms. */
export async function prewarmTargets(): Promise<PrewarmTarget[]> {
  const row = (engine: string, how: string, runs: PrewarmConnectResult[]): PrewarmTarget => ({
    measure: `connect with prewarm vs direct IAM, ${engine} (${how}, ${runs.map((r) => connectRate(r.verifierDelayMs)).join('/')} per s)`,
    target: '<= 0.2x',
    result: runs
      .map(
        (r) =>
          `check ${r.verifierDelayMs} ms: ${r.prewarmMs.toFixed(1)} vs ${r.directMs.toFixed(1)} ms = ${r.ratio.toFixed(2)}x`,
      )
      .join('; '),
    ok: runs.every((r) => r.ratio <= 0.2),
  });
  return [
    row('Postgres', 'pgbench -C -R', [await benchPrewarmConnect(50, 0), await benchPrewarmConnect(30, 150)]),
    row('MySQL', 'myconnect -R', [
      await benchPrewarmConnectMysql(50, 0),
      await benchPrewarmConnectMysql(30, 150),
    ]),
  ];
}

if (require.main === module) {
  const [t, d] = process.argv.slice(2, 4).map(Number);
  const run = process.argv[4] === 'mysql' ? benchPrewarmConnectMysql : benchPrewarmConnect;
  run(t || 50, d || 0).then(
    (r) => {
      console.log(JSON.stringify(r));
      process.exit(0);
    },
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}

/**
 * New connections per second: spaced so that a client finds a ready session (the case prewarm is
 * for: per-request connects and churning pools), about half what two refills in flight sustain
 * when a login takes `verifierDelayMs` plus ~50 ms (the refills' TLS and the in-process token
 * verifier share this process's CPU with the hand-outs, so spacing keeps them apart).
 */
export function connectRate(verifierDelayMs: number): number {
  return Math.max(1, Math.min(10, Math.floor(1000 / (2 * verifierDelayMs + 100))));
}
