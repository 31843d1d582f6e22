/**
 * Memory: the proxy's RSS idle and with 1,000 / 10,000 idle logged-in connections held, against a
 * minimal PostgreSQL-speaking TLS upstream (fakepg.ts) so that 10,000 upstream sessions cost
 * little; the client side is holder.ts. Both run as separate processes under `ulimit -n`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { issueCert, type Pem } from '../src/net/certs';
import { startProxyProcess, type ListenerSpec, type ProxyProcess } from './proxy';
import {
  freePort,
  onCleanup,
  progress,
  rssKiB,
  sleep,
  startDaemon,
  waitForPort,
  withNofile,
  type Daemon,
} from './util';

const NOFILE = 65536;
export const FAKE_HOST = 'fakepg.cluster-bench.us-east-1.rds.amazonaws.com';

/** Runs `script` (a file in dist/bench) with node under a raised open-files limit. */
function nodeScript(script: string, args: string[], logFile: string): Daemon {
  return startDaemon(
    'bash',
    ['-c', withNofile(NOFILE), process.execPath, path.join(__dirname, script), ...args],
    logFile,
  );
}

export interface FakeUpstream extends Daemon {
  port: number;
  host: string;
  caFile: string;
}

/** Starts fakepg.js with a certificate for FAKE_HOST (and 127.0.0.1) from `ca`. */
export async function startFakeUpstream(dir: string, ca: Pem, caFile: string): Promise<FakeUpstream> {
  const leaf = issueCert(ca, { commonName: FAKE_HOST, dnsNames: [FAKE_HOST], ipAddresses: ['127.0.0.1'] });
  const cert = path.join(dir, 'fakepg.crt');
  const key = path.join(dir, 'fakepg.key');
  await fs.writeFile(cert, leaf.cert);
  await fs.writeFile(key, leaf.key, { mode: 0o600 });
  const port = await freePort();
  const d = nodeScript('fakepg.js', [String(port), cert, key], path.join(dir, 'fakepg.log'));
  onCleanup(() => d.stop(0));
  await waitForPort(port, d.exited);
  return { ...d, port, host: FAKE_HOST, caFile };
}

/** The holder process: opens and holds idle connections through a proxy port. */
export class Holder {
  private readonly lines: string[] = [];
  private waiter: ((l: string) => void) | undefined;
  private constructor(
    private readonly child: ChildProcess,
    readonly daemon: Daemon,
  ) {
    const rl = readline.createInterface({ input: child.stdout as NodeJS.ReadableStream });
    rl.on('line', (l) => {
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w(l);
      } else this.lines.push(l);
    });
  }

  static async start(dir: string, port: number, user: string, database: string): Promise<Holder> {
    const child = spawn(
      'bash',
      [
        '-c',
        withNofile(NOFILE),
        process.execPath,
        path.join(__dirname, 'holder.js'),
        String(port),
        user,
        database,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    const daemon: Daemon = {
      pid: child.pid ?? 0,
      child,
      logFile: path.join(dir, 'holder.log'),
      exited: new Promise<never>((_, reject) => child.once('exit', () => reject(new Error('holder exited')))),
      stop: async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const gone = new Promise<void>((r) => child.once('exit', () => r()));
        child.stdin?.end();
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await gone;
        clearTimeout(t);
      },
    };
    daemon.exited.catch(() => undefined);
    onCleanup(() => daemon.stop());
    return new Holder(child, daemon);
  }

  private next(timeoutMs: number): Promise<string> {
    const queued = this.lines.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`holder: no answer within ${timeoutMs} ms`)), timeoutMs);
      this.waiter = (l) => {
        clearTimeout(t);
        resolve(l);
      };
    });
  }

  /** Holds `n` connections in total; resolves with the milliseconds it took. */
  async hold(n: number, timeoutMs = 180_000): Promise<number> {
    this.child.stdin?.write(`hold ${n}\n`);
    const answer = await this.next(timeoutMs);
    const m = /^held (\d+) (\d+)$/.exec(answer);
    if (!m || Number(m[1]) !== n) throw new Error(`holder: ${answer}`);
    return Number(m[2]);
  }

  async closeAll(): Promise<void> {
    this.child.stdin?.write('close\n');
    await this.next(30_000);
  }

  stop(): Promise<void> {
    return this.daemon.stop();
  }
}

export interface IdleMemoryResult {
  /** RSS right after start, KiB. */
  idleKiB: number;
  /** RSS after a warm-up (connections opened and closed), before holding, KiB. */
  baseKiB: number;
  /** RSS with each count held, KiB (NaN when it could not be reached). */
  heldKiB: Record<number, number>;
  /** Milliseconds to open each step. */
  openMs: Record<number, number>;
  /** The largest count held (all logged in). */
  maxHeld: number;
  error?: string;
  /** What happened when asked for more than the process can hold (probeBeyond). */
  beyond?: string;
}

/** "error after N held: ErrorResponse: ... C08001 ... EMFILE ..." -> "after N: 08001 EMFILE". */
function summarizeRefusal(err: string): string {
  const held = /after (\d+) held/.exec(err)?.[1];
  const sqlState = / C([0-9A-Z]{5}) /.exec(err)?.[1];
  const errno = /\b(E[A-Z]{4,})\b/.exec(err)?.[1];
  if (!sqlState && !errno) return err.replace(/^holder: /, '').slice(0, 120);
  return `new logins refused after ${held ?? '?'} with ${[sqlState ? `SQLSTATE ${sqlState}` : '', errno ?? ''].filter(Boolean).join(' ')}`;
}

/** Waits for RSS to settle (two reads 500 ms apart within 1%), up to 3 s; returns the last read. */
export async function settledRss(pid: number): Promise<number> {
  let prev = await rssKiB(pid);
  for (let i = 0; i < 6; i++) {
    await sleep(500);
    const cur = await rssKiB(pid);
    if (Math.abs(cur - prev) <= prev * 0.01) return cur;
    prev = cur;
  }
  return prev;
}

/**
 * A fresh proxy process with one listener to `upstream`; measures RSS idle, after a warm-up of
 * `warmup` connections, and with each of `counts` connections held.
 */
export async function measureIdleConnections(o: {
  dir: string;
  name: string;
  listener: Omit<ListenerSpec, 'name' | 'engine'>;
  env: Record<string, string>;
  counts: number[];
  warmup?: number;
  /** After the last count, try to hold this many and report how it fails (the fd limit). */
  probeBeyond?: number;
  /** The CLI to run (default: this checkout's build). */
  cli?: string;
  /** The node binary (default: the one running the bench). */
  node?: string;
  /** Node flags for the proxy (default: as startProxyProcess). */
  nodeFlags?: string[];
  user: string;
  database: string;
}): Promise<IdleMemoryResult & { proxy: ProxyProcess }> {
  const proxy = await startProxyProcess({
    name: o.name,
    dir: o.dir,
    listeners: [{ name: 'mem', engine: 'postgres', ...o.listener }],
    env: o.env,
    nofile: NOFILE,
    ...(o.cli ? { cli: o.cli } : {}),
    ...(o.node ? { node: o.node } : {}),
    ...(o.nodeFlags ? { nodeFlags: o.nodeFlags } : {}),
  });
  onCleanup(() => proxy.stop());
  const port = proxy.ports['mem'] ?? 0;
  await sleep(1000);
  const idleKiB = await settledRss(proxy.pid);
  const holder = await Holder.start(o.dir, port, o.user, o.database);
  const result: IdleMemoryResult = { idleKiB, baseKiB: NaN, heldKiB: {}, openMs: {}, maxHeld: 0 };
  try {
    await holder.hold(o.warmup ?? 200);
    await holder.closeAll();
    await sleep(500);
    result.baseKiB = await settledRss(proxy.pid);
    for (const n of o.counts) {
      result.openMs[n] = await holder.hold(n);
      result.maxHeld = n;
      result.heldKiB[n] = await settledRss(proxy.pid);
      progress(
        `  ${o.name}: ${n} idle connections held (opened in ${((result.openMs[n] ?? 0) / 1000).toFixed(1)} s), ` +
          `proxy RSS ${((result.heldKiB[n] ?? 0) / 1024).toFixed(1)} MiB`,
      );
    }
    if (o.probeBeyond !== undefined) {
      const err = await holder.hold(o.probeBeyond).then(
        () => undefined,
        (e: Error) => e.message,
      );
      const alive = Number.isFinite(await rssKiB(proxy.pid));
      result.beyond = `${err ? summarizeRefusal(err) : 'all held'}; proxy ${alive ? 'still running' : 'DIED'}`;
      progress(`  ${o.name}: asking for ${o.probeBeyond}: ${result.beyond}`);
    }
  } catch (err) {
    result.error = (err as Error).message;
    progress(`  ${o.name}: ${result.error}`);
  } finally {
    await holder.stop();
  }
  return { ...result, proxy };
}
