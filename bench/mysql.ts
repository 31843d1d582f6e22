/**
 * MySQL side of the benchmark: an RDS-like MariaDB 10.11, sysbench oltp_point_select direct
 * (TLS) and through the proxy's MySQL engine (plaintext local hop, verify-full TLS upstream).
 */
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { createCA, issueCert } from '../src/net/certs';
import { startRdsLikeMariaDb, type RdsLikeMariaDb } from '../test/harness/mariadb';
import { startProxyProcess, type ProxyProcess } from './proxy';
import { mustRun, onCleanup, progress, REPO_ROOT, runProgram } from './util';

export const MY_USER = 'bench';
export const MY_DB = 'appdb';
export const MY_TABLE_SIZE = 100_000;

export interface MysqlSetup {
  db: RdsLikeMariaDb;
  password: string;
  proxy: ProxyProcess;
  /** sysbench's working directory: it loads cacert.pem, client-cert.pem and client-key.pem from there. */
  sslDir: string;
}

/** Why the MySQL row cannot run, or undefined when the engine is there (the source file check). */
export function mysqlEngineMissing(): string | undefined {
  if (!existsSync(path.join(REPO_ROOT, 'src', 'engines', 'mysql', 'index.ts')))
    return 'src/engines/mysql/index.ts missing';
  if (!existsSync(path.join(REPO_ROOT, 'dist', 'src', 'engines', 'mysql', 'index.js')))
    return 'engine not built';
  return undefined;
}

/**
 * Starts MariaDB and a proxy process with one MySQL listener (auth.mode password), checks a
 * mysql2 query through the proxy, and loads the sysbench table through the direct path.
 * Throws with the reason when any of it fails (the caller prints "engine not available").
 */
export async function startMysql(dir: string): Promise<MysqlSetup> {
  const password = `bench-${Math.random().toString(36).slice(2)}`;
  const db = await startRdsLikeMariaDb({ users: ['alice'], passwordUsers: { [MY_USER]: password } });
  onCleanup(() => db.stop());
  const sslDir = await reissueCertificates(db, dir);
  const proxy = await startProxyProcess({
    name: 'proxy-mysql',
    dir,
    listeners: [
      {
        name: 'my',
        engine: 'mysql',
        upstream: { host: db.host, port: db.port, address: db.address, caFile: db.caFile },
        auth: { mode: 'password', passwordEnv: 'BENCH_MYSQL_PASSWORD' },
      },
    ],
    env: { BENCH_MYSQL_PASSWORD: password },
  });
  onCleanup(() => proxy.stop());
  const port = proxy.ports['my'] ?? 0;
  // A quick query through the proxy with mysql2 decides whether the engine works.
  const mysql = await import('mysql2/promise');
  const conn = await mysql.createConnection({ host: '127.0.0.1', port, user: MY_USER, database: MY_DB });
  try {
    const [rows] = await conn.query('select 1 + 1 as two');
    if ((rows as { two: number }[])[0]?.two !== 2) throw new Error('unexpected answer through the proxy');
  } finally {
    await conn.end();
  }
  progress('MySQL: mysql2 query through the proxy works; loading the sysbench table');
  const setup = { db, password, proxy, sslDir };
  await mustRun('sysbench', [...sysbenchArgs(directTarget(setup)), 'prepare'], {
    timeoutMs: 300_000,
    cwd: sslDir,
  });
  return setup;
}

/**
 * sysbench 1.0's --mysql-ssl=on always presents client-cert.pem / client-key.pem from its working
 * directory, which the server checks against its CA, so the bench needs a CA it holds the key
 * of: it re-issues the server certificate (endpoint name + 127.0.0.1) from a bench CA, writes
 * that CA over the harness CA file (the proxy verifies against it), and reloads with FLUSH SSL.
 * Returns the directory with sysbench's three files.
 */
async function reissueCertificates(db: RdsLikeMariaDb, dir: string): Promise<string> {
  const ca = createCA('rds-iam-proxy bench MySQL CA');
  const server = issueCert(ca, { commonName: db.host, dnsNames: [db.host], ipAddresses: ['127.0.0.1'] });
  const client = issueCert(ca, { commonName: MY_USER });
  const serverDir = path.dirname(db.dataDir);
  // Same paths as the server's config; writing in place keeps owner (mysql) and modes.
  await fs.writeFile(path.join(serverDir, 'server.crt'), server.cert);
  await fs.writeFile(path.join(serverDir, 'server.key'), server.key);
  await fs.writeFile(db.caFile, ca.cert);
  await db.sqlAdmin('FLUSH SSL;');
  const sslDir = path.join(dir, 'sysbench');
  await fs.mkdir(sslDir, { recursive: true });
  await fs.writeFile(path.join(sslDir, 'cacert.pem'), ca.cert);
  await fs.writeFile(path.join(sslDir, 'client-cert.pem'), client.cert);
  await fs.writeFile(path.join(sslDir, 'client-key.pem'), client.key, { mode: 0o600 });
  return sslDir;
}

export interface SysbenchTarget {
  /** Working directory (sysbench's TLS files). */
  cwd: string;
  host: string;
  port: number;
  password: string;
  ssl: boolean;
}

export const directTarget = (s: MysqlSetup): SysbenchTarget => ({
  cwd: s.sslDir,
  host: '127.0.0.1',
  port: s.db.port,
  password: s.password,
  ssl: true,
});
export const proxyTarget = (s: MysqlSetup): SysbenchTarget => ({
  cwd: s.sslDir,
  host: '127.0.0.1',
  port: s.proxy.ports['my'] ?? 0,
  password: '',
  ssl: false,
});

function sysbenchArgs(t: SysbenchTarget, extra: string[] = []): string[] {
  return [
    'oltp_point_select',
    '--db-driver=mysql',
    `--mysql-host=${t.host}`,
    `--mysql-port=${t.port}`,
    `--mysql-user=${MY_USER}`,
    ...(t.password ? [`--mysql-password=${t.password}`] : []),
    `--mysql-db=${MY_DB}`,
    `--mysql-ssl=${t.ssl ? 'on' : 'off'}`,
    '--tables=1',
    `--table-size=${MY_TABLE_SIZE}`,
    ...extra,
  ];
}

export interface SysbenchResult {
  tps: number;
  latencyMs: number;
}

/** sysbench oltp_point_select run with `threads` for `seconds`. */
export async function sysbenchRun(
  t: SysbenchTarget,
  threads: number,
  seconds: number,
): Promise<SysbenchResult> {
  const r = await runProgram(
    'sysbench',
    sysbenchArgs(t, [`--threads=${threads}`, `--time=${seconds}`, '--report-interval=0', 'run']),
    { timeoutMs: (seconds + 60) * 1000, cwd: t.cwd },
  );
  const tps = /transactions:\s+\d+\s+\(([\d.]+) per sec/.exec(r.stdout);
  const lat = /avg:\s+([\d.]+)/.exec(r.stdout);
  const errors = /ignored errors:\s+(\d+)/.exec(r.stdout);
  if (r.code !== 0 || !tps || Number(errors?.[1] ?? 0) > 0) {
    throw new Error(
      `sysbench failed (${r.signal ?? `exit ${String(r.code)}`} after ${Math.round(r.ms)} ms):\n${(r.stdout + r.stderr).slice(-2000)}`,
    );
  }
  return { tps: Number(tps[1]), latencyMs: Number(lat?.[1] ?? NaN) };
}
