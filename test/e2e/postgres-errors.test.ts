/**
 * Every failure before the splice reaches the client as a FATAL ErrorResponse with a SQLSTATE
 * and a message naming the cause; no input crashes the proxy; the token never goes where it
 * must not.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { Client, type DatabaseError } from 'pg';
import { createCA } from '../../src/net/certs';
import { IamTokenMinter, type TokenMinter } from '../../src/credentials/tokens';
import type { ConfigInput } from '../../src/config/schema';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { startTestProxy, type TestProxy } from '../harness/proxy';
import { psql } from '../harness/clients';
import { rawConnect, request, startup } from '../harness/pgraw';
import { signToken, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../harness/sign';
import { freePort, waitFor } from '../harness/util';
import { PROTOCOL_3_2, StartupCode } from '../../src/engines/postgres/wire';

let db: RdsLikePg;
let dir: string;
const proxies: TestProxy[] = [];

beforeAll(async () => {
  db = await startRdsLikePostgres({ passwordUsers: { carol: 'carol-db-pw' } });
  dir = mkdtempSync(path.join(os.tmpdir(), 'rip-err-'));
});
afterAll(async () => {
  await Promise.all(proxies.map((p) => p.close()));
  await db?.stop();
  rmSync(dir, { recursive: true, force: true });
});

type L = ConfigInput['listeners'][number];
const base = (over: Partial<L> = {}): L => ({
  name: 'app',
  engine: 'postgres',
  listen: '127.0.0.1:0',
  upstream: { host: db.host, port: db.port, address: db.address, tls: { ca: db.caFile } },
  auth: { mode: 'iam', region: db.region },
  client: { tls: 'off', auth: 'trust' },
  ...over,
});

async function proxyWith(
  l: L,
  o: { minter?: TokenMinter; env?: NodeJS.ProcessEnv } = {},
): Promise<TestProxy> {
  const p = await startTestProxy({ listeners: [l] }, o);
  proxies.push(p);
  return p;
}

async function pgError(
  port: number,
  user = 'alice',
  extra: Record<string, unknown> = {},
): Promise<DatabaseError> {
  const c = new Client({ host: '127.0.0.1', port, user, database: 'appdb', ...extra });
  c.on('error', () => undefined);
  try {
    await c.connect();
  } catch (err) {
    return err as DatabaseError;
  } finally {
    await c.end().catch(() => undefined);
  }
  throw new Error('connected, but an error was expected');
}

/** A minter that signs like rds-signer but with chosen inputs (time, host) to make bad tokens. */
const badMinter = (o: { date?: Date; host?: string }): TokenMinter => ({
  async mint(req) {
    const value = signToken({
      host: o.host ?? req.host,
      port: req.port,
      user: req.user,
      region: req.region,
      accessKeyId: TEST_ACCESS_KEY_ID,
      secretAccessKey: TEST_SECRET_ACCESS_KEY,
      ...(o.date ? { date: o.date } : {}),
    });
    return { value, expiresAt: Date.now() + 600_000 };
  },
});

describe('upstream failures', () => {
  test('unreachable upstream: 08001 naming host, address and errno', async () => {
    const closedPort = await freePort();
    const p = await proxyWith(
      base({ upstream: { host: db.host, port: closedPort, address: '127.0.0.1', tls: { ca: db.caFile } } }),
    );
    const err = await pgError(p.port('app'));
    expect(err.code).toBe('08001');
    expect(err.message).toContain(db.host);
    expect(err.message).toContain(`127.0.0.1:${closedPort}`);
    expect(err.message).toContain('ECONNREFUSED');
    expect(err.severity).toBe('FATAL');
  });

  test('untrusted certificate: 08001 naming subject and issuer, and the token never reaches the server', async () => {
    const otherCa = path.join(dir, 'other-ca.pem');
    writeFileSync(otherCa, createCA('Some Other CA').cert);
    const before = db.verifier.entries.length;
    const p = await proxyWith(
      base({ upstream: { host: db.host, port: db.port, address: db.address, tls: { ca: otherCa } } }),
    );
    const err = await pgError(p.port('app'));
    expect(err.code).toBe('08001');
    expect(err.message).toMatch(/certificate .* rejected/);
    expect(err.message).toContain(`subject: CN=${db.host}`);
    expect(err.message).toMatch(/issuer: .*rds-iam-proxy test CA/);
    expect(err.hint).toMatch(/upstream\.tls\.ca/);
    expect(db.verifier.entries.length).toBe(before);
  });

  test('certificate for another name: 08001, and the token never reaches the server', async () => {
    const before = db.verifier.entries.length;
    const p = await proxyWith(
      base({
        upstream: {
          host: 'impostor.cluster-abc.us-east-1.rds.amazonaws.com',
          port: db.port,
          address: db.address,
          tls: { ca: db.caFile },
        },
      }),
    );
    const err = await pgError(p.port('app'));
    expect(err.code).toBe('08001');
    expect(err.message).toMatch(/impostor.*rejected.*does not match certificate's altnames/);
    expect(err.hint).toMatch(/upstream\.address/);
    expect(db.verifier.entries.length).toBe(before);
  });

  test('login refused (token for the wrong region): the server message plus an IAM hint', async () => {
    const p = await proxyWith(base({ auth: { mode: 'iam', region: 'us-west-2' } }));
    const err = await pgError(p.port('app'));
    expect(err.code).toBe('28000');
    expect(err.message).toBe('PAM authentication failed for user "alice"');
    expect(err.hint).toMatch(/rds_iam/);
    expect(err.hint).toMatch(/rds-db:connect on arn:aws:rds-db:us-west-2:/);
    expect(db.verifier.entries.at(-1)).toMatchObject({ ok: false, reason: expect.stringMatching(/region/) });
  });

  test('an expired token is refused', async () => {
    const p = await proxyWith(base(), { minter: badMinter({ date: new Date(Date.now() - 20 * 60_000) }) });
    const err = await pgError(p.port('app'));
    expect(err.code).toBe('28000');
    expect(db.verifier.entries.at(-1)).toMatchObject({ ok: false, reason: expect.stringMatching(/expired/) });
  });

  test('a token signed for another endpoint is refused', async () => {
    const p = await proxyWith(base(), {
      minter: badMinter({ host: 'other.cluster-abc.us-east-1.rds.amazonaws.com' }),
    });
    const err = await pgError(p.port('app'));
    expect(err.code).toBe('28000');
    expect(db.verifier.entries.at(-1)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/signed for other\.cluster/),
    });
  });

  test('credentials unavailable: 28000 naming the source', async () => {
    const minter = new IamTokenMinter(async () => {
      throw Object.assign(new Error('Could not load credentials from any providers'), {
        name: 'CredentialsProviderError',
      });
    });
    const before = db.verifier.entries.length;
    const p = await proxyWith(base(), { minter });
    const err = await pgError(p.port('app'));
    expect(err.code).toBe('28000');
    expect(err.message).toMatch(/no AWS credentials.*Could not load credentials from any providers/);
    expect(err.hint).toMatch(/AWS_WEB_IDENTITY_TOKEN_FILE/);
    expect(db.verifier.entries.length).toBe(before);
  });

  test('auth.mode password logs in upstream with SCRAM-SHA-256', async () => {
    const p = await proxyWith(base({ auth: { mode: 'password', password: { env: 'CAROL_PW' } } }), {
      env: { CAROL_PW: 'carol-db-pw' },
    });
    const r = await psql(`host=127.0.0.1 port=${p.port('app')} user=carol dbname=appdb`, [
      '-c',
      'select current_user',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('carol');
    expect(p.logs.join('\n')).not.toContain('carol-db-pw');
  });
});

describe('local client authentication', () => {
  let p: TestProxy;
  beforeAll(async () => {
    p = await proxyWith(
      base({
        client: { tls: 'auto', auth: 'password', users: [{ name: 'alice', password: { env: 'APP_PW' } }] },
      }),
      { env: { APP_PW: 'local-secret-pw' } },
    );
  });

  test('SCRAM-SHA-256 with the right password', async () => {
    const r = await psql(
      `host=127.0.0.1 port=${p.port('app')} user=alice dbname=appdb sslmode=disable`,
      ['-c', 'select current_user'],
      {
        env: { PGPASSWORD: 'local-secret-pw' },
      },
    );
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('alice');
  });

  test('a wrong password is refused with 28P01 before any upstream connection', async () => {
    const before = db.verifier.entries.length;
    const err = await pgError(p.port('app'), 'alice', { password: 'nope' });
    expect(err.code).toBe('28P01');
    expect(err.message).toMatch(/password authentication failed for user "alice"/);
    const unknown = await pgError(p.port('app'), 'eve', { password: 'nope' });
    expect(unknown.code).toBe('28P01');
    expect(db.verifier.entries.length).toBe(before);
    expect(p.logs.join('\n')).not.toContain('local-secret-pw');
  });

  test('cleartext password over local TLS when passwordMethod is password', async () => {
    const q = await proxyWith(
      base({
        client: {
          tls: 'auto',
          auth: 'password',
          passwordMethod: 'password',
          users: [{ name: 'alice', password: { env: 'APP_PW' } }],
        },
      }),
      { env: { APP_PW: 'local-secret-pw' } },
    );
    const r = await psql(
      `host=localhost port=${q.port('app')} user=alice dbname=appdb sslmode=verify-full sslrootcert=${q.app.localTls.caPath}`,
      ['-c', 'select 1'],
      {
        env: { PGPASSWORD: 'local-secret-pw' },
      },
    );
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('1');
  });
});

describe('protocol edge cases and bad input', () => {
  let p: TestProxy;
  beforeAll(async () => {
    p = await proxyWith(base({ client: { tls: 'auto', auth: 'trust' }, handshakeTimeoutMs: 400 }));
  });

  const errorOf = async (bytes: Buffer): Promise<{ code?: string; message?: string; closed: boolean }> => {
    const c = await rawConnect(p.port('app'));
    c.parse();
    c.socket.write(bytes);
    const m = (await c.waitFor('error')) as DatabaseError | undefined;
    await c.closed;
    return { code: m?.code, message: m?.message, closed: true };
  };

  test('bytes that do not frame a startup packet are closed without a reply, as PostgreSQL does', async () => {
    const oversized = Buffer.alloc(8);
    oversized.writeInt32BE(0x7fffffff, 0);
    oversized.writeInt32BE(196608, 4);
    // node-postgres sends Terminate ('X', length 4) when connect() is followed at once by end().
    const terminate = Buffer.from([0x58, 0, 0, 0, 4, 0, 0, 0]);
    for (const bytes of [oversized, terminate]) {
      const c = await rawConnect(p.port('app'));
      const received: Buffer[] = [];
      c.socket.on('data', (d: Buffer) => received.push(d));
      c.socket.write(bytes);
      await c.closed;
      expect(Buffer.concat(received).length).toBe(0);
    }
    const line = p
      .records()
      .find(
        (r) => r['msg'] === 'handshake failed' && (r['err'] as { code?: string })?.code === 'CLIENT_UNFRAMED',
      );
    expect(line?.['level']).toBe('debug');
  });

  test('node-postgres connect() then end() at once raises no error in the app, plaintext or TLS', async () => {
    for (const ssl of [false, { ca: readFileSync(p.app.localTls.caPath, 'utf8'), servername: 'localhost' }]) {
      const errors: unknown[] = [];
      const before = p.records().filter((r) => String(r['msg']).startsWith('handshake failed')).length;
      const c = new Client({ host: '127.0.0.1', port: p.port('app'), user: 'alice', database: 'appdb', ssl });
      c.on('error', (e) => errors.push(e));
      c.connect().catch((e: unknown) => errors.push(e));
      c.end().catch((e: unknown) => errors.push(e));
      // The proxy has seen the client go and answered (or not) by the time it logs the failure.
      await waitFor(
        async () =>
          p.records().filter((r) => String(r['msg']).startsWith('handshake failed')).length > before,
        5000,
        'the proxy to see the client leave',
      );
      await new Promise((r) => setImmediate(r));
      expect(errors).toEqual([]);
    }
  });

  test('a malformed startup packet gets 08P01', async () => {
    const bad = Buffer.from([0, 0, 0, 12, 0, 3, 0, 0, 0x75, 0x73, 0x65, 0x72]); // "user" unterminated
    const r = await errorOf(bad);
    expect(r.code).toBe('08P01');
    expect(r.message).toMatch(/malformed startup packet/);
  });

  test('protocol 2.0 is refused with 08P01', async () => {
    const r = await errorOf(startup('alice', 'appdb', 0x20000));
    expect(r.code).toBe('08P01');
    expect(r.message).toMatch(/unsupported frontend protocol 2\.0/);
  });

  test('plaintext sent right behind an SSLRequest is refused (no TLS answer)', async () => {
    const c = await rawConnect(p.port('app'));
    c.socket.write(Buffer.concat([request(StartupCode.SSLRequest), startup('alice', 'appdb')]));
    await c.closed;
    const got = c.received();
    expect(got.toString('latin1')).not.toMatch(/^S/);
    expect(got.toString('latin1')).toMatch(/client sent data before the answer/);
  });

  test('a stalled client is cut at the handshake timeout with an ErrorResponse', async () => {
    const c = await rawConnect(p.port('app'));
    c.parse();
    const m = (await c.waitFor('error', 5000)) as DatabaseError | undefined;
    await c.closed;
    expect(m?.code).toBe('08006');
    expect(m?.message).toMatch(/handshake not completed within 400 ms/);
  });

  test('GSSENCRequest is answered N and the startup continues in plaintext', async () => {
    const c = await rawConnect(p.port('app'));
    c.socket.write(request(StartupCode.GSSENCRequest));
    expect(String.fromCharCode(await c.readByte())).toBe('N');
    c.parse();
    c.socket.write(startup('alice', 'appdb'));
    expect(await c.waitFor('readyForQuery')).toBeDefined();
    c.socket.destroy();
  });

  test('direct TLS (PG17 sslnegotiation=direct, ALPN postgresql)', async () => {
    const c = await rawConnect(p.port('app'), {
      tls: { ALPNProtocols: ['postgresql'], ca: p.app.localTls.caCertificate(), servername: 'localhost' },
    });
    expect((c.socket as import('node:tls').TLSSocket).alpnProtocol).toBe('postgresql');
    c.parse();
    c.socket.write(startup('alice', 'appdb'));
    expect(await c.waitFor('readyForQuery')).toBeDefined();
    expect(c.messages.some((m) => m.name === 'authenticationOk')).toBe(true);
    c.socket.destroy();
  });

  test('protocol 3.2: the upstream NegotiateProtocolVersion reaches the client, then the session works', async () => {
    const c = await rawConnect(p.port('app'));
    c.socket.write(startup('alice', 'appdb', PROTOCOL_3_2));
    // pg-protocol does not parse 'v'; check the raw bytes for it ahead of ReadyForQuery.
    const deadline = Date.now() + 10_000;
    while (!c.received().includes(Buffer.from([0x5a, 0, 0, 0, 5, 0x49])) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    const got = c.received();
    const v = got.indexOf(0x76);
    expect(v).toBeGreaterThanOrEqual(0);
    expect(got.readInt32BE(v + 5)).toBe(196608); // newest minor the server supports: 3.0
    expect(got.includes(Buffer.from([0x5a, 0, 0, 0, 5, 0x49]))).toBe(true);
    c.socket.destroy();
  });

  test('a client that connects and leaves (a TCP health check) is logged at debug, not as an error', async () => {
    const before = p.logs.length;
    const c = await rawConnect(p.port('app'));
    c.socket.end();
    await c.closed;
    await new Promise((r) => setTimeout(r, 50));
    const recs = p.logs
      .slice(before)
      .map((l) => JSON.parse(l) as { level: string; msg: string; err?: { code?: string } });
    const failed = recs.find((r) => r.msg === 'handshake failed');
    expect(failed?.err?.code).toBe('CLIENT_GONE');
    expect(failed?.level).toBe('debug');
    expect(recs.filter((r) => ['warn', 'error', 'fatal'].includes(r.level))).toEqual([]);
  });

  test('random bytes never crash the proxy, and it keeps serving', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 1, maxLength: 300 }),
        fc.boolean(),
        async (bytes, withHeader) => {
          const c = await rawConnect(p.port('app'));
          const payload = Buffer.from(bytes);
          if (withHeader && payload.length >= 4)
            payload.writeInt32BE(Math.min(payload.length, 0x7fffffff), 0);
          c.socket.write(payload);
          c.socket.end();
          await c.closed;
        },
      ),
      { numRuns: 150 },
    );
    const r = await psql(`host=127.0.0.1 port=${p.port('app')} user=alice dbname=appdb sslmode=disable`, [
      '-c',
      'select 7',
    ]);
    expect(r.stdout.trim()).toBe('7');
  });
});
