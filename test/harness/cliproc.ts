/** Runs the built CLI (dist/) as a child process, the way operators run it. */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

export const CLI = path.resolve(__dirname, '../../dist/src/cli.js');

/** Fails with a clear message when `npm run build` has not been run (npm test always builds first). */
export function requireBuilt(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
}

export interface CliProc {
  child: ChildProcessWithoutNullStreams;
  stdout: () => string;
  stderr: () => string;
  /** Resolves when a stdout line matches. */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
  exited: Promise<number | null>;
  /** Resident set size in bytes, from /proc. */
  rss(): number;
}

export function startCli(args: string[], env: NodeJS.ProcessEnv = {}): CliProc {
  requireBuilt();
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: 'pipe' });
  let out = '';
  let err = '';
  const waiters: (() => void)[] = [];
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    waiters.forEach((w) => w());
  });
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) =>
    child.on('exit', (code) => (waiters.forEach((w) => w()), r(code))),
  );
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    rss() {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      return Number(m?.[1] ?? 0) * 1024;
    },
    waitForLine(re, timeoutMs = 15_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`timed out waiting for ${re}; stdout: ${out}\nstderr: ${err}`)),
          timeoutMs,
        );
        const check = (): void => {
          const line = out.split('\n').find((l) => re.test(l));
          if (line !== undefined) {
            clearTimeout(timer);
            resolve(line);
          } else if (child.exitCode !== null) {
            clearTimeout(timer);
            reject(new Error(`exited ${child.exitCode} before ${re}; stdout: ${out}\nstderr: ${err}`));
          }
        };
        waiters.push(check);
        check();
      });
    },
  };
}
