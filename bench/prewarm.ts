/**
 * Connect time with and without prewarm (issue 14), IAM path. Postgres: `pgbench -n -C` (a new
 * connection per transaction) running `select 1`, directly to the RDS-like server with a token
 * as password, and through the proxy without and with `prewarm`. The proxy runs as users run
 * it: its own process, the shipped single-file build with the image's node flags, on a given
 * Node runtime (bench/proxy.ts). The numbers compare the three paths on the same machine, not
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
 * Run alone: `npm run build && npm run bundle -- --outfile=bench/.cache/cli.js && node
 * dist/bench/prewarm.js [transactions] [verifierDelayMs] [postgres|mysql] [node binary]`.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRdsLikeMariaDb } from '../test/harness/mariadb';
import { startRdsLikePostgres } from '../test/harness/pg';
import { signToken, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../test/harness/sign';
import { buildTool } from './far';
import { type ListenerSpec, startProxyProcess } from './proxy';
import { runProgram } from './util';

/** A Node runtime the proxy process runs on. */
export interface PrewarmRuntime {
  label: string;
  node: string;
}

/** Mean connection time per path, milliseconds, as pgbench reports it. */
export interface PrewarmConnectResult {
  runtime: string;
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

/** The RDS-like database of either engine, as the paths below need it. */
interface BenchDb {
  host: string;
  port: number;
  address: string;
  caFile: string;
  region: string;
  verifier: { delayMs: number };
  stop(): Promise<void>;
}

/** Where one run of connects goes: straight to the database with a token, or to a local port. */
type ConnectTo = { direct: true; token: string } | { direct: false; port: number };

/**
 * The three paths for one engine: a proxy process on `runtime` with a `cold` listener and a
 * `warm` one (prewarm, 4 ready sessions, enough that refills keep up with the spaced connects)
 * in front of `db`, logging at warn; once the pool is full, 8 clients teach the key the client's
 * startup and the pool refills; then `transactions` connects each go direct, through `cold` and
 * through `warm`. `connect` runs the engine's client and resolves with its mean connect time, ms.
 */
async function measurePaths(
  engine: 'postgres' | 'mysql',
  db: BenchDb,
  runtime: PrewarmRuntime,
  transactions: number,
  verifierDelayMs: number,
  connect: (to: ConnectTo, n: number, rate: number) => Promise<number>,
): Promise<PrewarmConnectResult> {
  db.verifier.delayMs = verifierDelayMs;
  const upstream = { host: db.host, port: db.port, address: db.address, caFile: db.caFile };
  const listener = (name: string): ListenerSpec => ({
    name,
    engine,
    upstream,
    auth: { mode: 'iam', region: db.region },
  });
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-prewarm-proxy-'));
  const proxy = await startProxyProcess({
    name: `prewarm-${engine}`,
    dir,
    logLevel: 'warn',
    node: runtime.node,
    listeners: [
      listener('cold'),
      { ...listener('warm'), prewarm: { size: 4, keys: [{ user: 'alice', database: 'appdb' }] } },
    ],
    env: { AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY },
  });
  try {
    const local = (name: string): ConnectTo => {
      const port = proxy.ports[name];
      if (port === undefined) throw new Error(`no listener ${name}`);
      return { direct: false, port };
    };
    const token = signToken({
      host: db.host,
      port: db.port,
      user: 'alice',
      region: db.region,
      accessKeyId: TEST_ACCESS_KEY_ID,
      secretAccessKey: TEST_SECRET_ACCESS_KEY,
    });
    const fill = (): Promise<void> => new Promise((r) => setTimeout(r, 1000 + 4 * verifierDelayMs));
    const rate = connectRate(verifierDelayMs);
    await fill();
    // Steady state: the key learns the client's startup (pgbench's application_name, the C
    // client's capabilities), so hand-outs need no set_config, and the pool fills again.
    await connect(local('warm'), 8, rate);
    await fill();
    const directMs = await connect({ direct: true, token }, transactions, rate);
    const proxyMs = await connect(local('cold'), transactions, rate);
    const prewarmMs = await connect(local('warm'), transactions, rate);
    return {
      runtime: runtime.label,
      transactions,
      verifierDelayMs,
      directMs,
      proxyMs,
      prewarmMs,
      ratio: Math.round((prewarmMs / directMs) * 1000) / 1000,
    };
  } finally {
    await proxy.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** Postgres: `pgbench -n -C -R` running `select 1`; `transactions` new connections per path. */
export async function benchPrewarmConnect(
  runtime: PrewarmRuntime,
  transactions = 50,
  verifierDelayMs = 0,
): Promise<PrewarmConnectResult> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-prewarm-'));
  const script = path.join(dir, 'select1.sql');
  await fs.writeFile(script, 'select 1;\n');
  const db = await startRdsLikePostgres({ users: ['alice'] });
  try {
    return await measurePaths('postgres', db, runtime, transactions, verifierDelayMs, (to, n, rate) =>
      to.direct
        ? pgbenchConnectMs(
            `host=127.0.0.1 port=${db.port} user=alice dbname=appdb sslmode=require`,
            n,
            { PGPASSWORD: to.token },
            script,
            rate,
          )
        : pgbenchConnectMs(
            `host=127.0.0.1 port=${to.port} user=alice dbname=appdb sslmode=disable`,
            n,
            {},
            script,
            rate,
          ),
    );
  } finally {
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

/** MySQL: the same three paths with bench/myconnect (mysqlConnectMs). */
export async function benchPrewarmConnectMysql(
  runtime: PrewarmRuntime,
  transactions = 50,
  verifierDelayMs = 0,
): Promise<PrewarmConnectResult> {
  const db = await startRdsLikeMariaDb({ users: ['alice'] });
  const login = { user: 'alice', database: 'appdb' };
  try {
    return await measurePaths('mysql', db, runtime, transactions, verifierDelayMs, (to, n, rate) =>
      mysqlConnectMs(
        to.direct
          ? { ...login, address: db.address, port: db.port, password: to.token, caFile: db.caFile }
          : { ...login, address: '127.0.0.1', port: to.port, password: '' },
        n,
        rate,
      ),
    );
  } finally {
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

/**
 * The target per engine and Node runtime (the proxy process's), measured with
 * token-check delays of 0 and 150 ms.
 */
export async function prewarmTargets(runtimes: PrewarmRuntime[]): Promise<PrewarmTarget[]> {
  const row = (engine: string, how: string, runs: PrewarmConnectResult[]): PrewarmTarget => ({
    measure: `connect with prewarm vs direct IAM, ${engine}, proxy on ${runs[0]?.runtime ?? '?'} (${how}, ${runs.map((r) => connectRate(r.verifierDelayMs)).join('/')} per s)`,
    target: '<= 0.2x',
    result: runs
      .map(
        (r) =>
          `check ${r.verifierDelayMs} ms: ${r.prewarmMs.toFixed(2)} vs ${r.directMs.toFixed(1)} ms = ${r.ratio.toFixed(2)}x`,
      )
      .join('; '),
    ok: runs.every((r) => r.ratio <= 0.2),
  });
  const rows: PrewarmTarget[] = [];
  for (const rt of runtimes)
    rows.push(
      row('Postgres', 'pgbench -C -R', [
        await benchPrewarmConnect(rt, 50, 0),
        await benchPrewarmConnect(rt, 30, 150),
      ]),
      row('MySQL', 'myconnect -R', [
        await benchPrewarmConnectMysql(rt, 50, 0),
        await benchPrewarmConnectMysql(rt, 30, 150),
      ]),
    );
  return rows;
}

if (require.main === module) {
  const [t, d] = process.argv.slice(2, 4).map(Number);
  const run = process.argv[4] === 'mysql' ? benchPrewarmConnectMysql : benchPrewarmConnect;
  const node = process.argv[5] ?? process.execPath;
  run({ label: node, node }, t || 50, d || 0).then(
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
