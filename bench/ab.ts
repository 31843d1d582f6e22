/**
 * A/B of the per-pod costs between builds or node flags, interleaved, without the rest of the
 * bench (no PostgreSQL, no PgBouncer): exec to listening and the CPU it took, idle RSS, and
 * optionally RSS per idle connection (against bench/fakepg.ts, held by bench/holder.ts).
 *
 *   node dist/bench/ab.js [--rounds 5] [--conns 1000] [--node24] VARIANT...
 *   VARIANT = label=path/to/cli.js[,node-flag|NAME=value...]   e.g.  main=/tmp/main/dist/src/cli.js
 *     lazy=dist/src/cli.js,--max-semi-space-size=1   cc=dist/src/cli.js,NODE_COMPILE_CACHE=/tmp/cc
 *
 * Each proxy has one Postgres listener with `client.tls: auto` and `localTls.dir` (the CA is made
 * on the first start of each variant and runtime, then reused: the "repeated" start of run.ts).
 * CPU is the process's utime + stime at the `listening` line (10 ms ticks), the reading that
 * survives a busy machine; wall time is reported beside it.
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createCA } from '../src/net/certs';
import { FAKE_HOST, measureIdleConnections, settledRss, startFakeUpstream } from './memory';
import { ensureNode24 } from './node24';
import { startProxyProcess, type ListenerSpec } from './proxy';
import {
  cleanupAll,
  cpuSeconds,
  fmt,
  installSignalHandlers,
  median,
  progress,
  renderTable,
  sleep,
} from './util';

interface Variant {
  label: string;
  cli: string;
  flags: string[];
  env: Record<string, string>;
}

function parseArgs(argv: string[]): { rounds: number; conns: number; node24: boolean; variants: Variant[] } {
  let rounds = 5;
  let conns = 0;
  let node24 = false;
  const variants: Variant[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--rounds') rounds = Number(argv[++i]);
    else if (a === '--conns') conns = Number(argv[++i]);
    else if (a === '--node24') node24 = true;
    else {
      const eq = a.indexOf('=');
      if (eq < 1) throw new Error(`expected label=cli.js[,flags], got ${a}`);
      const [cli = '', ...rest] = a.slice(eq + 1).split(',');
      const flags = rest.filter((f) => f.startsWith('-'));
      const env = Object.fromEntries(
        rest
          .filter((f) => !f.startsWith('-'))
          .map((f) => [f.slice(0, f.indexOf('=')), f.slice(f.indexOf('=') + 1)]),
      );
      variants.push({ label: a.slice(0, eq), cli: path.resolve(cli), flags, env });
    }
  }
  if (variants.length === 0) throw new Error('no variants given');
  return { rounds, conns, node24, variants };
}

async function main(): Promise<void> {
  installSignalHandlers();
  const o = parseArgs(process.argv.slice(2));
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'rds-iam-proxy-ab-'));
  const ca = createCA('bench ab CA');
  const caFile = path.join(dir, 'ca.pem');
  await fs.writeFile(caFile, ca.cert);
  const fake = await startFakeUpstream(dir, ca, caFile);
  const runtimes = [{ label: 'Node 20', node: process.execPath }];
  if (o.node24) runtimes.push({ label: 'Node 24', node: await ensureNode24() });
  const listener: ListenerSpec = {
    name: 'mem',
    engine: 'postgres',
    upstream: { host: FAKE_HOST, port: fake.port, address: '127.0.0.1', caFile },
    auth: { mode: 'password', passwordEnv: 'BENCH_FAKE_PASSWORD' },
    clientTls: 'auto',
  };
  const env = { BENCH_FAKE_PASSWORD: 'unused-by-the-fake' };
  type Key = string;
  const wall = new Map<Key, number[]>();
  const cpu = new Map<Key, number[]>();
  const rss = new Map<Key, number[]>();
  const push = (m: Map<Key, number[]>, k: Key, v: number): void => {
    m.set(k, [...(m.get(k) ?? []), v]);
  };
  for (let r = 0; r < o.rounds; r++) {
    for (const rt of runtimes)
      for (const v of o.variants) {
        const k = `${rt.label} ${v.label}`;
        const sub = path.join(dir, k.replace(/\W/g, '_'));
        await fs.mkdir(sub, { recursive: true });
        const p = await startProxyProcess({
          name: 'ab',
          dir: sub,
          listeners: [listener],
          env: { ...env, ...v.env },
          node: rt.node,
          cli: v.cli,
          nodeFlags: v.flags,
          nofile: 0,
          localTlsDir: sub,
        });
        const cpuAtListening = await cpuSeconds(p.pid);
        await sleep(1000);
        const idle = await settledRss(p.pid);
        await p.stop();
        if (r === 0) continue; // the first start of each makes the CA; the rest reuse it
        push(wall, k, p.startMs);
        push(cpu, k, cpuAtListening * 1000);
        push(rss, k, idle / 1024);
        progress(
          `${k}: listening after ${fmt(p.startMs, 0)} ms, CPU ${fmt(cpuAtListening * 1000, 0)} ms, idle RSS ${fmt(idle / 1024, 1)} MiB`,
        );
      }
  }
  const perConn = new Map<Key, string>();
  if (o.conns > 0)
    for (const rt of runtimes)
      for (const v of o.variants) {
        const k = `${rt.label} ${v.label}`;
        const res = await measureIdleConnections({
          dir,
          name: `conns-${k.replace(/\W/g, '_')}`,
          listener: { upstream: listener.upstream, auth: listener.auth, clientTls: 'auto' },
          env: { ...env, ...v.env },
          counts: [o.conns],
          node: rt.node,
          cli: v.cli,
          nodeFlags: v.flags,
          user: 'bench',
          database: 'bench',
        });
        await res.proxy.stop();
        const held = res.heldKiB[o.conns];
        perConn.set(k, held !== undefined ? fmt((held - res.baseKiB) / o.conns, 1) : (res.error ?? '-'));
      }
  const rows = [...wall.keys()].map((k) => [
    k,
    fmt(median(wall.get(k) ?? []), 0),
    fmt(median(cpu.get(k) ?? []), 0),
    fmt(median(rss.get(k) ?? []), 1),
    perConn.get(k) ?? '-',
    (cpu.get(k) ?? []).map((x) => fmt(x, 0)).join(' '),
  ]);
  process.stdout.write(
    `medians of ${o.rounds - 1} starts each (after one that makes the CA), interleaved\n` +
      renderTable(
        [
          'variant',
          'exec to listening, ms',
          'CPU to listening, ms',
          'idle RSS, MiB',
          `KiB per idle conn (${o.conns})`,
          'CPU per start',
        ],
        rows,
      ) +
      '\n',
  );
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanupAll());
