/** Small async helpers for the harness. Nothing here blocks the event loop (see verifier.ts). */
import { execFile, type ExecFileOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';

/** Runs a program without a shell; rejects with its stderr in the message so failures explain themselves. */
export function run(
  file: string,
  args: readonly string[],
  opts: ExecFileOptions & { input?: string } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      { maxBuffer: 64 * 1024 * 1024, ...opts, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err) {
          const detail = String(stderr).trim() || String(stdout).trim();
          const how = err.killed ? `killed by ${err.signal}` : `exit code ${String(err.code)}`;
          reject(new Error(`${file} ${args.join(' ')} failed (${how}):\n${detail}`));
        } else resolve(String(stdout));
      },
    );
    // A child that exits without reading its input (a failed start) must fail the call, not
    // crash the process with EPIPE: its exit status says what went wrong.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input ?? '');
  });
}

/** A port free on 127.0.0.1 right now (the kernel's pick for port 0). Racy by nature; callers retry. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Throws the harness's standard hint when not root: PAM files and server users need it. */
export function requireRoot(what: string): void {
  if (process.getuid?.() !== 0) {
    throw new Error(`${what} needs root and libpam0g-dev: apt-get install -y libpam0g-dev gcc`);
  }
}

/** Polls `check` every `intervalMs` until it resolves true or `timeoutMs` passes. */
export async function waitFor(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A random suffix for names that must not collide between parallel jest workers. */
export function uniqueSuffix(): string {
  return `${process.pid.toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

const ids = new Map<string, [number, number]>();
/** uid and gid of a local account, from /etc/passwd (a file read, no child process). */
export function accountIds(name: string): [number, number] {
  let found = ids.get(name);
  if (!found) {
    const line = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`${name}:`));
    const [, , uid, gid] = line?.split(':') ?? [];
    if (uid === undefined || gid === undefined) throw new Error(`no ${name} user in /etc/passwd`);
    found = [Number(uid), Number(gid)];
    ids.set(name, found);
  }
  return found;
}
