/**
 * A minimal PostgreSQL-speaking upstream for the idle-connection test (run as its own process:
 * `node dist/bench/fakepg.js PORT CERT KEY`). 10,000 real PostgreSQL backends would need tens of
 * GB; this holds any number of TLS sessions for a few KB each. It speaks what the proxy's
 * upstream login needs: SSLRequest -> 'S', TLS (no session tickets, like PostgreSQL), startup ->
 * AuthenticationCleartextPassword, password -> AuthenticationOk, ParameterStatus,
 * BackendKeyData, ReadyForQuery. Then it keeps the connection open and ignores what arrives
 * (a Terminate closes it). Prints "listening" once bound.
 */
import { constants as cryptoConstants } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';

const SSL_REQUEST_CODE = 80877103;

function message(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}
const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');
const parameter = (k: string, v: string): Buffer => message('S', Buffer.concat([cstr(k), cstr(v)]));

const ASK_PASSWORD = message('R', int32(3));
let nextPid = 1000;
function loggedIn(): Buffer {
  return Buffer.concat([
    message('R', int32(0)),
    parameter('server_version', '15.0 (bench fake)'),
    parameter('server_encoding', 'UTF8'),
    parameter('client_encoding', 'UTF8'),
    parameter('DateStyle', 'ISO, MDY'),
    parameter('integer_datetimes', 'on'),
    parameter('standard_conforming_strings', 'on'),
    message('K', Buffer.concat([int32(nextPid++), int32(0x5eed)])),
    message('Z', Buffer.from('I')),
  ]);
}

function main(): void {
  const [portArg, certFile, keyFile] = process.argv.slice(2);
  if (!portArg || !certFile || !keyFile) throw new Error('usage: fakepg PORT CERT KEY');
  const secureContext = tls.createSecureContext({
    cert: readFileSync(certFile),
    key: readFileSync(keyFile),
    // PostgreSQL sets SSL_OP_NO_TICKET and turns its session cache off.
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
  });
  const server = net.createServer({ noDelay: true }, (raw) => {
    raw.on('error', () => undefined);
    let pending: Buffer = Buffer.alloc(0);
    const onRaw = (d: Buffer): void => {
      pending = Buffer.concat([pending, d]);
      if (pending.length < 8) return;
      raw.off('data', onRaw);
      raw.pause();
      if (pending.readInt32BE(4) !== SSL_REQUEST_CODE) {
        raw.destroy();
        return;
      }
      raw.write('S');
      startTls(raw, secureContext);
    };
    raw.on('data', onRaw);
  });
  server.maxConnections = 1_000_000;
  server.listen(Number(portArg), '127.0.0.1', 4096, () => process.stdout.write('listening\n'));
}

function startTls(raw: net.Socket, secureContext: tls.SecureContext): void {
  const s = new tls.TLSSocket(raw, { isServer: true, secureContext });
  s.on('error', () => undefined);
  let buf: Buffer = Buffer.alloc(0);
  let phase: 'startup' | 'password' | 'ready' = 'startup';
  s.on('data', (d: Buffer) => {
    if (phase === 'ready') {
      if (d[0] === 0x58) s.end(); // Terminate
      return;
    }
    buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
    for (;;) {
      if (phase === 'startup') {
        if (buf.length < 4) return;
        const len = buf.readInt32BE(0);
        if (buf.length < len) return;
        buf = buf.subarray(len);
        s.write(ASK_PASSWORD);
        phase = 'password';
      } else if (phase === 'password') {
        if (buf.length < 5) return;
        const len = buf.readInt32BE(1) + 1;
        if (buf.length < len) return;
        buf = Buffer.alloc(0);
        s.write(loggedIn());
        phase = 'ready';
        return;
      } else return;
    }
  });
}

main();
