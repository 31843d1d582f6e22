/**
 * Small helpers for the benchmark: progress lines, child processes that are always cleaned up,
 * /proc readings (RSS, CPU), statistics. Nothing here blocks the event loop: the RDS-like
 * databases' token verifier runs in this process (see test/harness/verifier.ts).
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

/** The repository root (this file runs from dist/bench). */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');
/**
 * The CLI the proxy processes run: the single-file bundle the package and the image ship, which
 * `npm run bench` builds here (`npm run bundle` with another --outfile); BENCH_PROXY_CLI points at
 * another build (A/B of a change).
 */
export const CLI = process.env['BENCH_PROXY_CLI'] ?? path.join(REPO_ROOT, 'bench', '.cache', 'cli.js');

const t0 = Date.now();

/** A progress line on stderr, stamped with the seconds since start. */
export function progress(msg: string): void {
  process.stderr.write(`[bench ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
}

/** Seconds since the benchmark started. */
export function elapsedSeconds(): number {
  return (Date.now() - t0) / 1000;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Cleanup: every child and every server registers here; run on exit, error, SIGINT and SIGTERM.

type Cleanup = () => Promise<void> | void;
const cleanups: Cleanup[] = [];
const children = new Set<ChildProcess>();
let cleaning: Promise<void> | undefined;

/** Registers `fn` to run at cleanup (last registered runs first). Returns a function that unregisters it. */
export function onCleanup(fn: Cleanup): () => void {
  cleanups.push(fn);
  return () => {
    const i = cleanups.indexOf(fn);
    if (i >= 0) cleanups.splice(i, 1);
  };
}

/** Kills every tracked child (SIGKILL) and runs the registered cleanups. Idempotent. */
export function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    for (const c of children) killHard(c);
    while (cleanups.length > 0) {
      const fn = cleanups.pop();
      try {
        await fn?.();
      } catch (err) {
        progress(`cleanup step failed: ${(err as Error).message}`);
      }
    }
  })();
  return cleaning;
}

function killHard(c: ChildProcess): void {
  if (c.exitCode === null && c.signalCode === null) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}

let signalled = false;
/** True once SIGINT or SIGTERM arrived (failures after that are the cleanup's doing). */
export function interrupted(): boolean {
  return signalled;
}

/** SIGINT / SIGTERM: clean up, then exit 130 / 143. */
export function installSignalHandlers(): void {
  for (const [sig, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    process.once(sig, () => {
      signalled = true;
      progress(`${sig}: stopping servers and child processes`);
      void cleanupAll().finally(() => process.exit(code));
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Child processes.

export interface ProcResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall-clock duration, milliseconds. */
  ms: number;
}

/** Runs a program to completion (tracked for cleanup); never rejects on a non-zero exit. */
export function runProgram(
  cmd: string,
  args: string[],
  o: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number; cwd?: string } = {},
): Promise<ProcResult> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(cmd, args, {
      env: { ...process.env, ...o.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(o.cwd ? { cwd: o.cwd } : {}),
    });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 120_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      children.delete(child);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - started });
    });
    child.stdin?.on('error', () => undefined); // a program that never reads its input
    child.stdin?.end(o.input ?? '');
  });
}

/** Like runProgram, but rejects (with stderr) unless the program exits 0. */
export async function mustRun(
  cmd: string,
  args: string[],
  o: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number; cwd?: string } = {},
): Promise<ProcResult> {
  const r = await runProgram(cmd, args, o);
  if (r.code !== 0) {
    const detail = (r.stderr.trim() || r.stdout.trim()).slice(-3000);
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.signal ?? `exit ${String(r.code)}`}):\n${detail}`);
  }
  return r;
}

/** A long-running child (proxy, PgBouncer, fake upstream) with its output in a log file. */
export interface Daemon {
  pid: number;
  child: ChildProcess;
  logFile: string;
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** Rejects if the process exits; used to fail fast while waiting for it to listen. */
  exited: Promise<never>;
}

/** Spawns a daemon, tracked for cleanup; stdout and stderr go to `logFile`. */
export function startDaemon(cmd: string, args: string[], logFile: string, o: SpawnOptions = {}): Daemon {
  const out = createWriteStream(logFile, { flags: 'a' });
  const child = spawn(cmd, args, { ...o, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.stdout?.pipe(out);
  child.stderr?.pipe(out);
  const exited = new Promise<never>((_, reject) => {
    child.once('exit', (code, signal) => {
      children.delete(child);
      reject(new Error(`${path.basename(cmd)} exited (${signal ?? `code ${String(code)}`}); see ${logFile}`));
    });
    child.once('error', reject);
  });
  exited.catch(() => undefined);
  if (child.pid === undefined) throw new Error(`cannot start ${cmd}`);
  const pid = child.pid;
  const stop = async (graceMs = 3000): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const t = setTimeout(() => killHard(child), graceMs);
    await gone;
    clearTimeout(t);
  };
  return { pid, child, logFile, stop, exited };
}

/** Resolves once `port` on 127.0.0.1 accepts a TCP connection; rejects if `died` rejects first. */
export async function waitForPort(port: number, died: Promise<never>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const once = (): Promise<boolean> =>
    new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
  for (;;) {
    const ok = await Promise.race([once(), died]);
    if (ok) return;
    if (Date.now() > deadline)
      throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

export { freePort } from '../test/harness/util';

/**
 * A `bash -c` script that raises the open-files limit to `n` (or to the hard limit when `n` is
 * above it and the process may not raise it: no CAP_SYS_RESOURCE) and then execs its arguments.
 */
export function withNofile(n: number): string {
  return `ulimit -n ${n} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"`;
}

/** The hard RLIMIT_NOFILE children get (Infinity for unlimited). */
export async function nofileHardLimit(): Promise<number> {
  const r = await runProgram('bash', ['-c', 'ulimit -Hn']);
  const v = r.stdout.trim();
  return v === 'unlimited' ? Infinity : Number(v);
}

/** True when `cmd` is on PATH. */
export async function have(cmd: string): Promise<boolean> {
  const r = await runProgram('sh', ['-c', `command -v ${cmd}`]).catch(() => undefined);
  return r?.code === 0;
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/** Resident set size of `pid` in KiB (VmRSS), or NaN when it is gone. */
export async function rssKiB(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  return m ? Number(m[1]) : NaN;
}

/** User + system CPU time of `pid` so far, seconds (from /proc/PID/stat; 100 ticks per second on Linux). */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  return (utime + stime) / 100;
}

/** Share of all CPUs busy over the next `ms` milliseconds, 0..1 (other work on the machine skews a run). */
export async function machineBusy(ms = 1000): Promise<number> {
  const read = async (): Promise<{ idle: number; total: number }> => {
    const line = (await fs.readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '';
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    return { idle, total: v.reduce((a, b) => a + b, 0) };
  };
  const a = await read();
  await sleep(ms);
  const b = await read();
  return b.total > a.total ? 1 - (b.idle - a.idle) / (b.total - a.total) : NaN;
}

/** Samples a process's RSS every `everyMs` until stop(); reports the peak and the sample count. */
export function sampleRss(
  pid: number,
  everyMs = 50,
): { stop(): Promise<{ peakKiB: number; samples: number }> } {
  let peak = 0;
  let samples = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      const v = await rssKiB(pid);
      if (Number.isFinite(v)) {
        peak = Math.max(peak, v);
        samples++;
      }
      await sleep(everyMs);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      const last = await rssKiB(pid);
      if (Number.isFinite(last)) peak = Math.max(peak, last);
      return { peakKiB: peak, samples };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting.

/** Median of the finite values; NaN when there are none. */
export function median(xs: readonly number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
}

/** Spread of the values as (max - min) / median, for the noise column. */
export function spread(xs: readonly number[]): number {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length < 2) return NaN;
  const m = median(v);
  return (Math.max(...v) - Math.min(...v)) / m;
}

/** Fixed decimals, or '-' for NaN. */
export function fmt(x: number, decimals = 2): string {
  return Number.isFinite(x) ? x.toFixed(decimals) : '-';
}

/** Renders rows as a plain-text table with a header rule. */
export function renderTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
