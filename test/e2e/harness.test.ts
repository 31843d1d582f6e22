/**
 * Proves the RDS-like test databases behave like RDS with IAM auth, with real clients and no
 * proxy: TLS with the endpoint's certificate, tokens checked by signature, endpoint and user,
 * plaintext refused. Needs root, gcc and libpam0g-dev (see test/harness/pam.ts).
 */
import * as net from 'node:net';
import { Signer } from '@aws-sdk/rds-signer';
import * as mysql from 'mysql2/promise';
import { Client, type ClientConfig } from 'pg';
import { startRdsLikeMariaDb, type RdsLikeMariaDb } from '../harness/mariadb';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { signToken, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../harness/sign';

const SESSION_TOKEN = `IQoJb3JpZ2luX2VjE${'A1b2+C3d/E4f='.repeat(70)}`;

function iamToken(db: { host: string; port: number; region: string }, user: string, sessionToken?: string) {
  return new Signer({
    hostname: db.host,
    port: db.port,
    username: user,
    region: db.region,
    credentials: {
      accessKeyId: TEST_ACCESS_KEY_ID,
      secretAccessKey: TEST_SECRET_ACCESS_KEY,
      ...(sessionToken ? { sessionToken } : {}),
    },
  }).getAuthToken();
}

describe('RDS-like PostgreSQL', () => {
  let db: RdsLikePg;
  beforeAll(async () => {
    const t0 = Date.now();
    db = await startRdsLikePostgres({ passwordUsers: { bob: 'bob-password' } });
    console.log(`RDS-like PostgreSQL stand-up: ${Date.now() - t0} ms`);
  });
  afterAll(() => db?.stop());

  /** Connects, runs `select current_user`, disconnects. */
  async function whoami(cfg: Partial<ClientConfig>): Promise<string> {
    const c = new Client({
      host: db.address,
      port: db.port,
      database: 'appdb',
      ssl: { ca: db.caPem, servername: db.host },
      ...cfg,
    });
    await c.connect();
    try {
      return (await c.query<{ u: string }>('select current_user as u')).rows[0]!.u;
    } finally {
      await c.end();
    }
  }

  it('logs alice in over verified TLS with an rds-signer token', async () => {
    expect(await whoami({ user: 'alice', password: await iamToken(db, 'alice') })).toBe('alice');
    expect(db.verifier.entries.at(-1)).toMatchObject({ user: 'alice', ok: true });
  });

  it('accepts a token longer than 1 KB (session credentials)', async () => {
    const token = await iamToken(db, 'alice', SESSION_TOKEN);
    expect(token.length).toBeGreaterThan(1024);
    expect(await whoami({ user: 'alice', password: token })).toBe('alice');
    expect(db.verifier.entries.at(-1)).toMatchObject({ ok: true, tokenLength: token.length });
  });

  it('refuses a token with a wrong signature (28000) and logs why', async () => {
    const token = signToken({
      host: db.host,
      port: db.port,
      user: 'alice',
      region: db.region,
      accessKeyId: TEST_ACCESS_KEY_ID,
      secretAccessKey: 'not-the-secret',
    });
    await expect(whoami({ user: 'alice', password: token })).rejects.toMatchObject({
      code: '28000',
      message: 'PAM authentication failed for user "alice"',
    });
    expect(db.verifier.entries.at(-1)).toMatchObject({
      user: 'alice',
      ok: false,
      reason: 'signature mismatch',
    });
  });

  it('refuses plaintext connections before any authentication', async () => {
    const before = db.verifier.entries.length;
    await expect(
      whoami({ user: 'alice', password: await iamToken(db, 'alice'), ssl: false }),
    ).rejects.toMatchObject({ code: '28000', message: expect.stringMatching(/no encryption/) });
    expect(db.verifier.entries).toHaveLength(before);
  });

  it('serves a certificate for the endpoint name only', async () => {
    await expect(
      whoami({
        user: 'alice',
        password: await iamToken(db, 'alice'),
        ssl: { ca: db.caPem, servername: 'other.example.com' },
      }),
    ).rejects.toMatchObject({ code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
  });

  it('logs password users in with SCRAM over TLS, not through the verifier', async () => {
    const before = db.verifier.entries.length;
    expect(await whoami({ user: 'bob', password: 'bob-password' })).toBe('bob');
    await expect(whoami({ user: 'bob', password: 'wrong' })).rejects.toMatchObject({ code: '28P01' });
    expect(db.verifier.entries).toHaveLength(before);
  });

  it('gives the harness a superuser over the unix socket', async () => {
    expect(await db.psqlAdmin("select current_setting('ssl'), current_user")).toBe('on|postgres');
    expect(
      await db.psqlAdmin(
        'select datname from pg_database where datname in ($$appdb$$, $$otherdb$$) order by 1',
      ),
    ).toBe('appdb\notherdb');
  });
});

describe('RDS-like MariaDB', () => {
  let db: RdsLikeMariaDb;
  beforeAll(async () => {
    const t0 = Date.now();
    db = await startRdsLikeMariaDb();
    console.log(`RDS-like MariaDB stand-up: ${Date.now() - t0} ms`);
  });
  afterAll(() => db?.stop());

  /**
   * Connects as `user` sending `token` through mysql_clear_password, runs `select current_user()`.
   * The socket goes to 127.0.0.1 while `host` is the endpoint name, so mysql2 verifies the
   * certificate for that name (it skips the name check for IP hosts).
   */
  async function whoami(
    user: string,
    token: string,
    ssl: mysql.SslOptions | null = { ca: db.caPem, verifyIdentity: true },
  ) {
    const c = await mysql.createConnection({
      host: db.host,
      port: db.port,
      stream: () => net.connect(db.port, db.address),
      user,
      database: 'appdb',
      ...(ssl ? { ssl } : {}),
      authPlugins: { mysql_clear_password: () => () => Buffer.from(`${token}\0`) },
    });
    try {
      const [rows] = await c.query<mysql.RowDataPacket[]>('select current_user() as u');
      return String(rows[0]?.u);
    } finally {
      await c.end();
    }
  }

  it('logs alice in over verified TLS with a long rds-signer token', async () => {
    const token = await iamToken(db, 'alice', SESSION_TOKEN);
    expect(token.length).toBeGreaterThan(1024);
    expect(await whoami('alice', token)).toBe('alice@%');
    expect(db.verifier.entries.at(-1)).toMatchObject({ user: 'alice', ok: true, tokenLength: token.length });
  });

  it('refuses a token signed for another endpoint (1045) and logs why', async () => {
    const token = await iamToken({ ...db, port: db.port + 1 }, 'alice');
    await expect(whoami('alice', token)).rejects.toMatchObject({ errno: 1045 });
    expect(db.verifier.entries.at(-1)).toMatchObject({
      ok: false,
      reason: `signed for ${db.host}:${db.port + 1}, expected ${db.host}:${db.port}`,
    });
  });

  it('refuses plaintext logins, though only after PAM has seen the token', async () => {
    // MariaDB enforces REQUIRE SSL / require_secure_transport after the auth exchange, unlike
    // pg_hba's hostnossl reject: a plaintext client's token does reach the verifier. Proxy tests
    // must therefore not take "no verifier entry" as proof that a MariaDB upstream leg used TLS.
    const token = await iamToken(db, 'alice');
    await expect(whoami('alice', token, null)).rejects.toMatchObject({
      errno: 1045,
      message: expect.stringMatching(/^Access denied for user 'alice'/),
    });
    expect(db.verifier.entries.at(-1)).toMatchObject({ ok: true, tokenLength: token.length });
  });

  it('gives the harness root over the unix socket', async () => {
    expect(await db.sqlAdmin('select @@require_secure_transport, @@pam_use_cleartext_plugin')).toBe('1\t1');
  });
});
