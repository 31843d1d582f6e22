/**
 * PostgreSQL side of the benchmark: the RDS-like upstream, pgbench and psql COPY runs, parsing.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { createCA, issueCert, type Pem } from '../src/net/certs';
import { startRdsLikePostgres, type RdsLikePg } from '../test/harness/pg';
import { mustRun, progress, runProgram, sleep } from './util';

export const BENCH_USER = 'bench';
export const BENCH_DB = 'bench';
export const IAM_USER = 'alice';
/**
 * The Go relay's user: cleartext `password` over TLS. The client logs in through the relay,
 * which does no login of its own, and libpq refuses SCRAM when the server offers
 * SCRAM-SHA-256-PLUS on a connection that is TLS only on the far side.
 */
export const RELAY_USER = 'bench_relay';

export interface PgUpstream {
  db: RdsLikePg;
  /** Endpoint name on the certificate (the proxy's upstream.host). */
  host: string;
  port: number;
  /** The bench CA: it signed the server certificate (endpoint name + IP 127.0.0.1). */
  ca: Pem;
  caFile: string;
  password: string;
}

/**
 * Starts the RDS-like PostgreSQL 15 with a SCRAM password user `bench` (over hostssl) and the
 * IAM user `alice` (PAM + the token verifier in this process). Then re-issues the server
 * certificate from a bench CA with an extra IP SAN 127.0.0.1: PgBouncer verifies the address it
 * dials (it has no separate host name), the proxy and psql verify the endpoint name. Adds the
 * Go relay's user RELAY_USER (same password).
 */
export async function startPgUpstream(dir: string): Promise<PgUpstream> {
  const password = `bench-${Math.random().toString(36).slice(2)}`;
  const db = await startRdsLikePostgres({ users: [IAM_USER], passwordUsers: { [BENCH_USER]: password } });
  const ca = createCA('rds-iam-proxy bench CA');
  const leaf = issueCert(ca, { commonName: db.host, dnsNames: [db.host], ipAddresses: ['127.0.0.1'] });
  const serverDir = path.dirname(db.dataDir);
  // Same paths as postgresql.conf names; writing in place keeps owner (postgres) and modes.
  await fs.writeFile(path.join(serverDir, 'server.crt'), leaf.cert);
  await fs.writeFile(path.join(serverDir, 'server.key'), leaf.key);
  const caFile = path.join(dir, 'bench-ca.pem');
  await fs.writeFile(caFile, ca.cert, { mode: 0o644 });
  const hba = path.join(db.dataDir, 'pg_hba.conf');
  await fs.writeFile(
    hba,
    `hostssl all ${RELAY_USER} 127.0.0.1/32 password\n${await fs.readFile(hba, 'utf8')}`,
  );
  await db.psqlAdmin(`CREATE ROLE ${RELAY_USER} LOGIN PASSWORD '${password}';\nSELECT pg_reload_conf();`);
  const up: PgUpstream = { db, host: db.host, port: db.port, ca, caFile, password };
  // The reload is asynchronous: wait until a verify-full login against the new CA works.
  for (let i = 0; ; i++) {
    const r = await runProgram('psql', ['-X', '-At', '-d', directConn(up), '-c', 'select 1'], {
      env: { PGPASSWORD: password },
    });
    if (r.code === 0) break;
    if (i > 50) throw new Error(`upstream not reachable with the bench CA: ${r.stderr}`);
    await sleep(100);
  }
  return up;
}

/**
 * libpq connection string for the direct path: TLS verify-full (like the proxy and PgBouncer do),
 * to `port` (default the server's; the far-database relay's for the far leg).
 */
export function directConn(up: PgUpstream, user = BENCH_USER, port = up.port): string {
  return `host=${up.host} hostaddr=127.0.0.1 port=${port} user=${user} dbname=${BENCH_DB} sslmode=verify-full sslrootcert=${up.caFile}`;
}

/** libpq connection string for a plaintext local hop (proxy, PgBouncer, Go relay). */
export function localConn(port: number, user = BENCH_USER, dbname = BENCH_DB): string {
  return `host=127.0.0.1 port=${port} user=${user} dbname=${dbname} sslmode=disable`;
}

/** pgbench -i -s `scale` through the direct path. */
export async function initPgbench(up: PgUpstream, scale: number): Promise<void> {
  await mustRun('pgbench', ['-i', '-q', '-s', String(scale), directConn(up)], {
    env: { PGPASSWORD: up.password },
    timeoutMs: 300_000,
  });
  // The IAM user reads the same tables in the connect test.
  await up.db.psqlAdmin(
    `GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${IAM_USER}, ${RELAY_USER};`,
    BENCH_DB,
  );
}

export interface PgbenchResult {
  tps: number;
  latencyMs: number;
  /** Average connection time, ms (only with -C). */
  connMs: number;
  transactions: number;
}

/** Runs pgbench with `args` against `conn` and parses its summary; throws on errors or failed transactions. */
export async function pgbench(
  conn: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<PgbenchResult> {
  const r = await runProgram('pgbench', [...args, conn], { env, timeoutMs: 120_000 });
  const out = r.stdout + r.stderr;
  const num = (re: RegExp): number => {
    const m = re.exec(out);
    return m ? Number(m[1]) : NaN;
  };
  const failed = num(/number of failed transactions: (\d+)/);
  if (r.code !== 0 || failed > 0) {
    throw new Error(
      `pgbench ${args.join(' ')} failed (${r.signal ?? `exit ${String(r.code)}`} after ${Math.round(r.ms)} ms):\n${out.slice(-2000)}`,
    );
  }
  return {
    tps: num(/^tps = ([\d.]+)/m),
    latencyMs: num(/latency average = ([\d.]+) ms/),
    connMs: num(/average connection time = ([\d.]+) ms/),
    transactions: num(/number of transactions actually processed: (\d+)/),
  };
}

/** The query for a COPY of about `mb` MB (1,000-byte rows). */
export function copyQuery(mb: number): string {
  const rows = Math.round((mb * 1_000_000) / 1005);
  return `\\copy (select repeat('x',1000) from generate_series(1,${rows})) to '/dev/null'`;
}

/** Runs `\copy ... to '/dev/null'` of about `mb` MB with psql; resolves with the wall time, ms. */
export async function copyOut(conn: string, mb: number, env: NodeJS.ProcessEnv = {}): Promise<number> {
  const r = await runProgram('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', conn, '-c', copyQuery(mb)], {
    env,
    timeoutMs: 300_000,
  });
  if (r.code !== 0) throw new Error(`psql COPY failed: ${r.stderr.slice(-2000)}`);
  return r.ms;
}

/** Logs and returns pgbench's result. */
export async function pgbenchLogged(
  label: string,
  conn: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<PgbenchResult> {
  const r = await pgbench(conn, args, env);
  progress(
    `  ${label.padEnd(24)} tps ${r.tps.toFixed(1)}  latency ${r.latencyMs.toFixed(3)} ms` +
      (Number.isFinite(r.connMs) ? `  connect ${r.connMs.toFixed(3)} ms` : ''),
  );
  return r;
}
