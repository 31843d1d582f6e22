import path from 'node:path';
import { deflateSync } from 'node:zlib';
import fc from 'fast-check';
import { LocalUsers, makeScramble, nativeToken, sha2Token } from '../../src/engines/mysql/auth';
import { presentedCapabilities } from '../../src/engines/mysql/downstream';
import { CommandScanner, CompressedCommandScanner, GateChannel } from '../../src/engines/mysql/gate';
import { ByteQueue } from '../../src/net/reader';
import { upstreamHandshakeResponse } from '../../src/engines/mysql/upstream';
import {
  AuthPlugin,
  buildAttributes,
  buildAuthSwitch,
  buildChangeUser,
  buildErr,
  buildGreeting,
  buildHandshakeResponse,
  buildSslRequest,
  Cap,
  Command,
  compressedFrame,
  Cursor,
  type Greeting,
  type HandshakeResponse,
  isSslRequest,
  lenencInt,
  MalformedPacket,
  MariaDbCap,
  packet,
  PacketTooLarge,
  parseAttributes,
  parseAuthSwitch,
  parseChangeUser,
  parseErr,
  parseGreeting,
  parseHandshakeResponse,
  readPacket,
  switchScramble,
} from '../../src/engines/mysql/wire';
// mysql2's own token code: the proxy's checks must accept what a real client computes.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const auth41 = require(path.join(path.dirname(require.resolve('mysql2')), 'lib', 'auth_41.js')) as {
  calculateToken(pw: string, s1: Buffer, s2: Buffer): Buffer;
};

/** Feeds `bytes` to a ByteQueue in pieces cut at `cuts`, concurrently with `consume`. */
async function fedSplit<T>(bytes: Buffer, cuts: number[], consume: (r: ByteQueue) => Promise<T>): Promise<T> {
  const r = new ByteQueue(1 << 24);
  const result = consume(r);
  let at = 0;
  for (const c of [...cuts, bytes.length]) {
    r.push(bytes.subarray(at, c));
    at = c;
    await Promise.resolve();
  }
  return result;
}

const MYSQL_CAPS =
  Cap.LONG_PASSWORD |
  Cap.FOUND_ROWS |
  Cap.LONG_FLAG |
  Cap.CONNECT_WITH_DB |
  Cap.COMPRESS |
  Cap.LOCAL_FILES |
  Cap.PROTOCOL_41 |
  Cap.SSL |
  Cap.TRANSACTIONS |
  Cap.SECURE_CONNECTION |
  Cap.MULTI_STATEMENTS |
  Cap.MULTI_RESULTS |
  Cap.PS_MULTI_RESULTS |
  Cap.PLUGIN_AUTH |
  Cap.CONNECT_ATTRS |
  Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA |
  Cap.SESSION_TRACK |
  Cap.DEPRECATE_EOF |
  Cap.ZSTD_COMPRESSION_ALGORITHM |
  Cap.QUERY_ATTRIBUTES |
  Cap.MULTI_FACTOR_AUTHENTICATION;

const mysqlGreeting: Greeting = {
  serverVersion: '8.0.39',
  connectionId: 0x01020304,
  scramble: Buffer.from('abcdefghijklmnopqrst'),
  capabilities: MYSQL_CAPS >>> 0,
  mariadbCapabilities: 0,
  charset: 255,
  status: 0x0002,
  authPlugin: AuthPlugin.CACHING_SHA2,
};

const mariaGreeting: Greeting = {
  serverVersion: '5.5.5-10.11.9-MariaDB-0+deb12u1',
  connectionId: 42,
  scramble: makeScramble(),
  capabilities: (MYSQL_CAPS & ~Cap.LONG_PASSWORD & ~Cap.ZSTD_COMPRESSION_ALGORITHM) >>> 0,
  mariadbCapabilities:
    MariaDbCap.PROGRESS |
    MariaDbCap.STMT_BULK_OPERATIONS |
    MariaDbCap.EXTENDED_METADATA |
    MariaDbCap.CACHE_METADATA,
  charset: 45,
  status: 0x0002,
  authPlugin: AuthPlugin.NATIVE,
};

describe('packet framing', () => {
  const packets = [
    packet(0, Buffer.from([0x03, ...Buffer.from('select 1')])),
    packet(1, Buffer.alloc(0)),
    packet(255, Buffer.alloc(300, 7)),
    packet(7, Buffer.from([0xff, 0x15, 0x04])),
  ];
  const stream = Buffer.concat(packets);

  test('reads packets fed split at every byte', async () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const got = await fedSplit(stream, [cut], async (r) => {
        const out = [];
        for (let i = 0; i < packets.length; i++) out.push(await readPacket(r));
        return out;
      });
      expect(got.map((p) => packet(p.seq, p.payload))).toEqual(packets);
    }
  });

  test('reads packets fed one byte at a time', async () => {
    const cuts = Array.from({ length: stream.length }, (_, i) => i);
    const got = await fedSplit(stream, cuts, async (r) => {
      const out = [];
      for (let i = 0; i < packets.length; i++) out.push(await readPacket(r));
      return out;
    });
    expect(Buffer.concat(got.map((p) => packet(p.seq, p.payload)))).toEqual(stream);
  });

  test('refuses an oversized packet before reading its payload', async () => {
    const r = new ByteQueue(1024);
    r.push(Buffer.from([0xff, 0xff, 0x7f, 0x00]));
    await expect(readPacket(r, 1000)).rejects.toBeInstanceOf(PacketTooLarge);
  });

  test('length-encoded integers round-trip at every width boundary', () => {
    for (const n of [0, 1, 250, 251, 252, 0xffff, 0x10000, 0xffffff, 0x1000000, 2 ** 40]) {
      expect(new Cursor(lenencInt(n), 'int').lenenc()).toBe(n);
    }
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        (n) => new Cursor(lenencInt(n), 'int').lenenc() === n,
      ),
    );
  });
});

describe('greeting (Handshake v10)', () => {
  test.each([
    ['MySQL 8', mysqlGreeting],
    ['MariaDB with extended capabilities', mariaGreeting],
  ])('%s round-trips', (_name, g) => {
    expect(parseGreeting(buildGreeting(g))).toEqual(g);
  });

  test('MariaDB extended capabilities sit in the last 4 reserved bytes only when CLIENT_MYSQL is unset', () => {
    const b = buildGreeting(mariaGreeting);
    const reservedAt = 1 + mariaGreeting.serverVersion.length + 1 + 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1;
    expect(b.readUInt32LE(reservedAt + 6)).toBe(mariaGreeting.mariadbCapabilities);
    const mysql = buildGreeting({
      ...mariaGreeting,
      capabilities: mariaGreeting.capabilities | Cap.LONG_PASSWORD,
    });
    expect(mysql.subarray(reservedAt, reservedAt + 10)).toEqual(Buffer.alloc(10));
    expect(parseGreeting(mysql).mariadbCapabilities).toBe(0);
  });

  test('arbitrary greetings round-trip', () => {
    fc.assert(
      fc.property(
        fc.record({
          serverVersion: fc.string({ minLength: 1, maxLength: 60 }).filter((s) => !s.includes('\0')),
          connectionId: fc.nat({ max: 0xffffffff }),
          scrambleSeed: fc.nat(),
          capabilities: fc.nat({ max: 0xffffffff }),
          mariadbCapabilities: fc.nat({ max: 0xffffffff }),
          charset: fc.nat({ max: 255 }),
          status: fc.nat({ max: 0xffff }),
          authPlugin: fc.constantFrom(AuthPlugin.NATIVE, AuthPlugin.CACHING_SHA2, 'client_ed25519'),
        }),
        (r) => {
          const caps = (r.capabilities | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.PROTOCOL_41) >>> 0;
          const g: Greeting = {
            serverVersion: r.serverVersion,
            connectionId: r.connectionId,
            scramble: makeScramble(),
            capabilities: caps,
            mariadbCapabilities: caps & Cap.LONG_PASSWORD ? 0 : r.mariadbCapabilities,
            charset: r.charset,
            status: r.status,
            authPlugin: r.authPlugin,
          };
          expect(parseGreeting(buildGreeting(g))).toEqual(g);
        },
      ),
    );
  });

  test('a truncated greeting is malformed, never a crash', () => {
    const b = buildGreeting(mariaGreeting);
    for (let n = 0; n < 40; n++) {
      try {
        parseGreeting(b.subarray(0, n));
      } catch (err) {
        expect(err).toBeInstanceOf(MalformedPacket);
      }
    }
    expect(() => parseGreeting(Buffer.from([9, 0x33, 0]))).toThrow(/protocol version 9/);
  });

  test('presented capabilities: SSL only with local TLS; zstd and MFA stripped; compression kept', () => {
    const on = presentedCapabilities(mysqlGreeting.capabilities, true);
    const off = presentedCapabilities(mysqlGreeting.capabilities, false);
    expect(on & Cap.SSL).toBe(Cap.SSL);
    expect(off & Cap.SSL).toBe(0);
    for (const c of [on, off]) {
      expect(c & Cap.ZSTD_COMPRESSION_ALGORITHM).toBe(0);
      expect(c & Cap.MULTI_FACTOR_AUTHENTICATION).toBe(0);
      expect(c & Cap.COMPRESS).toBe(Cap.COMPRESS);
      expect(c & Cap.DEPRECATE_EOF).toBe(Cap.DEPRECATE_EOF);
      expect(c & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA).toBe(Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA);
    }
  });
});

describe('HandshakeResponse41', () => {
  const attrs = buildAttributes([
    ['_client_name', 'libmariadb'],
    ['program_name', 'mysql'],
    ['app', 'x'.repeat(300)],
  ]);
  const base: HandshakeResponse = {
    capabilities:
      (Cap.PROTOCOL_41 |
        Cap.SECURE_CONNECTION |
        Cap.PLUGIN_AUTH |
        Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA |
        Cap.CONNECT_WITH_DB |
        Cap.CONNECT_ATTRS |
        Cap.SSL) >>>
      0,
    mariadbCapabilities: MariaDbCap.PROGRESS | MariaDbCap.CACHE_METADATA,
    maxPacketSize: 16 * 1024 * 1024,
    charset: 45,
    user: 'alice',
    authData: Buffer.from('token'.repeat(400) + '\0'), // 2 KB: lenenc with a 0xfc prefix
    database: 'appdb',
    authPlugin: AuthPlugin.CLEAR,
    attributes: attrs,
  };

  test('round-trips with lenenc auth data over 251 bytes and connection attributes', () => {
    const parsed = parseHandshakeResponse(buildHandshakeResponse(base));
    expect(parsed).toEqual(base);
    expect(parseAttributes(parsed.attributes as Buffer)).toEqual([
      ['_client_name', 'libmariadb'],
      ['program_name', 'mysql'],
      ['app', 'x'.repeat(300)],
    ]);
  });

  test('a 4 KB token and 64 KB of attributes fit', () => {
    const big = {
      ...base,
      authData: Buffer.alloc(4096, 0x41),
      attributes: buildAttributes([['k', 'v'.repeat(65_000)]]),
    };
    expect(parseHandshakeResponse(buildHandshakeResponse(big))).toEqual(big);
  });

  test('MySQL clients (CLIENT_MYSQL set) carry no extended capabilities', () => {
    const r = { ...base, capabilities: base.capabilities | Cap.LONG_PASSWORD, mariadbCapabilities: 0 };
    const b = buildHandshakeResponse(r);
    expect(b.subarray(9, 32)).toEqual(Buffer.alloc(23));
    expect(parseHandshakeResponse(b)).toEqual(r);
  });

  test('without LENENC the auth data has a 1-byte length; without SECURE_CONNECTION it is NUL-terminated', () => {
    const short = {
      ...base,
      capabilities: base.capabilities & ~Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA,
      authData: Buffer.alloc(20, 1),
    };
    expect(parseHandshakeResponse(buildHandshakeResponse(short))).toEqual(short);
    expect(() => buildHandshakeResponse({ ...short, authData: Buffer.alloc(256) })).toThrow(RangeError);
    const old = { ...short, capabilities: short.capabilities & ~Cap.SECURE_CONNECTION };
    expect(parseHandshakeResponse(buildHandshakeResponse(old))).toEqual(old);
  });

  test('optional trailing fields may be absent', () => {
    const minimal = {
      ...base,
      capabilities: base.capabilities & ~(Cap.CONNECT_WITH_DB | Cap.CONNECT_ATTRS | Cap.PLUGIN_AUTH),
    };
    const r = parseHandshakeResponse(buildHandshakeResponse(minimal));
    expect(r.user).toBe('alice');
    expect(r.authPlugin).toBeUndefined();
    // flags set, fields not sent (the packet ends after the auth data)
    const cut = parseHandshakeResponse(
      buildHandshakeResponse(base).subarray(0, 32 + 6 + 3 + base.authData.length),
    );
    expect(cut.database).toBeUndefined();
    expect(cut.attributes).toBeUndefined();
  });

  test('SSLRequest is the 32-byte prefix with CLIENT_SSL', () => {
    const ssl = buildSslRequest(
      base.capabilities & ~Cap.SSL,
      base.mariadbCapabilities,
      base.maxPacketSize,
      base.charset,
    );
    expect(isSslRequest(ssl)).toBe(true);
    expect(ssl).toEqual(buildHandshakeResponse(base).subarray(0, 32));
    expect(isSslRequest(buildHandshakeResponse(base))).toBe(false);
  });

  test('arbitrary responses round-trip', () => {
    fc.assert(
      fc.property(
        fc.record({
          flags: fc.nat({ max: 0xffffffff }),
          user: fc.string({ maxLength: 40 }).filter((s) => !s.includes('\0')),
          auth: fc.uint8Array({ maxLength: 5000 }),
          db: fc.string({ maxLength: 40 }).filter((s) => !s.includes('\0')),
          attrs: fc.array(fc.tuple(fc.string({ maxLength: 30 }), fc.string({ maxLength: 300 })), {
            maxLength: 5,
          }),
          mariadb: fc.nat({ max: 0xffffffff }),
        }),
        (r) => {
          const caps =
            (r.flags |
              Cap.PROTOCOL_41 |
              Cap.SECURE_CONNECTION |
              Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA |
              Cap.PLUGIN_AUTH) &
            ~Cap.ZSTD_COMPRESSION_ALGORITHM;
          const resp: HandshakeResponse = {
            capabilities: caps >>> 0,
            mariadbCapabilities: caps & Cap.LONG_PASSWORD ? 0 : r.mariadb,
            maxPacketSize: 1 << 24,
            charset: 33,
            user: r.user,
            authData: Buffer.from(r.auth),
            authPlugin: AuthPlugin.CLEAR,
          };
          if (caps & Cap.CONNECT_WITH_DB) resp.database = r.db;
          if (caps & Cap.CONNECT_ATTRS) resp.attributes = buildAttributes(r.attrs);
          expect(parseHandshakeResponse(buildHandshakeResponse(resp))).toEqual(resp);
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('upstream response', () => {
  const client: HandshakeResponse = {
    capabilities:
      (Cap.LONG_PASSWORD |
        Cap.PROTOCOL_41 |
        Cap.SECURE_CONNECTION |
        Cap.PLUGIN_AUTH |
        Cap.COMPRESS |
        Cap.DEPRECATE_EOF |
        Cap.MULTI_STATEMENTS |
        Cap.CONNECT_ATTRS |
        Cap.CONNECT_WITH_DB) >>>
      0,
    mariadbCapabilities: 0,
    maxPacketSize: 1234567,
    charset: 224,
    user: 'app',
    authData: Buffer.alloc(20, 9),
    database: 'appdb',
    authPlugin: AuthPlugin.NATIVE,
    attributes: buildAttributes([['_client_name', 'Node-MySQL-2']]),
  };

  test("keeps the client's command-phase capabilities and adds what the login needs", () => {
    const r = upstreamHandshakeResponse(client, mariaGreeting, 'iam_user', 'appdb');
    const commandPhase =
      Cap.COMPRESS | Cap.DEPRECATE_EOF | Cap.MULTI_STATEMENTS | Cap.LONG_PASSWORD | Cap.PROTOCOL_41;
    expect(r.capabilities & commandPhase).toBe(client.capabilities & commandPhase);
    for (const f of [
      Cap.SSL,
      Cap.PLUGIN_AUTH,
      Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA,
      Cap.SECURE_CONNECTION,
      Cap.PROTOCOL_41,
      Cap.CONNECT_ATTRS,
    ]) {
      expect(r.capabilities & f).toBe(f);
    }
    expect(r).toMatchObject({
      user: 'iam_user',
      database: 'appdb',
      charset: 224,
      maxPacketSize: 1234567,
      attributes: client.attributes,
    });
  });

  test('CONNECT_WITH_DB follows the database actually sent', () => {
    expect(
      upstreamHandshakeResponse(client, mariaGreeting, 'u', undefined).capabilities & Cap.CONNECT_WITH_DB,
    ).toBe(0);
    const noDb = { ...client, capabilities: client.capabilities & ~Cap.CONNECT_WITH_DB };
    expect(
      upstreamHandshakeResponse(noDb, mariaGreeting, 'u', 'fixed').capabilities & Cap.CONNECT_WITH_DB,
    ).toBe(Cap.CONNECT_WITH_DB);
  });
});

describe('ERR and auth packets', () => {
  test('ERR with and without the SQLSTATE marker', () => {
    const e = buildErr({ errno: 1045, sqlState: '28000', message: "Access denied for user 'alice'" });
    expect(e.subarray(0, 9)).toEqual(Buffer.from([0xff, 0x15, 0x04, 0x23, 0x32, 0x38, 0x30, 0x30, 0x30]));
    expect(parseErr(e)).toEqual({
      errno: 1045,
      sqlState: '28000',
      message: "Access denied for user 'alice'",
    });
    const old = buildErr({ errno: 1251, message: 'Client does not support authentication protocol' });
    expect(old[3]).not.toBe(0x23);
    expect(parseErr(old)).toEqual({
      errno: 1251,
      message: 'Client does not support authentication protocol',
    });
  });

  test('AuthSwitchRequest round-trips; the scramble loses its NUL', () => {
    const s = makeScramble();
    const sw = parseAuthSwitch(buildAuthSwitch(AuthPlugin.CLEAR, Buffer.concat([s, Buffer.from([0])])));
    expect(sw.plugin).toBe(AuthPlugin.CLEAR);
    expect(switchScramble(sw.data)).toEqual(s);
  });

  test('COM_CHANGE_USER round-trips (mysql2 layout: charset, plugin, attributes)', () => {
    const caps = Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.CONNECT_ATTRS;
    const cu = {
      user: 'bob',
      authData: Buffer.alloc(20, 3),
      database: 'otherdb',
      charset: 224,
      authPlugin: AuthPlugin.NATIVE,
      attributes: buildAttributes([['a', 'b']]),
    };
    const b = buildChangeUser(cu, caps);
    expect(b[0]).toBe(Command.CHANGE_USER);
    expect(parseChangeUser(b, caps)).toEqual(cu);
    expect(
      parseChangeUser(buildChangeUser({ user: 'x', authData: Buffer.alloc(0), database: '' }, caps), caps),
    ).toEqual({
      user: 'x',
      authData: Buffer.alloc(0),
      database: '',
    });
  });
});

describe('parsers on hostile input', () => {
  test('random bytes either parse or throw MalformedPacket', () => {
    const parsers: ((b: Buffer) => unknown)[] = [
      parseGreeting,
      parseHandshakeResponse,
      parseErr,
      parseAuthSwitch,
      parseAttributes,
      (b) => parseChangeUser(b, Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.CONNECT_ATTRS),
    ];
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 120 }),
        fc.constantFrom(0x0a, 0xff, 0xfe, 0x11, 0x00),
        (bytes, head) => {
          const b = Buffer.from([head, ...bytes]);
          for (const parse of parsers) {
            for (const input of [b, Buffer.from(bytes)]) {
              try {
                parse(input);
              } catch (err) {
                expect(err).toBeInstanceOf(MalformedPacket);
              }
            }
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe('password checks', () => {
  const users = new LocalUsers([{ name: 'app', password: 's3cret' }]);
  const scramble = makeScramble();

  test("mysql_native_password: accepts mysql2's token, refuses a wrong one", () => {
    const token = auth41.calculateToken('s3cret', scramble.subarray(0, 8), scramble.subarray(8));
    expect(token).toEqual(nativeToken('s3cret', scramble));
    expect(users.verify('app', AuthPlugin.NATIVE, token, scramble, false)).toBe(true);
    expect(users.verify('app', AuthPlugin.NATIVE, nativeToken('wrong', scramble), scramble, false)).toBe(
      false,
    );
    expect(users.verify('nobody', AuthPlugin.NATIVE, token, scramble, false)).toBe(false);
  });

  test('caching_sha2_password fast path', () => {
    expect(users.verify('app', AuthPlugin.CACHING_SHA2, sha2Token('s3cret', scramble), scramble, false)).toBe(
      true,
    );
    expect(users.verify('app', AuthPlugin.CACHING_SHA2, sha2Token('nope', scramble), scramble, false)).toBe(
      false,
    );
  });

  test('mysql_clear_password only over a secure connection', () => {
    const clear = Buffer.from('s3cret\0');
    expect(users.verify('app', AuthPlugin.CLEAR, clear, scramble, true)).toBe(true);
    expect(users.verify('app', AuthPlugin.CLEAR, clear, scramble, false)).toBe(false);
    expect(users.verify('app', 'client_ed25519', clear, scramble, true)).toBe(false);
  });

  test('scrambles are 20 printable bytes', () => {
    const s = makeScramble();
    expect(s).toHaveLength(20);
    for (const b of s) expect(b >= 33 && b <= 126).toBe(true);
  });
});

describe('command scanner (client -> server)', () => {
  const cmd = (seq: number, command: number, body = 'x'): Buffer =>
    packet(seq, Buffer.concat([Buffer.from([command]), Buffer.from(body)]));
  const changeUser = cmd(0, Command.CHANGE_USER, 'bob\0');

  /** Scans `stream` cut at `cuts`; returns forwarded bytes and the intercepted tail. */
  function run(
    scanner: CommandScanner | CompressedCommandScanner,
    stream: Buffer,
    cuts: number[],
  ): { forwarded: Buffer; intercept?: Buffer } {
    const fwd: Buffer[] = [];
    let at = 0;
    for (const c of [...cuts, stream.length]) {
      const r = scanner.scan(stream.subarray(at, c));
      fwd.push(...r.forward);
      if (r.intercept)
        return { forwarded: Buffer.concat(fwd), intercept: Buffer.concat([r.intercept, stream.subarray(c)]) };
      at = c;
    }
    return { forwarded: Buffer.concat(fwd) };
  }

  test('forwards ordinary commands unchanged, split at every byte', () => {
    const stream = Buffer.concat([
      cmd(0, Command.QUERY, 'select 1'),
      cmd(0, 0x16, 'prepare'),
      cmd(0, Command.RESET_CONNECTION, ''),
    ]);
    for (let cut = 0; cut <= stream.length; cut++) {
      const r = run(new CommandScanner(), stream, [cut]);
      expect(r.intercept).toBeUndefined();
      expect(r.forwarded).toEqual(stream);
    }
  });

  test('takes out a COM_CHANGE_USER at a command start, split at every byte', () => {
    const before = cmd(0, Command.QUERY, 'select 1');
    const stream = Buffer.concat([before, changeUser, cmd(0, Command.QUERY, 'after')]);
    for (let cut = 0; cut <= stream.length; cut++) {
      const r = run(new CommandScanner(), stream, [cut]);
      expect(r.forwarded).toEqual(before);
      expect(r.intercept).toEqual(stream.subarray(before.length));
    }
  });

  test('0x11 inside LOAD DATA contents (sequence ids wrapping through 0) is not a command', () => {
    const parts = [cmd(0, Command.QUERY, "LOAD DATA LOCAL INFILE 'f' INTO TABLE t")];
    for (let i = 0; i < 300; i++)
      parts.push(packet((i + 2) & 0xff, Buffer.from([Command.CHANGE_USER, i & 0xff])));
    parts.push(packet((300 + 2) & 0xff, Buffer.alloc(0)));
    const stream = Buffer.concat(parts);
    const r = run(new CommandScanner(), stream, [17, 1000]);
    expect(r.intercept).toBeUndefined();
    expect(r.forwarded).toEqual(stream);
    // after the empty packet, commands are recognised again
    const s2 = new CommandScanner();
    run(s2, stream, []);
    expect(s2.scan(changeUser).intercept).toEqual(changeUser);
  });

  test('continuations of a 16 MB packet are not commands', () => {
    const big = Buffer.alloc(0xffffff, 0x11);
    big[0] = Command.QUERY;
    const stream = Buffer.concat([packet0(0, big), packet(1, Buffer.from([Command.CHANGE_USER, 1, 2]))]);
    const r = run(new CommandScanner(), stream, [5, 70000]);
    expect(r.intercept).toBeUndefined();
    expect(r.forwarded.length).toBe(stream.length);
  });

  test('compressed frames: forwarded whole, COM_CHANGE_USER found inside zlib and stored frames', () => {
    const q = cmd(0, Command.QUERY, 'select ' + 'x'.repeat(200));
    const zq = Buffer.concat([compHeader(deflateSync(q).length, 0, q.length), deflateSync(q)]);
    const cu = compressedFrame(0, changeUser);
    const stream = Buffer.concat([zq, cu, compressedFrame(0, cmd(0, Command.QUERY, 'after'))]);
    for (let cut = 0; cut <= stream.length; cut += 3) {
      const r = run(new CompressedCommandScanner(), stream, [cut]);
      expect(r.forwarded).toEqual(zq);
      expect(r.intercept).toEqual(stream.subarray(zq.length));
    }
  });

  test('GateChannel reads the intercepted packet back and answers with the next compressed sequence id', async () => {
    const sent: Buffer[] = [];
    const feed = new ByteQueue(1 << 20);
    feed.push(compressedFrame(0, changeUser));
    const ch = new GateChannel(feed, (b) => sent.push(b), true);
    const p = await ch.read();
    expect(packet(p.seq, p.payload)).toEqual(changeUser);
    ch.write(1, Buffer.from([0]));
    expect(sent[0]).toEqual(compressedFrame(1, packet(1, Buffer.from([0]))));
  });

  test('fuzz: forwarded + intercepted bytes always equal the input', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            seq: fc.nat({ max: 3 }),
            cmd: fc.constantFrom(Command.QUERY, Command.CHANGE_USER, 0x16),
            len: fc.nat({ max: 40 }),
          }),
          { maxLength: 12 },
        ),
        fc.array(fc.nat(), { maxLength: 6 }),
        (pkts, rawCuts) => {
          const stream = Buffer.concat(
            pkts.map((p) => packet(p.seq, Buffer.concat([Buffer.from([p.cmd]), Buffer.alloc(p.len)]))),
          );
          const cuts = [...new Set(rawCuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
          const r = run(new CommandScanner(), stream, cuts);
          expect(Buffer.concat([r.forwarded, r.intercept ?? Buffer.alloc(0)])).toEqual(stream);
          if (r.intercept) expect(r.intercept[4]).toBe(Command.CHANGE_USER);
        },
      ),
    );
  });
});

/** A packet header + payload without packet()'s 16 MB guard (continuation tests). */
function packet0(seq: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUIntLE(payload.length, 0, 3);
  h[3] = seq;
  return Buffer.concat([h, payload]);
}

function compHeader(compLen: number, seq: number, uncompLen: number): Buffer {
  const h = Buffer.alloc(7);
  h.writeUIntLE(compLen, 0, 3);
  h[3] = seq;
  h.writeUIntLE(uncompLen, 4, 3);
  return h;
}
