/**
 * The Go peers of the benchmark: builds (buildTool) bench/gorelay (the Go sidecars' data path: plaintext in,
 * verify-full TLS out, io.Copy) and bench/delayrelay (a TCP relay that delays each chunk, to put
 * the database "far away" without netem) with Debian's golang-go into bench/.cache, starts them,
 * and measures the round trip the delaying relay really adds.
 */
import { existsSync, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as path from 'node:path';
import { freePort, mustRun, REPO_ROOT, startDaemon, waitForPort, type Daemon } from './util';

/** Where the bench keeps what it builds or downloads (git-ignored). */
export const CACHE_DIR = path.join(REPO_ROOT, 'bench', '.cache');

/**
 * Builds a bench tool from source into bench/.cache/<name> unless the binary is newer; returns its
 * path. bench/<name>/main.go is built with Debian's golang-go; bench/<name>/main.c with gcc against
 * Debian's libmariadb-dev (`mariadb_config`), the MySQL client library of bench/myconnect.
 */
export async function buildTool(name: 'gorelay' | 'delayrelay' | 'myconnect'): Promise<string> {
  const dir = path.join(REPO_ROOT, 'bench', name);
  const go = existsSync(path.join(dir, 'main.go'));
  const src = path.join(dir, go ? 'main.go' : 'main.c');
  const out = path.join(CACHE_DIR, name);
  const [s, o] = await Promise.all([fs.stat(src), fs.stat(out).catch(() => undefined)]);
  if (o && o.mtimeMs >= s.mtimeMs) return out;
  await fs.mkdir(CACHE_DIR, { recursive: true });
  if (go) {
    await mustRun('go', ['build', '-o', out, src], {
      env: { GOCACHE: path.join(CACHE_DIR, 'go-build'), GOPATH: path.join(CACHE_DIR, 'gopath'), GOFLAGS: '' },
      timeoutMs: 300_000,
    });
  } else {
    const flags = (await mustRun('mariadb_config', ['--cflags', '--libs'])).stdout
      .split(/\s+/)
      .filter(Boolean);
    await mustRun('gcc', ['-O2', '-o', out, src, ...flags], { timeoutMs: 120_000 });
  }
  return out;
}

export interface Relay extends Daemon {
  port: number;
}

async function startRelay(bin: string, args: string[], logFile: string): Promise<Relay> {
  const port = await freePort();
  const d = startDaemon(bin, ['-listen', `127.0.0.1:${port}`, ...args], logFile);
  try {
    await waitForPort(port, d.exited);
  } catch (err) {
    await d.stop(0);
    const log = existsSync(logFile) ? await fs.readFile(logFile, 'utf8') : '';
    throw new Error(`${(err as Error).message}\n${log.slice(-2000)}`);
  }
  return { ...d, port };
}

/** The Go TLS relay in front of `upstreamPort` (dialled at 127.0.0.1), verifying `serverName` against `caFile`. */
export function startGoRelay(o: {
  bin: string;
  dir: string;
  name: string;
  upstreamPort: number;
  serverName: string;
  caFile: string;
}): Promise<Relay> {
  return startRelay(
    o.bin,
    ['-upstream', `127.0.0.1:${o.upstreamPort}`, '-servername', o.serverName, '-ca', o.caFile],
    path.join(o.dir, `${o.name}.log`),
  );
}

/** The delaying relay in front of 127.0.0.1:`upstreamPort`, holding each chunk `delayUs` per direction. */
export function startDelayRelay(o: {
  bin: string;
  dir: string;
  name: string;
  upstreamPort: number;
  delayUs: number;
}): Promise<Relay> {
  return startRelay(
    o.bin,
    ['-upstream', `127.0.0.1:${o.upstreamPort}`, '-delay', `${o.delayUs}us`],
    path.join(o.dir, `${o.name}.log`),
  );
}

/** An echo server on a free port (in this process; it only answers ping-pongs). */
export async function startEcho(): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer({ noDelay: true }, (s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return { port, close: () => new Promise((r) => server.close(() => r())) };
}

/**
 * Median round trip of `n` 64-byte ping-pongs over one TCP connection to `port`, milliseconds
 * (after 20 unmeasured ones).
 */
export async function pingPongMs(port: number, n = 300): Promise<number> {
  const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  const ping = Buffer.alloc(64, 1);
  const times: number[] = [];
  try {
    for (let i = 0; i < n + 20; i++) {
      const t0 = performance.now();
      await new Promise<void>((resolve, reject) => {
        let got = 0;
        const onData = (d: Buffer): void => {
          got += d.length;
          if (got >= ping.length) {
            s.off('data', onData);
            s.off('error', reject);
            resolve();
          }
        };
        s.on('data', onData);
        s.once('error', reject);
        s.write(ping);
      });
      if (i >= 20) times.push(performance.now() - t0);
    }
  } finally {
    s.destroy();
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)] ?? NaN;
}

/**
 * Opens a PostgreSQL connection to 127.0.0.1:`port` and completes a local TLS handshake
 * (SSLRequest, 'S', TLS; the certificate is not checked); resolves with performance.now() at
 * secureConnect. Measures when a `client.tls: auto` listener can really serve TLS.
 */
export async function pgTlsHandshakeAt(port: number): Promise<number> {
  const raw = net.connect({ host: '127.0.0.1', port });
  try {
    await new Promise<void>((resolve, reject) => {
      raw.once('error', reject);
      raw.once('connect', () => raw.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])));
      raw.once('data', (d: Buffer) =>
        d[0] === 0x53 ? resolve() : reject(new Error(`SSLRequest answered ${d.toString('latin1')}`)),
      );
    });
    const s = tls.connect({ socket: raw, servername: 'localhost', rejectUnauthorized: false });
    return await new Promise<number>((resolve, reject) => {
      s.once('error', reject);
      s.once('secureConnect', () => {
        const at = performance.now();
        s.destroy();
        resolve(at);
      });
    });
  } finally {
    raw.destroy();
  }
}
