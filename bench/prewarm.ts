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
 * MySQL: the same three paths with mysql2 in a child process (mysqlConnectMs).
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
import { REPO_ROOT, runProgram } from './util';

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

/**
 * The MySQL equivalent of `pgbench -C -R`: a separate Node process (mysql2) opens `n` connections
 * `1000 / rate` ms apart, each timed from createConnection to logged in, runs `select 1` and
 * closes it. Options are mysql2's, plus `token` (sent with mysql_clear_password) and `address`
 * (dialled, while `host` names the server for TLS). Resolves with the mean, milliseconds.
 */
async function mysqlConnectMs(o: Record<string, unknown>, n: number, rate: number): Promise<number> {
  const script = `
    const net = require('node:net');
    const mysql = require('mysql2/promise');
    const { token, address, ...o } = JSON.parse(process.env.BENCH_MYSQL);
    if (token) o.authPlugins = { mysql_clear_password: () => () => Buffer.from(token + '\\0') };
    if (address) o.stream = () => net.connect(o.port, address);
    (async () => {
      let sum = 0;
      for (let i = 0; i < ${n}; i++) {
        const next = Date.now() + ${Math.round(1000 / rate)};
        const t0 = performance.now();
        const c = await mysql.createConnection(o);
        sum += performance.now() - t0;
        await c.query('select 1');
        await c.end();
        await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
      }
      console.log(JSON.stringify({ meanMs: sum / ${n} }));
    })().catch((e) => { console.error(e); process.exit(1); });`;
  const r = await runProgram(process.execPath, ['-e', script], {
    env: { BENCH_MYSQL: JSON.stringify(o), NODE_PATH: path.join(REPO_ROOT, 'node_modules') },
  });
  if (r.code !== 0) throw new Error(`mysql connect bench failed: ${r.stderr || r.stdout}`);
  return Math.round((JSON.parse(r.stdout) as { meanMs: number }).meanMs * 1000) / 1000;
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
    const common = { user: 'alice', database: 'appdb' };
    const direct = {
      ...common,
      host: db.host,
      port: db.port,
      address: db.address,
      ssl: { ca: db.caPem },
      token,
    };
    const local = (p: number): Record<string, unknown> => ({ ...common, host: '127.0.0.1', port: p });
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
    row('MySQL', 'mysql2, spaced', [
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
