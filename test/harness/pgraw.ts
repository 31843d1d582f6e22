/** A byte-level Postgres client for tests of what ordinary drivers never send. */
import net from 'node:net';
import tls from 'node:tls';
import { Parser } from 'pg-protocol/dist/parser';
import type { BackendMessage } from 'pg-protocol/dist/messages';
import { buildStartup, PROTOCOL_3_0 } from '../../src/engines/postgres/wire';

export interface RawConn {
  socket: net.Socket | tls.TLSSocket;
  /** Every raw byte received so far. */
  received(): Buffer;
  /** Parsed backend messages (after any single-byte answers were consumed). */
  messages: BackendMessage[];
  /** Resolves when the server closes. */
  closed: Promise<void>;
  /** Waits until a message named `name` arrives (or the connection closes). */
  waitFor(name: string, timeoutMs?: number): Promise<BackendMessage | undefined>;
  /** Reads exactly one raw byte (an SSLRequest/GSSENCRequest answer). */
  readByte(): Promise<number>;
  /** Starts parsing backend messages from now on. */
  parse(): void;
}

export function rawConnect(port: number, o: { tls?: tls.ConnectionOptions } = {}): Promise<RawConn> {
  return new Promise((resolve, reject) => {
    const socket: net.Socket | tls.TLSSocket = o.tls
      ? tls.connect({ port, host: '127.0.0.1', ...o.tls }, () => resolve(wrap(socket)))
      : net.connect({ port, host: '127.0.0.1' }, () => resolve(wrap(socket)));
    socket.once('error', reject);
  });
}

export function wrap(socket: net.Socket | tls.TLSSocket): RawConn {
  const chunks: Buffer[] = [];
  let pending = Buffer.alloc(0);
  let parsing = false;
  const messages: BackendMessage[] = [];
  const parser = new Parser();
  const listeners = new Set<() => void>();
  const notify = (): void => listeners.forEach((l) => l());
  const feed = (): void => {
    if (!parsing || pending.length === 0) return;
    const b = pending;
    pending = Buffer.alloc(0);
    parser.parse(b, (m) => messages.push(m));
  };
  socket.on('data', (d: Buffer) => {
    chunks.push(d);
    pending = Buffer.concat([pending, d]);
    feed();
    notify();
  });
  socket.on('error', () => undefined);
  const closed = new Promise<void>((r) => socket.on('close', () => (notify(), r())));
  const conn: RawConn = {
    socket,
    messages,
    closed,
    received: () => Buffer.concat(chunks),
    parse() {
      parsing = true;
      feed();
    },
    async readByte() {
      while (pending.length === 0) {
        if (socket.destroyed) throw new Error('closed');
        await new Promise<void>((r) =>
          listeners.add(function l() {
            listeners.delete(l);
            r();
          }),
        );
      }
      const b = pending[0] as number;
      pending = pending.subarray(1);
      return b;
    },
    async waitFor(name, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const m = messages.find((x) => x.name === name);
        if (m || socket.destroyed || Date.now() > deadline) return m;
        await new Promise<void>((r) => {
          const t = setTimeout(r, 50);
          listeners.add(function l() {
            listeners.delete(l);
            clearTimeout(t);
            r();
          });
        });
      }
    },
  };
  return conn;
}

/** A protocol 3.0 StartupMessage for `user`/`database`. */
export function startup(user: string, database: string, version = PROTOCOL_3_0): Buffer {
  return buildStartup(version, [
    ['user', user],
    ['database', database],
  ]);
}

/** An 8-byte request packet (SSLRequest, GSSENCRequest) with the given code. */
export function request(code: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeInt32BE(8, 0);
  b.writeInt32BE(code, 4);
  return b;
}
