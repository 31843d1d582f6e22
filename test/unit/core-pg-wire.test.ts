import * as net from 'node:net';
import { PassThrough } from 'node:stream';
import fc from 'fast-check';
import { ErrorCode, ProxyError } from '../../src/errors';
import {
  authMessage,
  Backend,
  buildCancel,
  buildStartup,
  errorResponse,
  fatal,
  Field,
  MAX_HANDSHAKE_MESSAGE,
  MAX_STARTUP_LENGTH,
  message,
  parseAuth,
  parseBackendKey,
  parseErrorFields,
  parseStartupParams,
  PROTOCOL_3_0,
  PROTOCOL_3_2,
  readMessage,
  readStartupPacket,
  readyForQuery,
  sslRequest,
  StartupCode,
} from '../../src/engines/postgres/wire';
import { BufferLimitError, PeerClosedError, SocketReader } from '../../src/net/reader';

/** Lets the stream deliver what was written (and any pending read observe it). */
const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function newReader(maxBuffered?: number): { stream: PassThrough; reader: SocketReader } {
  const stream = new PassThrough();
  return { stream, reader: new SocketReader(stream, maxBuffered) };
}

/** Writes each non-empty chunk as its own 'data' event, yielding in between. */
async function feed(stream: PassThrough, chunks: Buffer[]): Promise<void> {
  for (const c of chunks) {
    if (c.length === 0) continue;
    stream.write(c);
    await tick();
  }
}

/** Every way of cutting `buf` into two chunks, plus one byte at a time. */
function splits(buf: Buffer): Buffer[][] {
  const out: Buffer[][] = [];
  for (let i = 0; i <= buf.length; i++) out.push([buf.subarray(0, i), buf.subarray(i)]);
  out.push([...buf].map((b) => Buffer.from([b])));
  return out;
}

/**
 * Feeds `buf` followed by `trailer` in every split, runs `read` (started before any byte
 * arrives), checks the result, and checks the reader kept exactly the trailer.
 */
async function forEverySplit<T>(
  buf: Buffer,
  read: (r: SocketReader) => Promise<T>,
  check: (v: T) => void,
): Promise<void> {
  const trailer = Buffer.from('TRAIL\0er');
  for (const chunks of splits(buf)) {
    const { stream, reader } = newReader();
    const p = read(reader);
    await feed(stream, [...chunks, trailer]);
    check(await p);
    expect(reader.available).toBe(trailer.length);
    expect(reader.detach()).toEqual(trailer);
  }
}

/** The rejection reason of `p` (handler attached at once); fails if `p` resolves. */
function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
}

/** Attaches a handler at once (so a rejection arriving mid-test is not "unhandled"). */
function settle(p: Promise<unknown>): Promise<{ error: unknown } | { value: unknown }> {
  return p.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
}

async function expectProxyError(
  p: Promise<{ error: unknown } | { value: unknown }> | (() => unknown),
  code: string,
): Promise<ProxyError> {
  let caught: unknown;
  if (typeof p === 'function') {
    try {
      p();
    } catch (err) {
      caught = err;
    }
  } else {
    const r = await p;
    caught = 'error' in r ? r.error : undefined;
  }
  expect(caught).toBeInstanceOf(ProxyError);
  expect((caught as ProxyError).code).toBe(code);
  return caught as ProxyError;
}

const MANY_PARAMS: [string, string][] = [
  ['user', 'alice'],
  ['database', 'appdb'],
  ['application_name', 'psql ünïcödé ✓ 日本語 🐘'],
  ['client_encoding', 'UTF8'],
  ['options', '-c search_path=public,"$user" -c statement_timeout=5s'],
  ['DateStyle', 'ISO, MDY'],
  ['replication', 'false'],
  ['_pq_.test_extension', ''],
  ['zeta', 'last'],
  ['alpha', 'after zeta: order is as sent, not sorted'],
];

describe('startup packets over a SocketReader, split at every byte boundary', () => {
  it('round-trips a StartupMessage with many params, keeping order and UTF-8', async () => {
    const pkt = buildStartup(PROTOCOL_3_0, MANY_PARAMS);
    expect(pkt.readInt32BE(0)).toBe(pkt.length);
    expect(pkt.readInt32BE(4)).toBe(PROTOCOL_3_0);
    await forEverySplit(pkt, readStartupPacket, (p) => {
      expect(p.code).toBe(PROTOCOL_3_0);
      expect(parseStartupParams(p.body)).toEqual(MANY_PARAMS);
    });
  });

  it('keeps the protocol version (3.2) and an empty parameter list', async () => {
    const pkt = buildStartup(PROTOCOL_3_2, []);
    expect(pkt).toEqual(Buffer.from([0, 0, 0, 9, 0, 3, 0, 2, 0]));
    await forEverySplit(pkt, readStartupPacket, (p) => {
      expect(p.code).toBe(PROTOCOL_3_2);
      expect(parseStartupParams(p.body)).toEqual([]);
    });
  });

  it('reads an SSLRequest (8 bytes, no body)', async () => {
    const pkt = sslRequest();
    expect(pkt).toEqual(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
    await forEverySplit(pkt, readStartupPacket, (p) => {
      expect(p.code).toBe(StartupCode.SSLRequest);
      expect(p.body.length).toBe(0);
    });
  });

  it.each([4, 32, 256])('round-trips a CancelRequest with a %i-byte key', async (keyLen) => {
    const key = Buffer.from(Array.from({ length: keyLen }, (_, i) => (i * 37 + 11) & 0xff));
    const pid = 0x7fff_1234;
    const pkt = buildCancel(pid, key);
    expect(pkt.length).toBe(12 + keyLen);
    expect(pkt.readInt32BE(0)).toBe(12 + keyLen);
    expect(pkt.readInt32BE(4)).toBe(StartupCode.CancelRequest);
    await forEverySplit(pkt, readStartupPacket, (p) => {
      expect(p.code).toBe(StartupCode.CancelRequest);
      expect(p.body.readInt32BE(0)).toBe(pid);
      expect(p.body.subarray(4)).toEqual(key);
      // The body of a CancelRequest has the BackendKeyData layout.
      expect(parseBackendKey(p.body)).toEqual({ pid, key });
    });
  });

  it('round-trips arbitrary parameter lists (property)', async () => {
    const noNul = fc.string({ unit: 'grapheme', maxLength: 20 }).map((s) => s.replace(/\0/g, ''));
    const name = noNul.filter((s) => s.length > 0);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(name, noNul), { maxLength: 12 }),
        fc.nat(),
        async (params, cutSeed) => {
          const pkt = buildStartup(PROTOCOL_3_0, params);
          const cut = cutSeed % (pkt.length + 1);
          const { stream, reader } = newReader();
          const p = readStartupPacket(reader);
          await feed(stream, [pkt.subarray(0, cut), pkt.subarray(cut)]);
          const got = await p;
          expect(got.code).toBe(PROTOCOL_3_0);
          expect(parseStartupParams(got.body)).toEqual(params);
          expect(reader.available).toBe(0);
        },
      ),
      { numRuns: 100 },
    );
  });

  it.each([-1, 0, 4, 7, MAX_STARTUP_LENGTH + 1, 0x7fffffff])(
    'closes on a startup length of %i (CLIENT_UNFRAMED: no reply) before reading the body',
    async (len) => {
      const { stream, reader } = newReader();
      const head = Buffer.alloc(8);
      head.writeInt32BE(len, 0);
      head.writeInt32BE(PROTOCOL_3_0, 4);
      const p = settle(readStartupPacket(reader));
      // Only the 8-byte head is ever sent: the error must not wait for a body.
      await feed(stream, [head]);
      const err = await expectProxyError(p, ErrorCode.ClientUnframed);
      expect(err.message).toContain(String(len));
      expect(reader.available).toBe(0);
    },
  );

  it('accepts the boundary lengths 8 and MAX_STARTUP_LENGTH', async () => {
    const { stream, reader } = newReader();
    const max = Buffer.alloc(MAX_STARTUP_LENGTH);
    max.writeInt32BE(MAX_STARTUP_LENGTH, 0);
    max.writeInt32BE(PROTOCOL_3_0, 4);
    max.fill(0x61, 8, MAX_STARTUP_LENGTH - 1);
    const p = readStartupPacket(reader);
    await feed(stream, [max]);
    const got = await p;
    expect(got.body.length).toBe(MAX_STARTUP_LENGTH - 8);
    const p2 = readStartupPacket(reader);
    await feed(stream, [sslRequest()]);
    expect((await p2).body.length).toBe(0);
  });

  it('rejects with PeerClosedError when the client hangs up mid-packet', async () => {
    const pkt = buildStartup(PROTOCOL_3_0, MANY_PARAMS);
    const { stream, reader } = newReader();
    const p = rejection(readStartupPacket(reader));
    await feed(stream, [pkt.subarray(0, 20)]);
    stream.end();
    expect(await p).toBeInstanceOf(PeerClosedError);
  });
});

describe('parseStartupParams errors', () => {
  it.each([
    ['empty body', Buffer.alloc(0)],
    ['no final terminator', Buffer.from('user\0alice\0')],
    ['unterminated value', Buffer.from('user\0ali')],
    ['name without value', Buffer.from('user\0')],
    ['unterminated name', Buffer.from('user')],
    ['data after the terminator', Buffer.from('user\0alice\0\0x')],
    ['two terminators', Buffer.from('\0\0')],
  ])('%s → CLIENT_PROTOCOL', async (_label, body: Buffer) => {
    await expectProxyError(() => parseStartupParams(body), ErrorCode.ClientProtocol);
  });

  it('accepts a lone terminator as no parameters', () => {
    expect(parseStartupParams(Buffer.from([0]))).toEqual([]);
  });
});

describe('typed messages', () => {
  const ALL_FIELDS = new Map<string, string>([
    ['S', 'FATAL'],
    ['V', 'FATAL'],
    ['C', '28P01'],
    ['M', 'password authentication failed for user "ålice"'],
    ['D', 'detail — with UTF-8 ✓'],
    ['H', 'check the token'],
    ['P', '17'],
    ['p', '3'],
    ['q', 'SELECT 1'],
    ['W', 'PL/pgSQL function f() line 3'],
    ['s', 'public'],
    ['t', 'tbl'],
    ['c', 'col'],
    ['d', 'dom'],
    ['n', 'tbl_pkey'],
    ['F', 'auth.c'],
    ['L', '326'],
    ['R', 'auth_failed'],
    ['Z', 'an unknown field code is kept'],
  ]);

  it('round-trips an ErrorResponse with every field, in order', async () => {
    const frame = errorResponse(ALL_FIELDS);
    expect(frame[0]).toBe(Backend.ErrorResponse);
    expect(frame.readInt32BE(1)).toBe(frame.length - 1);
    await forEverySplit(
      frame,
      (r) => readMessage(r),
      (m) => {
        expect(m.type).toBe(Backend.ErrorResponse);
        expect(m.raw).toEqual(frame);
        const parsed = parseErrorFields(m.body);
        expect([...parsed]).toEqual([...ALL_FIELDS]);
      },
    );
  });

  it('builds a FATAL error with and without a hint', () => {
    const withHint = parseErrorFields(fatal('28000', 'no such user', 'create it').subarray(5));
    expect([...withHint]).toEqual([
      [Field.Severity, 'FATAL'],
      [Field.SeverityNonLocalized, 'FATAL'],
      [Field.Code, '28000'],
      [Field.Message, 'no such user'],
      [Field.Hint, 'create it'],
    ]);
    const noHint = parseErrorFields(fatal('08006', 'upstream gone').subarray(5));
    expect(noHint.has(Field.Hint)).toBe(false);
    expect(noHint.get(Field.Message)).toBe('upstream gone');
  });

  it('parseErrorFields stops at a truncated field instead of inventing one', () => {
    const f = parseErrorFields(Buffer.from('SERROR\0Mtrunc'));
    expect([...f]).toEqual([['S', 'ERROR']]);
    expect(parseErrorFields(Buffer.alloc(0)).size).toBe(0);
  });

  it.each([
    ['an empty-bodied message', message(Backend.ParameterStatus, Buffer.alloc(0))],
    ['ReadyForQuery', readyForQuery()],
    ['BackendKeyData (4-byte key)', message(Backend.BackendKeyData, Buffer.from([0, 0, 0, 42, 1, 2, 3, 4]))],
  ])('reads %s split at every boundary', async (_label, f) => {
    await forEverySplit(
      f,
      (r) => readMessage(r),
      (m) => {
        expect(m.type).toBe(f[0]);
        expect(m.body).toEqual(f.subarray(5));
        expect(m.raw).toEqual(f);
      },
    );
  });

  it('reads BackendKeyData with 4- and 32-byte keys; rejects other sizes', async () => {
    for (const len of [4, 32, 256]) {
      const key = Buffer.alloc(len, 0xab);
      const body = Buffer.concat([Buffer.from([0, 0, 0x30, 0x39]), key]);
      await forEverySplit(
        message(Backend.BackendKeyData, body),
        (r) => readMessage(r),
        (m) => expect(parseBackendKey(m.body)).toEqual({ pid: 12345, key }),
      );
    }
    await expectProxyError(() => parseBackendKey(Buffer.alloc(7)), ErrorCode.UpstreamProtocol);
    await expectProxyError(() => parseBackendKey(Buffer.alloc(4 + 257)), ErrorCode.UpstreamProtocol);
  });

  it('parseBackendKey copies the key (not a view on the socket buffer)', () => {
    const body = Buffer.from([0, 0, 0, 1, 9, 9, 9, 9]);
    const { key } = parseBackendKey(body);
    body.fill(0);
    expect(key).toEqual(Buffer.from([9, 9, 9, 9]));
  });

  it.each([
    ['over the max', 101, 100],
    ['negative', -5, 100],
    ['below 4', 3, 100],
    ['huge', 0x7fffffff, MAX_HANDSHAKE_MESSAGE],
  ])('rejects a message length %s before reading the body', async (_label, len, max) => {
    const { stream, reader } = newReader();
    const head = Buffer.alloc(5);
    head[0] = Backend.ErrorResponse;
    head.writeInt32BE(len, 1);
    const p = settle(readMessage(reader, max));
    await feed(stream, [head]);
    const err = await expectProxyError(p, ErrorCode.ClientProtocol);
    expect(err.message).toContain(String(len));
    expect(err.message).toContain("'E'");
  });

  it('accepts a message exactly at the max length', async () => {
    const { stream, reader } = newReader();
    const frame = message(0x70, Buffer.alloc(96, 1)); // length field = 100
    const p = readMessage(reader, 100);
    await feed(stream, [frame]);
    expect((await p).body.length).toBe(96);
  });

  it('uses MAX_HANDSHAKE_MESSAGE by default', async () => {
    const { stream, reader } = newReader();
    const head = Buffer.alloc(5);
    head[0] = 0x70;
    head.writeInt32BE(MAX_HANDSHAKE_MESSAGE + 1, 1);
    const p = settle(readMessage(reader));
    await feed(stream, [head]);
    await expectProxyError(p, ErrorCode.ClientProtocol);
  });

  it('reads several pipelined messages from a single chunk', async () => {
    const frames = [
      authMessage(0),
      message(Backend.ParameterStatus, Buffer.from('a\0b\0')),
      readyForQuery('T'),
    ];
    const { stream, reader } = newReader();
    await feed(stream, [Buffer.concat(frames)]);
    for (const f of frames) expect((await readMessage(reader)).raw).toEqual(f);
    expect(reader.available).toBe(0);
  });
});

describe('parseAuth', () => {
  it('parses Ok (0)', () => {
    expect(parseAuth(authMessage(0))).toMatchObject({ name: 'authenticationOk' });
  });

  it('parses CleartextPassword (3)', () => {
    expect(parseAuth(authMessage(3))).toMatchObject({ name: 'authenticationCleartextPassword' });
  });

  it('parses MD5Password (5) with its salt', () => {
    const auth = parseAuth(authMessage(5, Buffer.from([0xde, 0xad, 0xbe, 0xef])));
    expect(auth.name).toBe('authenticationMD5Password');
    expect(auth.name === 'authenticationMD5Password' && Buffer.from(auth.salt)).toEqual(
      Buffer.from([0xde, 0xad, 0xbe, 0xef]),
    );
  });

  it('parses SASL (10) mechanism lists', () => {
    expect(parseAuth(authMessage(10, Buffer.from('SCRAM-SHA-256\0\0')))).toMatchObject({
      name: 'authenticationSASL',
      mechanisms: ['SCRAM-SHA-256'],
    });
    expect(parseAuth(authMessage(10, Buffer.from('SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0')))).toMatchObject({
      name: 'authenticationSASL',
      mechanisms: ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'],
    });
  });

  it('parses SASLContinue (11) and SASLFinal (12) data', () => {
    const cont = 'r=abcDEF123,s=QSXCR+Q6sek8bf92,i=4096';
    expect(parseAuth(authMessage(11, Buffer.from(cont)))).toMatchObject({
      name: 'authenticationSASLContinue',
      data: cont,
    });
    expect(
      parseAuth(authMessage(12, Buffer.from('v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4='))),
    ).toMatchObject({
      name: 'authenticationSASLFinal',
      data: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
    });
  });

  it.each([2, 6, 7, 8, 9, 13, -1])('maps unknown code %i to other', (code) => {
    expect(parseAuth(authMessage(code))).toEqual({ name: 'other', code });
  });

  it('parses auth frames that arrived split at every boundary', async () => {
    const frame = authMessage(10, Buffer.from('SCRAM-SHA-256\0\0'));
    await forEverySplit(
      frame,
      (r) => readMessage(r),
      (m) => {
        expect(m.type).toBe(Backend.Authentication);
        expect(parseAuth(m.raw)).toMatchObject({ mechanisms: ['SCRAM-SHA-256'] });
      },
    );
  });

  // Regression: pg-protocol names any 'R' frame 'authenticationOk' when code 3/5 has an unexpected length,
  // so a truncated MD5 request (no salt) or a cleartext request with trailing bytes reads as Ok.
  it.each([
    ['MD5 without a salt', authMessage(5)],
    ['MD5 with a 3-byte salt', authMessage(5, Buffer.from([1, 2, 3]))],
    ['cleartext with trailing bytes', authMessage(3, Buffer.from([0]))],
  ])('does not report a malformed request (%s) as authenticationOk', (_label, frame) => {
    let result: ReturnType<typeof parseAuth> | undefined;
    let error: unknown;
    try {
      result = parseAuth(frame);
    } catch (err) {
      error = err;
    }
    if (error !== undefined) {
      expect(error).toBeInstanceOf(ProxyError);
      expect((error as ProxyError).code).toBe(ErrorCode.UpstreamProtocol);
    } else {
      expect(result?.name).not.toBe('authenticationOk');
    }
  });
});

describe('SocketReader', () => {
  it('peek and peekByte do not consume', async () => {
    const { stream, reader } = newReader();
    const pb = reader.peekByte();
    await feed(stream, [Buffer.from([0x16]), Buffer.from('abc'), Buffer.from('def')]);
    expect(await pb).toBe(0x16);
    expect(await reader.peekByte()).toBe(0x16);
    expect(await reader.peek(4)).toEqual(Buffer.from('\x16abc', 'latin1'));
    expect(await reader.peek(7)).toEqual(Buffer.from('\x16abcdef', 'latin1'));
    expect(reader.available).toBe(7);
    expect(await reader.read(2)).toEqual(Buffer.from('\x16a', 'latin1'));
    expect(await reader.peek(2)).toEqual(Buffer.from('bc'));
    expect(await reader.read(5)).toEqual(Buffer.from('bcdef'));
    expect(reader.available).toBe(0);
  });

  it('peek waits for enough bytes', async () => {
    const { stream, reader } = newReader();
    let done = false;
    const p = reader.peek(4).then((b) => {
      done = true;
      return b;
    });
    await feed(stream, [Buffer.from('ab')]);
    expect(done).toBe(false);
    await feed(stream, [Buffer.from('cd')]);
    expect(await p).toEqual(Buffer.from('abcd'));
    expect(reader.available).toBe(4);
  });

  it('detach returns exactly the unconsumed bytes, in order, and stops reading', async () => {
    const { stream, reader } = newReader();
    await feed(stream, [Buffer.from('0123'), Buffer.from('4567'), Buffer.from('89')]);
    expect(await reader.read(3)).toEqual(Buffer.from('012'));
    await reader.peek(5);
    const rest = reader.detach();
    expect(rest).toEqual(Buffer.from('3456789'));
    expect(reader.available).toBe(0);
    expect(stream.isPaused()).toBe(true);
    expect(stream.listenerCount('data')).toBe(0);
    // Later bytes are left in the stream for the next owner.
    stream.write(Buffer.from('after'));
    expect(reader.available).toBe(0);
    expect(stream.read()).toEqual(Buffer.from('after'));
  });

  it('detach of a fresh reader returns an empty buffer', () => {
    const { reader } = newReader();
    expect(reader.detach()).toEqual(Buffer.alloc(0));
  });

  it('property: any chunking and any read sizes yield the stream in order', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 1, maxLength: 200 }),
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 20 }),
        fc.array(fc.integer({ min: 1, max: 30 }), { minLength: 1, maxLength: 20 }),
        async (bytes, chunkSizes, readSizes) => {
          const data = Buffer.from(bytes);
          const { stream, reader } = newReader();
          const chunks: Buffer[] = [];
          for (let off = 0, k = 0; off < data.length; k++) {
            const n = chunkSizes[k % chunkSizes.length] as number;
            chunks.push(data.subarray(off, off + n));
            off += n;
          }
          const got: Buffer[] = [];
          let consumed = 0;
          const reads = (async () => {
            for (let k = 0; ; k++) {
              const n = readSizes[k % readSizes.length] as number;
              if (consumed + n > data.length) break;
              got.push(await reader.read(n));
              consumed += n;
            }
          })();
          await feed(stream, chunks);
          await reads;
          const rest = reader.detach();
          expect(Buffer.concat([...got, rest])).toEqual(data);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('reads what was buffered before the peer ended, then rejects with PeerClosedError', async () => {
    const { stream, reader } = newReader();
    await feed(stream, [Buffer.from('abc')]);
    stream.end();
    await tick();
    expect(reader.closed).toBe(true);
    expect(await reader.read(2)).toEqual(Buffer.from('ab'));
    await expect(reader.read(2)).rejects.toBeInstanceOf(PeerClosedError);
    await expect(reader.peekByte()).resolves.toBe(0x63);
    expect(await reader.read(1)).toEqual(Buffer.from('c'));
    await expect(reader.read(1)).rejects.toBeInstanceOf(PeerClosedError);
    await expect(reader.peek(1)).rejects.toBeInstanceOf(PeerClosedError);
  });

  it('rejects a pending read when the peer ends', async () => {
    const { stream, reader } = newReader();
    const p = rejection(reader.read(10));
    await feed(stream, [Buffer.from('12345')]);
    stream.end();
    expect(await p).toBeInstanceOf(PeerClosedError);
  });

  it('rejects with PeerClosedError carrying the cause when the socket errors', async () => {
    const { stream, reader } = newReader();
    const p = rejection(reader.read(1));
    const boom = new Error('ECONNRESET');
    stream.destroy(boom);
    const err = await p;
    expect(err).toBeInstanceOf(PeerClosedError);
    expect((err as Error).cause).toBe(boom);
  });

  it('rejects with BufferLimitError when the peer sends more than maxBuffered', async () => {
    const { stream, reader } = newReader(16);
    const p = rejection(reader.read(32));
    await feed(stream, [Buffer.alloc(10), Buffer.alloc(7)]);
    const err = await p;
    expect(err).toBeInstanceOf(BufferLimitError);
    expect((err as Error).message).toContain('16');
    expect(reader.closed).toBe(true);
    // The first failure sticks, even after the peer also hangs up.
    stream.end();
    await tick();
    await expect(reader.read(32)).rejects.toBeInstanceOf(BufferLimitError);
  });

  it('does not fail at exactly maxBuffered', async () => {
    const { stream, reader } = newReader(16);
    await feed(stream, [Buffer.alloc(16, 7)]);
    expect(reader.closed).toBe(false);
    expect(await reader.read(16)).toEqual(Buffer.alloc(16, 7));
  });

  it('works over a real TCP socket pair, including peer close', async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    const client = net.connect(port, '127.0.0.1');
    const serverSide = await accepted;
    try {
      const reader = new SocketReader(serverSide);
      const pkt = buildStartup(PROTOCOL_3_0, MANY_PARAMS);
      const p = readStartupPacket(reader);
      for (let i = 0; i < pkt.length; i += 7) {
        client.write(pkt.subarray(i, i + 7));
        await tick();
      }
      const got = await p;
      expect(parseStartupParams(got.body)).toEqual(MANY_PARAMS);
      const pending = rejection(reader.read(4));
      client.end(Buffer.from('xy'));
      expect(await pending).toBeInstanceOf(PeerClosedError);
      expect(reader.detach()).toEqual(Buffer.from('xy'));
    } finally {
      client.destroy();
      serverSide.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
