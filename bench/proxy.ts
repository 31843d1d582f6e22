/**
 * rds-iam-proxy as a separate process (`node dist/src/cli.js run --config <generated yaml>`), so
 * its CPU and RSS are its own, under a raised open-files limit.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { stringify } from 'yaml';
import { CLI, freePort, startDaemon, waitForPort, withNofile, type Daemon } from './util';

/** One listener of the generated config; `listen` is filled in with a free port. */
export interface ListenerSpec {
  name: string;
  engine: 'postgres' | 'mysql';
  upstream: { host: string; port: number; address: string; caFile: string };
  auth: { mode: 'password'; passwordEnv: string } | { mode: 'iam'; region: string };
  /** client.tls: off (default: plaintext local clients) or auto (generated local CA and leaf). */
  clientTls?: 'off' | 'auto';
  /** listeners[].prewarm, as in the config. */
  prewarm?: { size: number; keys: { user: string; database?: string }[] };
}

export interface ProxyProcess extends Daemon {
  /** TCP port of each listener, by name. */
  ports: Record<string, number>;
  configFile: string;
  /** Milliseconds from spawning the process to its last 'listening' log line. */
  startMs: number;
  /** performance.now() just before the process was spawned. */
  spawnedAt: number;
}

/**
 * Node flags of the proxy processes: what the image and the systemd unit set in NODE_OPTIONS
 * (--max-semi-space-size=1), or BENCH_PROXY_NODE_FLAGS (space-separated; empty for none).
 */
const PROXY_NODE_FLAGS = (process.env['BENCH_PROXY_NODE_FLAGS'] ?? '--max-semi-space-size=1')
  .split(' ')
  .filter(Boolean);

/** Environment for the child: no ambient AWS settings, IMDS off, plus `extra`. */
function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('AWS_') || k.startsWith('RDS_IAM_PROXY')) continue;
    env[k] = v;
  }
  return { ...env, AWS_EC2_METADATA_DISABLED: 'true', ...extra };
}

/**
 * Writes `<dir>/<name>.yaml` and starts the proxy with it: client TLS off (plaintext local
 * clients), upstream verify-full against each listener's CA file, logs (JSON, level `logLevel`,
 * default info as shipped) to `<dir>/<name>.log`. Resolves once every listener accepts.
 */
export async function startProxyProcess(o: {
  name: string;
  dir: string;
  listeners: ListenerSpec[];
  env?: Record<string, string>;
  /** Open-files limit for the process (ulimit -n); default 65536; 0 = inherit, exec node directly. */
  nofile?: number;
  logLevel?: string;
  /** Extra node flags, e.g. --max-semi-space-size. */
  nodeFlags?: string[];
  /** The CLI to run (default: this checkout's build, or BENCH_PROXY_CLI). */
  cli?: string;
  /** The node binary (default: the one running the bench). */
  node?: string;
  /** Where `client.tls: auto` writes its CA certificate (default `<dir>/<name>-local-ca.pem`). */
  localCaFile?: string;
  /**
   * `localTls.dir` instead of a CA file: the proxy keeps its CA (key included) there and reuses
   * it on the next start, as it does by default in production.
   */
  localTlsDir?: string;
}): Promise<ProxyProcess> {
  const ports: Record<string, number> = {};
  for (const l of o.listeners) ports[l.name] = await freePort();
  const config = {
    log: { level: o.logLevel ?? 'info', format: 'json' },
    shutdown: { maxDelayMs: 500 },
    localTls: o.localTlsDir
      ? { dir: o.localTlsDir }
      : { caFile: o.localCaFile ?? path.join(o.dir, `${o.name}-local-ca.pem`) },
    listeners: o.listeners.map((l) => ({
      name: l.name,
      engine: l.engine,
      listen: `127.0.0.1:${ports[l.name]}`,
      upstream: {
        host: l.upstream.host,
        port: l.upstream.port,
        address: l.upstream.address,
        tls: { ca: l.upstream.caFile },
      },
      auth:
        l.auth.mode === 'password'
          ? { mode: 'password', password: { env: l.auth.passwordEnv } }
          : { mode: 'iam', region: l.auth.region },
      client: { tls: l.clientTls ?? 'off', auth: 'trust' },
      ...(l.prewarm ? { prewarm: l.prewarm } : {}),
    })),
  };
  const configFile = path.join(o.dir, `${o.name}.yaml`);
  await fs.writeFile(configFile, stringify(config));
  const nofile = o.nofile ?? 65536;
  const argv = [
    o.node ?? process.execPath,
    ...(o.nodeFlags ?? PROXY_NODE_FLAGS),
    o.cli ?? CLI,
    'run',
    '--config',
    configFile,
  ];
  const t0 = performance.now();
  // Through bash for the ulimit; `exec` keeps the pid, so the process is node itself.
  const [cmd, ...args] = nofile > 0 ? ['bash', '-c', withNofile(nofile), ...argv] : argv;
  const d = startDaemon(cmd ?? 'node', args, path.join(o.dir, `${o.name}.log`), {
    env: childEnv(o.env ?? {}),
  });
  // At a level above info there are no 'listening' lines: start-up then ends when every port accepts.
  const quiet = o.logLevel !== undefined && !['trace', 'debug', 'info'].includes(o.logLevel);
  const listening = quiet ? undefined : listeningLines(d, o.listeners.length, t0);
  try {
    for (const port of Object.values(ports)) await waitForPort(port, d.exited);
    const startMs = listening ? await Promise.race([listening, d.exited]) : performance.now() - t0;
    return { ...d, ports, configFile, startMs, spawnedAt: t0 };
  } catch (err) {
    await d.stop(0);
    const log = await fs.readFile(d.logFile, 'utf8').catch(() => '');
    throw new Error(`${(err as Error).message}\n--- ${o.name} log ---\n${log.slice(-3000)}`);
  }
}

/** Resolves with the milliseconds since `t0` at which the `n`th 'listening' JSON log line arrived. */
function listeningLines(d: Daemon, n: number, t0: number): Promise<number> {
  return new Promise((resolve) => {
    let seen = 0;
    let tail = '';
    const onData = (chunk: Buffer): void => {
      const at = performance.now();
      const lines = (tail + chunk.toString('utf8')).split('\n');
      tail = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.includes('"msg":"listening"')) continue;
        if (++seen === n) {
          d.child.stdout?.off('data', onData);
          resolve(at - t0);
        }
      }
    };
    d.child.stdout?.on('data', onData);
  });
}
