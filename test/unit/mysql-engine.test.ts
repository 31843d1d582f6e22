/**
 * The MySQL engine against a scripted fake server (in-process, real TLS): what the proxy sends
 * upstream byte for byte, and how every failure reaches the client as an ERR packet.
 */
import net from 'node:net';
import tls from 'node:tls';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mysql from 'mysql2/promise';
import { createCA, issueCert } from '../../src/net/certs';
import { acceptTls } from '../../src/net/localTls';
import { SocketReader } from '../../src/net/reader';
import { sha2Token } from '../../src/engines/mysql/auth';
import {
  AuthPlugin,
  buildAuthSwitch,
  buildErr,
  buildGreeting,
  buildHandshakeResponse,
  Cap,
  type Greeting,
  type HandshakeResponse,
  MariaDbCap,
  type Packet,
  packet,
  parseAttributes,
  parseErr,
  parseGreeting,
  parseHandshakeResponse,
  readPacket,
} from '../../src/engines/mysql/wire';
import { startTestProxy, type TestProxy } from '../harness/proxy';

const ENDPOINT = 'fake.cluster-abc.us-east-1.rds.amazonaws.com';
const ca = createCA('fake upstream CA');
const leaf = issueCert(ca, { commonName: ENDPOINT, dnsNames: [ENDPOINT] });
const dir = mkdtempSync(path.join(os.tmpdir(), 'mysql-engine-test-'));
const caFile = path.join(dir, 'ca.pem');
writeFileSync(caFile, ca.cert);
const serverContext = tls.createSecureContext({ cert: leaf.cert, key: leaf.key });
const OK = Buffer.from([0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]);

const baseGreeting: Greeting = {
  serverVersion: '5.5.5-10.11.99-MariaDB-fake',
  connectionId: 777,
  scramble: Buffer.from('ABCDEFGHIJKLMNOPQRST'),
  capabilities:
    (Cap.FOUND_ROWS |
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
      Cap.DEPRECATE_EOF) >>>
    0,
  mariadbCapabilities: MariaDbCap.PROGRESS | MariaDbCap.STMT_BULK_OPERATIONS | MariaDbCap.EXTENDED_METADATA,
  charset: 45,
  status: 2,
  authPlugin: AuthPlugin.NATIVE,
};

/** One connection as the fake server sees it. */
class FakeConn {
  reader: SocketReader;
  socket: net.Socket | tls.TLSSocket;
  constructor(readonly raw: net.Socket) {
    this.socket = raw;
    this.reader = new SocketReader(raw);
  }
  send(seq: number, payload: Buffer): void {
    this.socket.write(packet(seq, payload));
  }
  read(): Promise<Packet> {
    return readPacket(this.reader, 1 << 20);
  }
  async startTls(): Promise<void> {
    const s = await acceptTls(this.raw, serverContext, this.reader.detach());
    this.socket = s;
    this.reader = new SocketReader(s);
  }
  /** The standard opening: greeting, SSLRequest, TLS, HandshakeResponse41. */
  async open(g: Greeting = baseGreeting): Promise<{ ssl: Buffer; response: Buffer }> {
    this.send(0, buildGreeting(g));
    const ssl = (await this.read()).payload;
    await this.startTls();
    const response = (await this.read()).payload;
    return { ssl, response };
  }
}

type Script = (c: FakeConn) => Promise<void>;

/** A fake upstream running `script` for each connection (the latest script set wins). */
class FakeServer {
  script: Script = async () => undefined;
  readonly server = net.createServer((s) => {
    s.on('error', () => undefined);
    const c = new FakeConn(s);
    this.script(c).catch(() => s.destroy());
  });
  listen(): Promise<number> {
    return new Promise((resolve) =>
      this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as net.AddressInfo).port)),
    );
  }
}

const fake = new FakeServer();
let proxy: TestProxy;
let port: number;
let pwPort: number;
let timeoutPort: number;
let deadPort: number;

beforeAll(async () => {
  const upPort = await fake.listen();
  const dead = net.createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
  deadPort = (dead.address() as net.AddressInfo).port;
  await new Promise<void>((r) => dead.close(() => r()));
  const upstream = { host: ENDPOINT, port: upPort, address: '127.0.0.1', tls: { ca: caFile } };
  proxy = await startTestProxy(
    {
      localTls: { caFile: path.join(dir, 'local-ca.pem') },
      listeners: [
        {
          name: 'trust',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream,
          auth: { mode: 'iam', region: 'us-east-1' },
          client: { tls: 'off', auth: 'trust' },
        },
        {
          name: 'pw',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream: { ...upstream, user: 'iam_app' },
          auth: { mode: 'iam', region: 'us-east-1' },
          client: { tls: 'auto', auth: 'password', users: [{ name: 'app', password: { env: 'APP_PW' } }] },
        },
        {
          name: 'slow',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream,
          auth: { mode: 'iam', region: 'us-east-1' },
          client: { tls: 'off', auth: 'trust' },
          handshakeTimeoutMs: 300,
        },
        {
          name: 'one',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream,
          auth: { mode: 'iam', region: 'us-east-1' },
          client: { tls: 'off', auth: 'trust' },
          maxConnections: 1,
        },
        {
          name: 'dead',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream: { ...upstream, port: deadPort },
          auth: { mode: 'iam', region: 'us-east-1' },
          client: { tls: 'off', auth: 'trust' },
        },
      ],
    },
    { env: { ...process.env, APP_PW: 'local-secret' } },
  );
  port = proxy.port('trust');
  pwPort = proxy.port('pw');
  timeoutPort = proxy.port('slow');
  void timeoutPort;
});

afterAll(async () => {
  await proxy?.close();
  fake.server.close();
});

const connect = (o: mysql.ConnectionOptions = {}): Promise<mysql.Connection> =>
  mysql.createConnection({ host: '127.0.0.1', port, user: 'alice', connectTimeout: 5000, ...o });

/** The error a mysql2 connect fails with. */
async function connectError(
  o: mysql.ConnectionOptions = {},
): Promise<{ errno?: number; sqlState?: string; message: string }> {
  try {
    const c = await connect(o);
    c.destroy();
  } catch (err) {
    return err as { errno?: number; sqlState?: string; message: string };
  }
  throw new Error('connected, but a failure was expected');
}

/** Connects raw, returns the greeting and a reader. */
async function rawClient(
  p: number,
): Promise<{ socket: net.Socket; reader: SocketReader; greeting: Greeting }> {
  const socket = net.connect(p, '127.0.0.1');
  socket.on('error', () => undefined);
  const reader = new SocketReader(socket);
  const first = await readPacket(reader);
  return { socket, reader, greeting: parseGreeting(first.payload) };
}

describe('what the proxy sends upstream', () => {
  test('SSLRequest then HandshakeResponse41 with the client capabilities, attributes, database, charset and the token', async () => {
    let seen: { ssl: Buffer; response: HandshakeResponse } | undefined;
    fake.script = async (c) => {
      const { ssl, response } = await c.open();
      seen = { ssl, response: parseHandshakeResponse(response) };
      c.send(3, OK);
    };
    const conn = await connect({
      database: 'appdb',
      charset: 'UTF8MB4_UNICODE_CI',
      connectAttributes: { app_tag: 'proxy-test' },
    });
    const clientFlags = (conn as unknown as { connection: { config: { clientFlags: number } } }).connection
      .config.clientFlags;
    const handshake = (
      conn as unknown as {
        connection: {
          _handshakePacket: { serverVersion: string; connectionId: number; capabilityFlags: number };
        };
      }
    ).connection._handshakePacket;
    conn.destroy();
    expect(handshake.serverVersion).toBe(baseGreeting.serverVersion);
    expect(handshake.connectionId).toBe(777);
    expect(conn.threadId).toBe(777);
    expect(handshake.capabilityFlags & Cap.SSL).toBe(0); // client.tls: off
    expect(handshake.capabilityFlags & Cap.COMPRESS).toBe(Cap.COMPRESS);

    const r = seen?.response as HandshakeResponse;
    expect(r.user).toBe('alice');
    expect(r.database).toBe('appdb');
    expect(r.charset).toBe(224); // utf8mb4_unicode_ci
    expect(r.authPlugin).toBe(AuthPlugin.CLEAR);
    const token = r.authData.toString('utf8');
    expect(token.endsWith('\0')).toBe(true);
    expect(token.length).toBeGreaterThan(1000);
    expect(token).toContain(
      `${ENDPOINT}:${fake.server.address() && (fake.server.address() as net.AddressInfo).port}/?Action=connect&DBUser=alice`,
    );
    expect(token).toContain('X-Amz-Security-Token=');
    const attrs = new Map(parseAttributes(r.attributes as Buffer));
    expect(attrs.get('app_tag')).toBe('proxy-test');
    expect(attrs.get('_client_name')).toBe('Node-MySQL-2');
    for (const f of [
      Cap.SSL,
      Cap.PLUGIN_AUTH,
      Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA,
      Cap.SECURE_CONNECTION,
      Cap.PROTOCOL_41,
      Cap.CONNECT_WITH_DB,
      Cap.CONNECT_ATTRS,
    ]) {
      expect(r.capabilities & f).toBe(f);
    }
    expect(r.capabilities & Cap.COMPRESS).toBe(clientFlags & Cap.COMPRESS);
    expect(r.capabilities & Cap.DEPRECATE_EOF).toBe(clientFlags & Cap.DEPRECATE_EOF);
    expect(r.capabilities & Cap.MULTI_STATEMENTS).toBe(clientFlags & Cap.MULTI_STATEMENTS);
    // The SSLRequest is the response's first 32 bytes: the server keeps the capabilities it names.
    expect(seen?.ssl).toEqual(buildHandshakeResponse(r).subarray(0, 32));
  });

  test("the upstream leg uses exactly the client's negotiated capabilities, plus SSL and the login's", async () => {
    let seen: HandshakeResponse | undefined;
    fake.script = async (c) => {
      seen = parseHandshakeResponse((await c.open()).response);
      c.send(3, OK);
    };
    const { socket, reader, greeting } = await rawClient(port);
    const caps =
      (Cap.PROTOCOL_41 |
        Cap.SECURE_CONNECTION |
        Cap.PLUGIN_AUTH |
        Cap.FOUND_ROWS |
        Cap.COMPRESS |
        Cap.DEPRECATE_EOF |
        Cap.SESSION_TRACK |
        Cap.MULTI_RESULTS |
        Cap.LOCAL_FILES |
        Cap.INTERACTIVE) >>>
      0;
    const mariadb = MariaDbCap.PROGRESS | MariaDbCap.EXTENDED_METADATA;
    socket.write(
      packet(
        1,
        buildHandshakeResponse({
          capabilities: caps,
          mariadbCapabilities: mariadb,
          maxPacketSize: 4096,
          charset: 8,
          user: 'alice',
          authData: Buffer.alloc(20),
          authPlugin: AuthPlugin.NATIVE,
        }),
      ),
    );
    expect(await readPacket(reader)).toEqual({ seq: 2, payload: OK });
    socket.destroy();
    expect(greeting.capabilities & Cap.SSL).toBe(0);
    expect(greeting.mariadbCapabilities).toBe(baseGreeting.mariadbCapabilities);
    const r = seen as HandshakeResponse;
    expect(r.capabilities).toBe((caps | Cap.SSL | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA) >>> 0);
    expect(r).toMatchObject({ mariadbCapabilities: mariadb, maxPacketSize: 4096, charset: 8, user: 'alice' });
  });

  test('answers an AuthSwitchRequest for mysql_clear_password with the token', async () => {
    let answer = '';
    fake.script = async (c) => {
      await c.open();
      c.send(3, buildAuthSwitch(AuthPlugin.CLEAR, Buffer.from([0])));
      const p = await c.read();
      expect(p.seq).toBe(4);
      answer = p.payload.toString('utf8');
      c.send(5, OK);
    };
    const conn = await connect();
    conn.destroy();
    expect(answer).toMatch(/Action=connect&DBUser=alice&.*X-Amz-Signature=[0-9a-f]{64}.*\0$/);
  });

  test('maps the user (upstream.user) and checks the local password first', async () => {
    let user = '';
    fake.script = async (c) => {
      user = parseHandshakeResponse((await c.open()).response).user;
      c.send(3, OK);
    };
    const conn = await mysql.createConnection({
      host: '127.0.0.1',
      port: pwPort,
      user: 'app',
      password: 'local-secret',
    });
    conn.destroy();
    expect(user).toBe('iam_app');
    const e = await connectError({ port: pwPort, user: 'app', password: 'wrong' });
    expect(e).toMatchObject({ errno: 1045, sqlState: '28000' });
    expect(e.message).toMatch(/Access denied for user 'app'/);
  });

  test('verifies a caching_sha2_password client (fast path) and a switch to mysql_native_password', async () => {
    fake.script = async (c) => {
      await c.open();
      c.send(3, OK);
    };
    const { socket, reader, greeting } = await rawClient(pwPort);
    const caps =
      (Cap.PROTOCOL_41 |
        Cap.SECURE_CONNECTION |
        Cap.PLUGIN_AUTH |
        Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA |
        Cap.LONG_PASSWORD) >>>
      0;
    const resp = {
      capabilities: caps,
      mariadbCapabilities: 0,
      maxPacketSize: 1 << 24,
      charset: 45,
      user: 'app',
    };
    socket.write(
      packet(
        1,
        buildHandshakeResponse({
          ...resp,
          authPlugin: AuthPlugin.CACHING_SHA2,
          authData: sha2Token('local-secret', greeting.scramble),
        }),
      ),
    );
    expect((await readPacket(reader)).payload).toEqual(Buffer.from([0x01, 0x03])); // fast_auth_success
    const ok = await readPacket(reader);
    expect(ok).toEqual({ seq: 3, payload: OK });
    socket.destroy();

    const second = await rawClient(pwPort);
    second.socket.write(
      packet(
        1,
        buildHandshakeResponse({ ...resp, authPlugin: 'client_ed25519', authData: Buffer.alloc(64) }),
      ),
    );
    const sw = await readPacket(second.reader);
    expect(sw.seq).toBe(2);
    expect(sw.payload.subarray(0, 23).toString('latin1')).toBe('\xfemysql_native_password\0');
    second.socket.write(packet(3, Buffer.alloc(20, 1))); // wrong answer
    const err = await readPacket(second.reader);
    expect(err.seq).toBe(4);
    expect(parseErr(err.payload)).toMatchObject({ errno: 1045, sqlState: '28000' });
    second.socket.destroy();
  });
});

describe('failures reach the client as ERR packets', () => {
  test("the server's refusal keeps its errno, SQLSTATE and message, with the proxy's hint", async () => {
    fake.script = async (c) => {
      await c.open();
      c.send(
        3,
        buildErr({
          errno: 1045,
          sqlState: '28000',
          message: "Access denied for user 'alice'@'10.0.0.1' (using password: YES)",
        }),
      );
    };
    const e = await connectError();
    expect(e).toMatchObject({ errno: 1045, sqlState: '28000' });
    expect(e.message).toMatch(
      /^Access denied for user 'alice'@'10.0.0.1' \(using password: YES\) \[rds-iam-proxy: .*AWSAuthenticationPlugin.*rds-db:connect.*us-east-1.*clock/,
    );
  });

  test('a server ERR instead of a greeting (too many connections) is relayed as the first packet', async () => {
    fake.script = async (c) => {
      c.send(0, buildErr({ errno: 1040, sqlState: '08004', message: 'Too many connections' }));
      c.raw.end();
    };
    const e = await connectError();
    expect(e).toMatchObject({ errno: 1040, message: 'Too many connections' });
  });

  test('a server without CLIENT_SSL is refused before any token is sent', async () => {
    let after = -1;
    fake.script = async (c) => {
      c.send(0, buildGreeting({ ...baseGreeting, capabilities: baseGreeting.capabilities & ~Cap.SSL }));
      await new Promise((r) => setTimeout(r, 200));
      after = c.reader.available;
    };
    const e = await connectError();
    expect(e).toMatchObject({ errno: 1429, sqlState: '08S01' });
    expect(e.message).toMatch(
      /does not offer TLS \(no CLIENT_SSL in its greeting\); IAM authentication requires TLS/,
    );
    await new Promise((r) => setTimeout(r, 250));
    expect(after).toBe(0);
  });

  test('a listener at its connection limit answers ER_CON_COUNT_ERROR as the first packet', async () => {
    fake.script = async (c) => {
      c.send(0, buildGreeting(baseGreeting));
      await c.read().catch(() => undefined);
    };
    const first = await rawClient(proxy.port('one'));
    const e = await connectError({ port: proxy.port('one') });
    expect(e).toMatchObject({ errno: 1040, sqlState: '08004' });
    first.socket.destroy();
  });

  test('an unreachable upstream names host, address and errno', async () => {
    const e = await connectError({ port: proxy.port('dead') });
    expect(e).toMatchObject({ errno: 1429, sqlState: '08S01' });
    expect(e.message).toContain(
      `cannot connect to upstream ${ENDPOINT}:${deadPort} (dialled as 127.0.0.1:${deadPort}): ECONNREFUSED`,
    );
  });

  test.each([
    [
      'AuthMoreData for mysql_clear_password',
      Buffer.from([0x01, 0x04]),
      1043,
      /AuthMoreData \(0x01\) for mysql_clear_password/,
    ],
    [
      'an unsupported plugin',
      buildAuthSwitch('auth_gssapi_client', Buffer.from('x\0')),
      1043,
      /authentication plugin "auth_gssapi_client"/,
    ],
    [
      'mysql_native_password for an IAM login',
      buildAuthSwitch(AuthPlugin.NATIVE, Buffer.from('ABCDEFGHIJKLMNOPQRST\0')),
      1045,
      /not set up for IAM.*AWSAuthenticationPlugin/,
    ],
    [
      'the PAM dialog plugin',
      buildAuthSwitch(AuthPlugin.DIALOG, Buffer.from('\x04Password: ')),
      1043,
      /pam_use_cleartext_plugin/,
    ],
    ['a pre-4.1 auth switch', Buffer.from([0xfe]), 1043, /old_password/],
  ])('%s is refused with a clear ERR', async (_name, reply, errno, message) => {
    fake.script = async (c) => {
      await c.open();
      c.send(3, reply);
      await c.read().catch(() => undefined);
    };
    const e = await connectError();
    expect(e.errno).toBe(errno);
    expect(e.message).toMatch(message);
  });

  test('a malformed client packet gets ERR 1043, the proxy keeps serving', async () => {
    fake.script = async (c) => {
      await c.open();
      c.send(3, OK);
    };
    const { socket, reader } = await rawClient(port);
    socket.write(packet(1, Buffer.from([0x00, 0x02, 0x00]))); // 3 bytes: not even the capabilities
    const err = await readPacket(reader);
    expect(err.seq).toBe(2);
    expect(parseErr(err.payload)).toMatchObject({ errno: 1043, sqlState: '08S01' });
    await new Promise<void>((r) => socket.once('close', () => r()));
    const tiny = await rawClient(port);
    tiny.socket.write(packet(1, Buffer.from([0x00]))); // 1 byte
    expect(parseErr((await readPacket(tiny.reader)).payload)).toMatchObject({
      errno: 1043,
      sqlState: '08S01',
    });
    tiny.socket.destroy();
    const conn = await connect();
    conn.destroy();
  });

  test('a pre-4.1 client gets ER_NOT_SUPPORTED_AUTH_MODE without a SQLSTATE marker', async () => {
    fake.script = async (c) => {
      await c.open();
    };
    const { socket, reader } = await rawClient(port);
    const old = Buffer.alloc(10);
    old.writeUInt16LE(Cap.LONG_PASSWORD | Cap.CONNECT_WITH_DB); // 4.0 client: 2-byte capabilities
    socket.write(packet(1, old));
    const err = await readPacket(reader);
    expect(err.payload.subarray(0, 3)).toEqual(Buffer.from([0xff, 0xe3, 0x04])); // 1251
    expect(err.payload[3]).not.toBe(0x23);
    expect(parseErr(err.payload).message).toMatch(/Client does not support authentication protocol/);
    socket.destroy();
  });

  test('an oversized handshake packet is refused before it is read', async () => {
    fake.script = async (c) => {
      await c.open();
    };
    const { socket, reader } = await rawClient(port);
    socket.write(Buffer.from([0xff, 0xff, 0xff, 0x01]));
    const err = await readPacket(reader);
    expect(parseErr(err.payload)).toMatchObject({ errno: 1153, sqlState: '08S01' });
    socket.destroy();
  });

  test('a client that stalls gets ER_NET_READ_INTERRUPTED at the handshake deadline', async () => {
    fake.script = async (c) => {
      c.send(0, buildGreeting(baseGreeting));
      await c.read().catch(() => undefined);
    };
    const { socket, reader } = await rawClient(proxy.port('slow'));
    const t0 = Date.now();
    const err = await readPacket(reader);
    expect(Date.now() - t0).toBeGreaterThan(200);
    expect(err.seq).toBe(1);
    expect(parseErr(err.payload)).toMatchObject({ errno: 1159, sqlState: '08S01' });
    socket.destroy();
  });

  test('no token or signature appears in the logs', () => {
    const all = proxy.logs.join('\n');
    expect(all).not.toMatch(/X-Amz-Signature/);
    expect(all).not.toMatch(/X-Amz-Security-Token/);
    expect(all).not.toContain('IQoJb3JpZ2luX2VjE');
  });
});
