/**
 * Against a real PostgreSQL 18 (test/harness/pg18.ts): direct TLS upstream
 * (`upstream.tls.negotiation: direct`), protocol 3.2 from a libpq 18 client with its 32-byte
 * cancel key carried through the proxy, and NegotiateProtocolVersion when a client asks for more.
 * This server's build has no PAM, so the proxy logs in with `auth.mode: password` (SCRAM).
 * A relay in front of each upstream records the first bytes the proxy sends, which is how the
 * tests see SSLRequest versus a ClientHello.
 */
import net from 'node:net';
import { startPostgres18, psql18, type Pg18Server } from '../harness/pg18';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { startTestProxy, type TestProxy } from '../harness/proxy';
import { rawConnect, startup } from '../harness/pgraw';
import { waitFor } from '../harness/util';
import { PROTOCOL_3_0, PROTOCOL_3_2, sslRequest } from '../../src/engines/postgres/wire';

/** A TCP relay that keeps the first bytes the proxy sent on each connection. */
interface Sniffer {
  port: number;
  /** Up to 512 first bytes of each accepted connection, in order. */
  firsts: Buffer[];
  close(): Promise<void>;
}

function startSniffer(to: number): Promise<Sniffer> {
  const sockets = new Set<net.Socket>();
  const sniffer: Sniffer = { port: 0, firsts: [], close: async () => undefined };
  const server = net.createServer((client) => {
    const index = sniffer.firsts.push(Buffer.alloc(0)) - 1;
    const upstream = net.connect(to, '127.0.0.1');
    client.on('data', (d: Buffer) => {
      const seen = sniffer.firsts[index] ?? Buffer.alloc(0);
      if (seen.length < 512) sniffer.firsts[index] = Buffer.concat([seen, d]).subarray(0, 512);
    });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => (client.destroy(), upstream.destroy()));
    }
    client.pipe(upstream).pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      sniffer.port = (server.address() as net.AddressInfo).port;
      sniffer.close = () =>
        new Promise((r) => {
          sockets.forEach((s) => s.destroy());
          server.close(() => r());
        });
      resolve(sniffer);
    });
  });
}

/** Backend messages as (type, body) from raw bytes that start at a message boundary. */
function frames(b: Buffer): { type: string; body: Buffer }[] {
  const out: { type: string; body: Buffer }[] = [];
  for (let at = 0; at + 5 <= b.length;) {
    const len = b.readInt32BE(at + 1);
    if (at + 1 + len > b.length) break;
    out.push({ type: String.fromCharCode(b[at] as number), body: b.subarray(at + 5, at + 1 + len) });
    at += 1 + len;
  }
  return out;
}

const TLS_HANDSHAKE_RECORD = 0x16;
const PROTOCOL_3_9 = (3 << 16) | 9;

let pg18: Pg18Server;
let pg15: RdsLikePg;
let directSniff: Sniffer;
let classicSniff: Sniffer;
let proxy: TestProxy;
const password = 'pg18-secret-Fz7';

beforeAll(async () => {
  [pg18, pg15] = await Promise.all([startPostgres18({ users: { alice: password } }), startRdsLikePostgres()]);
  [directSniff, classicSniff] = await Promise.all([startSniffer(pg18.port), startSniffer(pg18.port)]);
  const viaSniffer = (s: Sniffer, negotiation: 'postgres' | 'direct') => ({
    host: pg18.host,
    port: pg18.port,
    address: `127.0.0.1:${s.port}`,
    tls: { ca: pg18.caFile, negotiation },
  });
  const auth = { mode: 'password' as const, password: { env: 'PG18_PASSWORD' } };
  proxy = await startTestProxy(
    {
      listeners: [
        {
          name: 'direct',
          engine: 'postgres',
          listen: '127.0.0.1:0',
          upstream: viaSniffer(directSniff, 'direct'),
          auth,
          client: { tls: 'off' },
        },
        {
          name: 'classic',
          engine: 'postgres',
          listen: '127.0.0.1:0',
          upstream: viaSniffer(classicSniff, 'postgres'),
          auth,
          client: { tls: 'off' },
        },
        {
          name: 'direct15',
          engine: 'postgres',
          listen: '127.0.0.1:0',
          upstream: {
            host: pg15.host,
            port: pg15.port,
            address: pg15.address,
            tls: { ca: pg15.caFile, negotiation: 'direct' },
          },
          client: { tls: 'off' },
        },
      ],
    },
    { env: { ...process.env, PG18_PASSWORD: password } },
  );
});

afterAll(async () => {
  await proxy?.close();
  await Promise.all([directSniff?.close(), classicSniff?.close()]);
  await Promise.all([pg18?.stop(), pg15?.stop()]);
});

afterEach(() => {
  expect(proxy.logs.join('\n')).not.toContain(password);
});

const conninfo = (listener: string, extra = ''): string =>
  `host=127.0.0.1 port=${proxy.port(listener)} user=alice dbname=appdb sslmode=disable ${extra}`;

test('the harness server is PostgreSQL 18 and itself accepts direct TLS and protocol 3.2', async () => {
  expect(pg18.version).toMatch(/^18\./);
  const r = await psql18(
    `host=${pg18.host} hostaddr=127.0.0.1 port=${pg18.port} user=alice password=${password} dbname=appdb ` +
      `sslmode=verify-full sslrootcert=${pg18.caFile} sslnegotiation=direct max_protocol_version=3.2`,
    ['-c', 'select 1'],
  );
  expect(r.stderr).toBe('');
  expect(r.stdout.trim()).toBe('1');
});

test('libpq 18 with max_protocol_version=3.2 sends a 3.2 StartupMessage (the premise of the cancel tests)', async () => {
  let startupPacket: Buffer | undefined;
  const capture = net.createServer((s) => s.once('data', (d: Buffer) => ((startupPacket = d), s.destroy())));
  await new Promise<void>((r) => capture.listen(0, '127.0.0.1', r));
  const port = (capture.address() as net.AddressInfo).port;
  await psql18(`host=127.0.0.1 port=${port} user=alice sslmode=disable max_protocol_version=3.2`, [
    '-c',
    'select 1',
  ]);
  await new Promise((r) => capture.close(r));
  expect(startupPacket?.readInt32BE(4)).toBe(PROTOCOL_3_2);
});

describe('upstream.tls.negotiation: direct', () => {
  test('logs in with a ClientHello as the first byte (SNI = host, ALPN postgresql), no SSLRequest', async () => {
    const before = directSniff.firsts.length;
    const r = await psql18(conninfo('direct'), [
      '-c',
      "select current_user, current_setting('server_version')",
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(`alice|${pg18.version}`);
    const hello = directSniff.firsts[before];
    expect(directSniff.firsts).toHaveLength(before + 1);
    expect(hello?.[0]).toBe(TLS_HANDSHAKE_RECORD);
    expect(hello?.includes(Buffer.from(pg18.host))).toBe(true); // server_name extension
    expect(hello?.includes(Buffer.from([10, ...Buffer.from('postgresql')]))).toBe(true); // ALPN entry
  });

  test('the default (postgres) sends SSLRequest first', async () => {
    const before = classicSniff.firsts.length;
    const r = await psql18(conninfo('classic'), ['-c', 'select 2']);
    expect(r.stdout.trim()).toBe('2');
    expect(classicSniff.firsts[before]?.subarray(0, 8)).toEqual(sslRequest());
  });

  test('against a server without direct TLS (PostgreSQL 15) the client gets the cause and the fix', async () => {
    const r = await psql18(conninfo('direct15'), ['-c', 'select 1']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`direct TLS with upstream ${pg15.host} failed`);
    expect(r.stderr).toContain('negotiation: postgres');
    expect(pg15.verifier.entries).toEqual([]); // no token ever left the proxy
  });
});

describe('protocol 3.2 against PostgreSQL 18', () => {
  for (const listener of ['classic', 'direct']) {
    test(`${listener}: a 3.2 startup gets the server's 32-byte cancel key, relayed unchanged`, async () => {
      const c = await rawConnect(proxy.port(listener));
      c.socket.write(startup('alice', 'appdb', PROTOCOL_3_2));
      await waitFor(async () => frames(c.received()).some((f) => f.type === 'Z'), 10_000, 'ReadyForQuery');
      const got = frames(c.received());
      expect(got.filter((f) => f.type === 'v')).toEqual([]); // 3.2 is what the server speaks
      const key = got.find((f) => f.type === 'K');
      expect(key?.body.length).toBe(4 + 32);
      c.socket.destroy();
    });
  }

  test('a 3.9 startup: NegotiateProtocolVersion (newest 3.2) is relayed, then the session works at 3.2', async () => {
    const c = await rawConnect(proxy.port('classic'));
    c.socket.write(startup('alice', 'appdb', PROTOCOL_3_9));
    await waitFor(async () => frames(c.received()).some((f) => f.type === 'Z'), 10_000, 'ReadyForQuery');
    const got = frames(c.received());
    const v = got.find((f) => f.type === 'v');
    expect(v?.body.readInt32BE(0)).toBe(PROTOCOL_3_2);
    expect(v?.body.readInt32BE(4)).toBe(0); // no unrecognized options
    expect(got.find((f) => f.type === 'K')?.body.length).toBe(4 + 32);
    expect(got.map((f) => f.type).indexOf('v')).toBeLessThan(got.map((f) => f.type).indexOf('R'));
    c.socket.destroy();
  });

  test('a 3.0 startup still gets the classic 4-byte key', async () => {
    const c = await rawConnect(proxy.port('classic'));
    c.socket.write(startup('alice', 'appdb', PROTOCOL_3_0));
    await waitFor(async () => frames(c.received()).some((f) => f.type === 'Z'), 10_000, 'ReadyForQuery');
    expect(frames(c.received()).find((f) => f.type === 'K')?.body.length).toBe(4 + 4);
    c.socket.destroy();
  });

  for (const listener of ['classic', 'direct']) {
    test(`${listener}: libpq 18 at protocol 3.2 cancels a running pg_sleep through the proxy`, async () => {
      const tag = `cancel-me-${listener}`;
      let interrupt: ((s: NodeJS.Signals) => void) | undefined;
      const running = psql18(
        conninfo(listener, `max_protocol_version=3.2 application_name=${tag}`),
        ['-c', 'select pg_sleep(60)'],
        { onSpawn: (kill) => (interrupt = kill), timeoutMs: 50_000 },
      );
      const active = async (): Promise<boolean> =>
        (await pg18.psqlAdmin(
          `select count(*) from pg_stat_activity where application_name = '${tag}' and state = 'active' and query like '%pg_sleep%'`,
        )) === '1';
      await waitFor(active, 20_000, 'pg_sleep running on the server');
      const logsBefore = proxy.logs.length;
      interrupt?.('SIGINT'); // psql sends a CancelRequest with the key it was given
      const r = await running;
      expect(r.stderr).toContain('canceling statement due to user request');
      expect(r.signal).toBeNull();
      const forwarded = proxy
        .records()
        .slice(logsBefore)
        .filter((l) => l['msg'] === 'cancel request forwarded');
      expect(forwarded).toHaveLength(1);
      expect(await active()).toBe(false);
    });
  }
});
