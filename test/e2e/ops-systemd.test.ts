/**
 * systemd readiness of the built CLI (`Type=notify`): with NOTIFY_SOCKET pointing at a unix
 * datagram socket this test listens on (as systemd would), the proxy sends READY=1 only once its
 * listeners are bound (a connect right after READY=1 succeeds), RELOADING=1 then READY=1 around
 * SIGHUP, and STOPPING=1 when SIGTERM starts the drain. Both socket forms: a path and '@abstract'.
 *
 * Node cannot listen on AF_UNIX datagram sockets, so the listener is a few lines of python3. Like
 * systemd it closes the fd that systemd-notify passes with BARRIER=1, which lets it exit.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { startCli, type CliProc } from '../harness/cliproc';
import { freePort } from '../harness/util';

const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const RECEIVER = `
import array, json, os, socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\\0' + addr[1:] if addr.startswith('@') else addr)
print(json.dumps('listening'), flush=True)
while True:
    msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(64))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array('i')
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)
    print(json.dumps(msg.decode()), flush=True)
`;

/** A NOTIFY_SOCKET listener; `messages` holds each datagram's fields. */
class NotifyListener {
  readonly messages: string[][] = [];
  private readonly waiters: (() => void)[] = [];
  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = JSON.parse(buf.slice(0, nl)) as string;
        buf = buf.slice(nl + 1);
        if (line !== 'listening') this.messages.push(line.split('\n').filter(Boolean));
        this.waiters.splice(0).forEach((w) => w());
      }
    });
  }

  static async start(address: string): Promise<NotifyListener> {
    const child = spawn(PYTHON, ['-c', RECEIVER, address], { stdio: 'pipe' });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const l = new NotifyListener(child);
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`notify listener exited ${code}: ${err}`)));
    });
    return l;
  }

  /** Resolves with the first message (from index `from`) that has `field`. */
  next(field: string, from = 0, timeoutMs = 15_000): Promise<number> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no ${field} within ${timeoutMs} ms; got ${JSON.stringify(this.messages)}`)),
        timeoutMs,
      );
      const check = (): void => {
        const i = this.messages.findIndex((m, idx) => idx >= from && m.includes(field));
        if (i >= 0) {
          clearTimeout(timer);
          resolve(i);
        } else this.waiters.push(check);
      };
      check();
    });
  }

  stop(): void {
    this.child.kill('SIGKILL');
  }
}

function connect(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve();
    });
    s.once('error', reject);
  });
}

describe('systemd Type=notify readiness (sd_notify through systemd-notify)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rip-sdnotify-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function config(): Promise<{ file: string; ports: number[] }> {
    const ports = [await freePort(), await freePort()];
    const file = path.join(dir, `config-${ports[0]}.yaml`);
    const listener = (name: string, port: number | undefined): object => ({
      name,
      engine: 'postgres',
      listen: `127.0.0.1:${port}`,
      upstream: { host: 'db.cluster-abc.us-east-1.rds.amazonaws.com' },
      auth: { mode: 'password', password: { env: 'RIP_TEST_UPSTREAM_PASSWORD' } },
      client: { tls: 'off' },
    });
    writeFileSync(
      file,
      YAML.stringify({
        log: { level: 'info', format: 'json' },
        shutdown: { minDelayMs: 0, maxDelayMs: 1000 },
        listeners: [listener('a', ports[0]), listener('b', ports[1])],
      }),
    );
    return { file, ports };
  }

  for (const kind of ['path', 'abstract'] as const) {
    test(`READY=1 only after every listener is bound; RELOADING/READY on SIGHUP; STOPPING on SIGTERM (${kind} socket)`, async () => {
      const address =
        kind === 'path'
          ? path.join(dir, `notify-${process.pid}.sock`)
          : `@rip-notify-${process.pid}-${Date.now()}`;
      const notify = await NotifyListener.start(address);
      const { file, ports } = await config();
      let cli: CliProc | undefined;
      try {
        cli = startCli(['run', '--config', file], {
          NOTIFY_SOCKET: address,
          RIP_TEST_UPSTREAM_PASSWORD: 'unused',
        });
        const ready = await notify.next('READY=1');
        // At the moment systemd would start the units ordered after us, both listeners accept.
        await Promise.all(ports.map((p) => connect(p)));
        expect(notify.messages.slice(0, ready).flat()).not.toContain('STOPPING=1');
        expect(notify.messages[ready]).toContain('STATUS=listening');

        cli.child.kill('SIGHUP');
        const reloading = await notify.next('RELOADING=1', ready + 1);
        const readyAgain = await notify.next('READY=1', reloading + 1);
        expect(readyAgain).toBeGreaterThan(reloading);
        await cli.waitForLine(/config reloaded/);

        cli.child.kill('SIGTERM');
        await notify.next('STOPPING=1', readyAgain + 1).catch((e: Error) => {
          throw new Error(`${e.message}\nproxy output: ${cli?.stdout()}${cli?.stderr()}`);
        });
        expect(await cli.exited).toBe(0);
        expect(cli.stdout()).not.toMatch(/could not notify systemd/);
      } finally {
        cli?.child.kill('SIGKILL');
        notify.stop();
      }
    }, 60_000);
  }

  test('without NOTIFY_SOCKET nothing is sent and nothing is logged about systemd', async () => {
    const { file, ports } = await config();
    const env: NodeJS.ProcessEnv = { RIP_TEST_UPSTREAM_PASSWORD: 'unused', NOTIFY_SOCKET: '' };
    const cli = startCli(['run', '--config', file], env);
    try {
      await cli.waitForLine(/rds-iam-proxy ready/);
      await connect(ports[0] as number);
      cli.child.kill('SIGTERM');
      expect(await cli.exited).toBe(0);
      expect(cli.stdout() + cli.stderr()).not.toMatch(/systemd/);
    } finally {
      cli.child.kill('SIGKILL');
    }
  }, 60_000);
});
