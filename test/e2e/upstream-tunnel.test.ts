/**
 * Reaching the database through a tunnel (SSM port forwarding, ssh -L, kubectl port-forward):
 * `upstream.address` names a local port that relays to the database, while the token stays
 * signed for `upstream.host:upstream.port` and TLS is still verified against `upstream.host`.
 * The tunnel here is a plain TCP relay; the servers are the RDS-like PostgreSQL 15 and MariaDB,
 * whose token verifiers accept only tokens signed for their own endpoint name and port.
 * Also: every login resolves the dialled name afresh (a DNS change between logins is followed).
 */
import net from 'node:net';
import type { LookupFunction } from 'node:net';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { startRdsLikeMariaDb, type RdsLikeMariaDb } from '../harness/mariadb';
import { LONG_SESSION_TOKEN, startTestProxy, type TestProxy } from '../harness/proxy';
import { psql, runProgram } from '../harness/clients';
import { tcpDialer, type Dialer } from '../../src/net/dial';

/** A TCP relay standing in for a tunnel: every accepted connection is piped to `to`. */
interface Relay {
  host: string;
  port: number;
  /** Connections accepted so far. */
  accepted: number;
  close(): Promise<void>;
}

function startRelay(to: { host: string; port: number }, at = { host: '127.0.0.1', port: 0 }): Promise<Relay> {
  const sockets = new Set<net.Socket>();
  const relay: Relay = { host: at.host, port: 0, accepted: 0, close: async () => undefined };
  const server = net.createServer((client) => {
    relay.accepted++;
    const upstream = net.connect(to.port, to.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => (client.destroy(), upstream.destroy()));
    }
    client.pipe(upstream).pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => {
      relay.port = (server.address() as net.AddressInfo).port;
      relay.close = () =>
        new Promise((r) => {
          sockets.forEach((s) => s.destroy());
          server.close(() => r());
        });
      resolve(relay);
    });
  });
}

/** Two relays to the same server on one port of two loopback addresses (two "DNS answers"). */
async function relayPair(to: { host: string; port: number }): Promise<[Relay, Relay]> {
  for (let attempt = 0; ; attempt++) {
    const a = await startRelay(to, { host: '127.0.0.2', port: 0 });
    try {
      return [a, await startRelay(to, { host: '127.0.0.3', port: a.port })];
    } catch (err) {
      await a.close();
      if (attempt >= 5) throw err;
    }
  }
}

const OTHER_ENDPOINT = 'other.cluster-def456uvw.us-east-1.rds.amazonaws.com';
const FAILOVER_NAME = 'writer.failover.test';

let pg: RdsLikePg;
let other: RdsLikePg;
let maria: RdsLikeMariaDb;
let pgTunnel: Relay;
let otherTunnel: Relay;
let mariaTunnel: Relay;
let failover: [Relay, Relay];
let proxy: TestProxy;
/** What FAILOVER_NAME resolves to now, and every name the proxy looked up. */
let failoverIp = '127.0.0.2';
const lookedUp: string[] = [];

/** Resolves FAILOVER_NAME to `failoverIp`; any other name fails as unknown. */
const fakeLookup: LookupFunction = (hostname, options, callback) => {
  lookedUp.push(hostname);
  const done = callback as (err: NodeJS.ErrnoException | null, address: unknown, family?: number) => void;
  if (hostname !== FAILOVER_NAME) {
    const err: NodeJS.ErrnoException = new Error(`getaddrinfo ENOTFOUND ${hostname}`);
    err.code = 'ENOTFOUND';
    done(err, undefined);
    return;
  }
  if (options.all) done(null, [{ address: failoverIp, family: 4 }]);
  else done(null, failoverIp, 4);
};
/** tcpDialer with the fake resolver, for the listener that dials FAILOVER_NAME only. */
const dialer: Dialer = {
  dial: (t, ...rest) =>
    tcpDialer.dial(t.address === FAILOVER_NAME ? { ...t, lookup: fakeLookup } : t, ...rest),
};

beforeAll(async () => {
  [pg, other, maria] = await Promise.all([
    startRdsLikePostgres(),
    startRdsLikePostgres({ endpoint: OTHER_ENDPOINT }),
    startRdsLikeMariaDb(),
  ]);
  [pgTunnel, otherTunnel, mariaTunnel, failover] = await Promise.all([
    startRelay({ host: pg.address, port: pg.port }),
    startRelay({ host: other.address, port: other.port }),
    startRelay({ host: maria.address, port: maria.port }),
    relayPair({ host: pg.address, port: pg.port }),
  ]);
  proxy = await startTestProxy(
    {
      listeners: [
        {
          name: 'pg',
          engine: 'postgres',
          listen: '127.0.0.1:0',
          upstream: {
            host: pg.host,
            port: pg.port,
            address: `127.0.0.1:${pgTunnel.port}`,
            tls: { ca: pg.caFile },
          },
          client: { tls: 'off' },
        },
        {
          // The tunnel leads to a server whose certificate is for another name (and whose CA is trusted).
          name: 'wrongname',
          engine: 'postgres',
          listen: '127.0.0.1:0',
          upstream: {
            host: pg.host,
            port: other.port,
            address: `127.0.0.1:${otherTunnel.port}`,
            tls: { ca: other.caFile },
          },
          client: { tls: 'off' },
        },
        {
          name: 'closed',
          engine: 'postgres',
          listen: '127.0.0.1:0',
          upstream: { host: pg.host, port: pg.port, address: '[::1]:1', tls: { ca: pg.caFile } },
          client: { tls: 'off' },
        },
        {
          name: 'failover',
          engine: 'postgres',
          listen: '127.0.0.1:0',
          upstream: {
            host: pg.host,
            port: pg.port,
            address: `${FAILOVER_NAME}:${failover[0].port}`,
            tls: { ca: pg.caFile },
          },
          client: { tls: 'off' },
        },
        {
          name: 'maria',
          engine: 'mysql',
          listen: '127.0.0.1:0',
          upstream: {
            host: maria.host,
            port: maria.port,
            address: `127.0.0.1:${mariaTunnel.port}`,
            tls: { ca: maria.caFile },
          },
          client: { tls: 'off' },
        },
      ],
    },
    { dialer },
  );
});

afterAll(async () => {
  await proxy?.close();
  await Promise.all([pgTunnel, otherTunnel, mariaTunnel, ...(failover ?? [])].map((r) => r?.close()));
  await Promise.all([pg?.stop(), other?.stop(), maria?.stop()]);
});

afterEach(() => {
  const all = proxy.logs.join('\n');
  expect(all).not.toContain('X-Amz-Signature');
  expect(all).not.toContain(LONG_SESSION_TOKEN.slice(0, 40));
});

const pgUrl = (listener: string): string =>
  `host=127.0.0.1 port=${proxy.port(listener)} user=alice dbname=appdb sslmode=disable`;

describe('upstream.address with a port (a tunnel)', () => {
  test('postgres: logs in through the relay with a token for the endpoint host:port', async () => {
    const acceptedBefore = pgTunnel.accepted;
    const verdictsBefore = pg.verifier.entries.length;
    const r = await psql(pgUrl('pg'), ['-c', "select current_user || ' ' || inet_server_port()"]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(`alice ${pg.port}`);
    expect(pgTunnel.accepted).toBe(acceptedBefore + 1);
    // The verifier accepts only tokens for `${pg.host}:${pg.port}`, never the relay's port.
    const verdicts = pg.verifier.entries.slice(verdictsBefore);
    expect(verdicts.map((v) => [v.user, v.ok, v.reason])).toEqual([['alice', true, 'ok']]);
  });

  test('mysql: logs in through the relay with a token for the endpoint host:port', async () => {
    const acceptedBefore = mariaTunnel.accepted;
    const verdictsBefore = maria.verifier.entries.length;
    const r = await runProgram('mariadb', [
      '--no-defaults',
      '--protocol=TCP',
      '-h',
      '127.0.0.1',
      '-P',
      String(proxy.port('maria')),
      '-u',
      'alice',
      '--batch',
      '--skip-column-names',
      '-e',
      'select current_user()',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toMatch(/^alice@/);
    expect(mariaTunnel.accepted).toBe(acceptedBefore + 1);
    const verdicts = maria.verifier.entries.slice(verdictsBefore);
    expect(verdicts.map((v) => [v.user, v.ok])).toEqual([['alice', true]]);
  });

  test('a certificate behind the tunnel that does not match upstream.host fails TLS, and no token is sent', async () => {
    const acceptedBefore = otherTunnel.accepted;
    const r = await psql(pgUrl('wrongname'), ['-c', 'select 1']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`certificate for ${pg.host.replace(/\./g, '\\.')} rejected`));
    expect(r.stderr).toContain(OTHER_ENDPOINT);
    expect(otherTunnel.accepted).toBe(acceptedBefore + 1); // it did reach the server behind the tunnel
    expect(other.verifier.entries).toEqual([]);
    expect(pg.verifier.entries.filter((e) => !e.ok)).toEqual([]);
  });

  test('an unreachable tunnel names both the endpoint and the dialled address', async () => {
    const r = await psql(pgUrl('closed'), ['-c', 'select 1']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`${pg.host}:${pg.port} (dialled as [::1]:1)`);
  });
});

describe('name resolution per dial', () => {
  test('a login after the name moved goes to the new address', async () => {
    const [a, b] = failover;
    const login = (): Promise<string> =>
      psql(pgUrl('failover'), ['-c', 'select 42']).then((r) => `${r.stdout.trim()}${r.stderr}`);
    failoverIp = '127.0.0.2';
    const lookupsBefore = lookedUp.filter((n) => n === FAILOVER_NAME).length;
    expect(await login()).toBe('42');
    expect([a.accepted, b.accepted]).toEqual([1, 0]);
    failoverIp = '127.0.0.3'; // the record moved (an Aurora failover, a blue/green switchover)
    expect(await login()).toBe('42');
    expect([a.accepted, b.accepted]).toEqual([1, 1]);
    expect(lookedUp.filter((n) => n === FAILOVER_NAME).length).toBe(lookupsBefore + 2);
  });
});
