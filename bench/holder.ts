/**
 * Holds idle PostgreSQL connections open through the proxy (run as its own process under a
 * raised open-files limit: `node dist/bench/holder.js PORT USER DATABASE`). Each connection is a
 * raw socket that sends a StartupMessage (no TLS, no password: client.tls off, client.auth
 * trust) and waits for ReadyForQuery, i.e. a completed login through the proxy, then stays idle.
 *
 * Protocol on stdin/stdout, one line each: "hold N" opens connections until N are held, then
 * answers "held N MS" (MS = time taken) or "error MESSAGE"; "close" closes them all and answers
 * "closed"; end of stdin exits.
 */
import * as net from 'node:net';
import * as readline from 'node:readline';

const [portArg, user = 'bench', database = 'bench'] = process.argv.slice(2);
const port = Number(portArg);
/** Logins in flight at once: enough to keep the proxy busy, few enough for the accept backlog. */
const CONCURRENCY = 64;

function startup(): Buffer {
  const params = Buffer.from(
    `user\0${user}\0database\0${database}\0application_name\0bench-idle\0\0`,
    'utf8',
  );
  const b = Buffer.alloc(8 + params.length);
  b.writeInt32BE(b.length, 0);
  b.writeInt32BE(196608, 4);
  params.copy(b, 8);
  return b;
}
const STARTUP = startup();

const held: net.Socket[] = [];

/** One login: resolves when ReadyForQuery arrives, rejects on ErrorResponse or close. */
function openOne(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
    let buf: Buffer = Buffer.alloc(0);
    const fail = (why: string): void => {
      s.destroy();
      reject(new Error(why));
    };
    s.once('error', (err) => fail(err.message));
    s.once('close', () => fail('closed before ReadyForQuery'));
    s.once('connect', () => s.write(STARTUP));
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 5) {
        const type = buf[0];
        const len = buf.readInt32BE(1) + 1;
        if (buf.length < len) return;
        if (type === 0x45)
          return fail(`ErrorResponse: ${buf.subarray(5, len).toString('utf8').replace(/\0/g, ' ')}`);
        buf = buf.subarray(len);
        if (type === 0x5a) {
          s.off('data', onData);
          s.removeAllListeners('close');
          s.removeAllListeners('error');
          s.on('error', () => undefined);
          s.pause();
          resolve(s);
          return;
        }
      }
    };
    s.on('data', onData);
  });
}

async function holdUntil(n: number): Promise<void> {
  let inFlight = 0;
  let failed: Error | undefined;
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      if (failed || held.length + inFlight >= n) {
        if (inFlight === 0) resolve();
        return;
      }
      while (!failed && inFlight < CONCURRENCY && held.length + inFlight < n) {
        inFlight++;
        openOne().then(
          (s) => {
            inFlight--;
            held.push(s);
            pump();
          },
          (err: Error) => {
            inFlight--;
            failed ??= err;
            pump();
          },
        );
      }
    };
    pump();
  });
  if (failed) throw failed;
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd === 'hold') {
    const t0 = performance.now();
    holdUntil(Number(arg)).then(
      () => process.stdout.write(`held ${held.length} ${Math.round(performance.now() - t0)}\n`),
      (err: Error) => process.stdout.write(`error after ${held.length} held: ${err.message}\n`),
    );
  } else if (cmd === 'close') {
    for (const s of held.splice(0)) s.destroy();
    process.stdout.write('closed\n');
  }
});
rl.on('close', () => process.exit(0));
