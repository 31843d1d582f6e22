/**
 * Nothing a local client sends grows the proxy's state without bound:
 *  - 10,000 distinct user names through each engine: the token cache stays at tokens.cacheSize
 *    and the token metrics keep one series per configured user plus one for all others;
 *  - names longer than the server allows are refused with the server's own error;
 *  - MySQL: 100 idle sockets hold at most maxPendingHandshakes server connections, and a real
 *    login still gets through.
 * The fast fakes here refuse every login right after the token was asked for (a Postgres
 * server that answers 'N' to SSLRequest; a MySQL server that closes at the SSLRequest), so each
 * name costs a mint but no TLS handshake.
 */
import net from 'node:net';
import mysql from 'mysql2/promise';
import { Client } from 'pg';
import { startTestProxy, type TestProxy } from '../harness/proxy';
import { startRdsLikeMariaDb, type RdsLikeMariaDb } from '../harness/mariadb';
import { startup } from '../harness/pgraw';
import { registry } from '../../src/admin/metrics';
import { AuthPlugin, buildHandshakeResponse, Cap, packet } from '../../src/engines/mysql/wire';
import { fakeServer, mysqlGreetingPacket } from '../harness/fakeupstream';

const ENDPOINT = 'bounded.cluster-abc.us-east-1.rds.amazonaws.com';
const NAMES = Number(process.env['BOUNDED_NAMES'] ?? 10_000);
const CACHE_SIZE = 100;

/** A fake upstream that refuses every login as soon as the proxy starts TLS. */
function refusingServer(engine: 'postgres' | 'mysql'): Promise<{ port: number; close(): Promise<void> }> {
  return fakeServer((s) => {
    if (engine === 'postgres') {
      s.once('data', () => s.end('N'));
      return;
    }
    s.write(mysqlGreetingPacket('8.0.36-refusing'));
    s.once('data', () => s.destroy());
  });
}

/** One login attempt as `user` over a raw socket; resolves when the proxy closes it. */
function attempt(engine: 'postgres' | 'mysql', port: number, user: string): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    s.on('close', () => resolve());
    if (engine === 'postgres') {
      s.resume(); // read the proxy's error, so its FIN is seen
      s.on('connect', () => s.write(startup(user, 'app')));
      return;
    }
    s.once('data', () =>
      s.write(
        packet(
          1,
          buildHandshakeResponse({
            capabilities:
              (Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.LONG_PASSWORD) >>> 0,
            mariadbCapabilities: 0,
            maxPacketSize: 1 << 24,
            charset: 45,
            user,
            authData: Buffer.alloc(0),
            authPlugin: AuthPlugin.NATIVE,
          }),
        ),
      ),
    );
  });
}

async function series(name: string, endpoint: string): Promise<{ user: string }[]> {
  const m = await registry.getSingleMetric(name)?.get();
  return (m?.values ?? [])
    .filter((v) => v.labels['endpoint'] === endpoint)
    .map((v) => ({ user: String(v.labels['user']) }));
}

describe.each(['postgres', 'mysql'] as const)('%s: bounded per-user state', (engine) => {
  let upstream: Awaited<ReturnType<typeof refusingServer>>;
  let proxy: TestProxy;
  const name = `bounded_${engine}`;

  beforeAll(async () => {
    upstream = await refusingServer(engine);
    proxy = await startTestProxy({
      tokens: { cacheSize: CACHE_SIZE },
      listeners: [
        {
          name,
          engine,
          listen: '127.0.0.1:0',
          client: { tls: 'off' },
          upstream: { host: ENDPOINT, address: '127.0.0.1', port: upstream.port, tls: { ca: 'rds' } },
          auth: { region: 'us-east-1' },
        },
      ],
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await upstream?.close();
  });

  it(`${NAMES} distinct user names: the token cache and the token metrics stay bounded`, async () => {
    const port = proxy.port(name);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < NAMES) await attempt(engine, port, `user_${engine}_${next++}`);
    };
    await Promise.all(Array.from({ length: 32 }, worker));
    const mints = await series('rds_iam_proxy_token_mints_total', `${ENDPOINT}:${upstream.port}`);
    expect(mints.length).toBeGreaterThan(0); // every login asked for a token
    expect(mints.map((s) => s.user)).toEqual(['(other)']);
    const total = (await registry.getSingleMetric('rds_iam_proxy_token_mints_total')?.get())?.values.find(
      (v) => v.labels['endpoint'] === `${ENDPOINT}:${upstream.port}`,
    )?.value;
    expect(total).toBe(NAMES);
    expect(proxy.app.cachedTokens()).toBeLessThanOrEqual(CACHE_SIZE);
    expect(proxy.app.cachedTokens()).toBeGreaterThan(0);
  });

  it('a user name longer than the server allows is refused with its own error, before any token', async () => {
    const long = 'x'.repeat(engine === 'postgres' ? 64 : 81);
    const before = (await registry.getSingleMetric('rds_iam_proxy_token_mints_total')?.get())?.values.length;
    if (engine === 'postgres') {
      const c = new Client({ host: '127.0.0.1', port: proxy.port(name), user: long, database: 'app' });
      await expect(c.connect()).rejects.toMatchObject({ code: '42622' });
    } else {
      await expect(
        mysql.createConnection({ host: '127.0.0.1', port: proxy.port(name), user: long }),
      ).rejects.toMatchObject({ errno: 1470 });
    }
    const after = (await registry.getSingleMetric('rds_iam_proxy_token_mints_total')?.get())?.values.length;
    expect(after).toBe(before);
  });
});

describe('mysql: idle sockets hold at most maxPendingHandshakes server connections', () => {
  let db: RdsLikeMariaDb;
  let proxy: TestProxy;
  let relay: net.Server;
  let open = 0;
  let peak = 0;

  beforeAll(async () => {
    db = await startRdsLikeMariaDb({ users: ['alice'] });
    // Counts the proxy's concurrent connections to the server.
    relay = net.createServer((c) => {
      open++;
      peak = Math.max(peak, open);
      const up = net.connect(db.port, db.address);
      c.pipe(up).pipe(c);
      const done = (): void => {
        c.destroy();
        up.destroy();
      };
      c.on('error', done);
      up.on('error', done);
      c.once('close', () => {
        open--;
        done();
      });
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    proxy = await startTestProxy({
      listeners: [
        {
          name: 'pending',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          maxPendingHandshakes: 8,
          greetingTimeoutMs: 300,
          handshakeTimeoutMs: 60_000,
          client: { tls: 'off' },
          upstream: {
            host: db.host,
            port: db.port,
            address: `127.0.0.1:${(relay.address() as net.AddressInfo).port}`,
            tls: { ca: db.caFile },
          },
          auth: { region: db.region },
        },
      ],
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await new Promise((r) => relay?.close(r));
    await db?.stop();
  });

  it('100 idle sockets with the cap at 8: a real login still succeeds, the server saw at most 9 at once', async () => {
    const port = proxy.port('pending');
    const idle = await Promise.all(
      Array.from(
        { length: 100 },
        () =>
          new Promise<net.Socket>((resolve) => {
            const s = net.connect(port, '127.0.0.1', () => resolve(s));
            s.on('error', () => undefined);
          }),
      ),
    );
    const c = await mysql.createConnection({ host: '127.0.0.1', port, user: 'alice' });
    const [rows] = await c.query('select current_user() as u');
    expect(rows).toEqual([{ u: 'alice@%' }]);
    await c.end();
    for (const s of idle) s.destroy();
    expect(peak).toBeGreaterThan(0);
    expect(peak).toBeLessThanOrEqual(9);
  });
});
