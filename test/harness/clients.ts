/** Real client programs driven asynchronously (the token verifier shares the test's event loop). */
import { spawn } from 'node:child_process';

export interface ProcResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Environment (added to the test's), standard input, a kill deadline, and a hook to signal the child. */
export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  input?: string;
  timeoutMs?: number;
  onSpawn?: (kill: (s: NodeJS.Signals) => void) => void;
}

/** Runs a program to completion; never rejects on a non-zero exit (tests assert on it). */
export function runProgram(cmd: string, args: string[], o: RunOptions = {}): Promise<ProcResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...o.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.end(o.input ?? '');
    o.onSpawn?.((s) => child.kill(s));
  });
}

/** psql against the proxy: -X (no psqlrc), -A -t output, ON_ERROR_STOP. Extra args after. */
export function psql(conninfo: string, args: string[], o: RunOptions = {}): Promise<ProcResult> {
  return runProgram('psql', ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-d', conninfo, ...args], o);
}
