/**
 * Credentials in an air-gapped VPC: the SDK's real providers (IMDSv2, container endpoint, web
 * identity, AssumeRole) pointed at local fakes; the tokens they sign (session token, over 1 KB)
 * log into the RDS-like PostgreSQL through the proxy; no other outbound connection is attempted.
 */
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import type { ConfigInput } from '../../src/config/schema';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { startTestProxy, type TestProxy } from '../harness/proxy';
import { startFakeAws, type FakeAws } from '../harness/fakeaws';
import { TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../harness/sign';

let db: RdsLikePg;
let dsqlDb: RdsLikePg;
let fake: FakeAws;
let dir: string;
const proxies: TestProxy[] = [];
const savedEnv = { ...process.env };
const connects: string[] = [];
let connectSpy: jest.SpyInstance;

beforeAll(async () => {
  [db, dsqlDb] = await Promise.all([
    startRdsLikePostgres(),
    startRdsLikePostgres({
      endpoint: 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws',
      tokenKind: 'dsql',
      users: ['admin', 'app'],
    }),
  ]);
  fake = await startFakeAws({
    onIssue: (id, secret) => {
      db.keys[id] = secret;
      dsqlDb.keys[id] = secret;
    },
  });
  dir = mkdtempSync(path.join(os.tmpdir(), 'rip-creds-'));
  // Record every outbound connection the process attempts from here on.
  const original = net.Socket.prototype.connect;
  connectSpy = jest.spyOn(net.Socket.prototype, 'connect').mockImplementation(function (
    this: net.Socket,
    ...args: unknown[]
  ) {
    const a = args[0] as unknown;
    const o = (Array.isArray(a) ? a[0] : a) as
      { host?: string; path?: string; port?: number } | string | number;
    if (typeof o === 'object' && o !== null) connects.push(o.path ?? `${o.host ?? 'localhost'}:${o.port}`);
    else if (typeof o === 'number')
      connects.push(`${typeof args[1] === 'string' ? args[1] : 'localhost'}:${o}`); // connect(port, host)
    else connects.push(String(o));
    return (original as (...x: unknown[]) => net.Socket).apply(this, args);
  });
});

afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.close()));
  for (const k of Object.keys(process.env)) if (!(k in savedEnv)) delete process.env[k];
  Object.assign(process.env, savedEnv);
  fake.failing = false;
  fake.options.dateOffsetSeconds = 0;
});

afterAll(async () => {
  connectSpy.mockRestore();
  await fake?.close();
  await Promise.all([db?.stop(), dsqlDb?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

type Aws = NonNullable<ConfigInput['aws']>;
async function proxyFor(
  aws: Aws,
  target: RdsLikePg = db,
  auth: Record<string, unknown> = {},
): Promise<TestProxy> {
  const p = await startTestProxy(
    {
      aws,
      listeners: [
        {
          name: 'app',
          engine: 'postgres',
          listen: '127.0.0.1:0',
          upstream: {
            host: target.host,
            port: target.port,
            address: target.address,
            tls: { ca: target.caFile },
          },
          auth: { mode: 'iam', region: target.region, ...auth },
          client: { tls: 'off' },
        },
      ],
    },
    { realAws: true },
  );
  proxies.push(p);
  return p;
}

async function whoami(p: TestProxy, user = 'alice'): Promise<string> {
  const c = new Client({ host: '127.0.0.1', port: p.port('app'), user, database: 'appdb' });
  await c.connect();
  try {
    return (await c.query('select current_user as u')).rows[0].u as string;
  } finally {
    await c.end();
  }
}

const lastAccepted = (d: RdsLikePg = db) => {
  const e = d.verifier.entries.at(-1);
  expect(e?.ok).toBe(true);
  return e;
};

test('IMDSv2 (token PUT, role, credentials) at a configured endpoint', async () => {
  delete process.env['AWS_EC2_METADATA_DISABLED'];
  const p = await proxyFor({ imdsEndpoint: fake.url });
  expect(await whoami(p)).toBe('alice');
  expect(fake.requests.some((r) => r.method === 'PUT' && r.path === '/latest/api/token')).toBe(true);
  expect(fake.issued.at(-1)?.via).toBe('imds');
  expect(lastAccepted()?.tokenLength).toBeGreaterThan(1024);
});

test('container credentials (ECS / EKS Pod Identity) with an authorization token', async () => {
  fake.options.containerAuthToken = 'pod-identity-token';
  process.env['AWS_CONTAINER_AUTHORIZATION_TOKEN'] = 'pod-identity-token';
  const p = await proxyFor({ containerCredentialsUri: `${fake.url}/container/credentials` });
  expect(await whoami(p)).toBe('alice');
  expect(fake.issued.at(-1)?.via).toBe('container');
  lastAccepted();
});

test('web identity (IRSA) through a configured STS endpoint', async () => {
  const tokenFile = path.join(dir, 'web-identity-token');
  writeFileSync(tokenFile, 'eyJhbGciOiJSUzI1NiJ9.test.signature');
  process.env['AWS_WEB_IDENTITY_TOKEN_FILE'] = tokenFile;
  process.env['AWS_ROLE_ARN'] = 'arn:aws:iam::123456789012:role/app-irsa';
  process.env['AWS_ROLE_SESSION_NAME'] = 'irsa-test';
  const p = await proxyFor({ region: 'us-east-1', stsEndpoint: fake.url });
  expect(await whoami(p)).toBe('alice');
  const call = fake.requests.find((r) => r.action === 'AssumeRoleWithWebIdentity');
  expect(call?.body).toContain('RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fapp-irsa');
  expect(fake.issued.at(-1)?.via).toBe('AssumeRoleWithWebIdentity');
  lastAccepted();
});

test('assume-role (cross-account) with external id, session name and duration', async () => {
  process.env['AWS_ACCESS_KEY_ID'] = TEST_ACCESS_KEY_ID;
  process.env['AWS_SECRET_ACCESS_KEY'] = TEST_SECRET_ACCESS_KEY;
  const p = await proxyFor({
    region: 'us-east-1',
    stsEndpoint: fake.url,
    roleArn: 'arn:aws:iam::210987654321:role/db-access',
    externalId: 'ext-123',
    roleSessionName: 'proxy-test',
    roleDurationSeconds: 1800,
  });
  expect(await whoami(p)).toBe('alice');
  const call = fake.requests.find((r) => r.action === 'AssumeRole');
  const form = new URLSearchParams(call?.body);
  expect(form.get('RoleArn')).toBe('arn:aws:iam::210987654321:role/db-access');
  expect(form.get('ExternalId')).toBe('ext-123');
  expect(form.get('RoleSessionName')).toBe('proxy-test');
  expect(form.get('DurationSeconds')).toBe('1800');
  // The STS call itself was signed with the base (environment) credentials.
  expect(String(call?.headers['authorization'])).toContain(`Credential=${TEST_ACCESS_KEY_ID}/`);
  expect(fake.issued.at(-1)?.via).toBe('AssumeRole');
  lastAccepted();
});

test('a revoked key: the refused cached token is replaced with fresh credentials and the login retried once', async () => {
  delete process.env['AWS_EC2_METADATA_DISABLED'];
  const p = await proxyFor({ imdsEndpoint: fake.url });
  expect(await whoami(p)).toBe('alice');
  const first = fake.issued.at(-1);
  delete db.keys[first?.accessKeyId as string]; // revoked
  const before = db.verifier.entries.length;
  expect(await whoami(p)).toBe('alice');
  const attempts = db.verifier.entries.slice(before);
  expect(attempts.map((a) => a.ok)).toEqual([false, true]);
  expect(attempts[0]?.reason).toMatch(/unknown access key id/);
  expect(fake.issued.at(-1)?.accessKeyId).not.toBe(first?.accessKeyId);
  expect(
    p
      .records()
      .some((r) => r['msg'] === 'upstream refused a cached token; retrying once with fresh credentials'),
  ).toBe(true);
});

test('a credentials outage names the failing source in a 28000 error', async () => {
  delete process.env['AWS_EC2_METADATA_DISABLED'];
  fake.failing = true;
  const p = await proxyFor({ imdsEndpoint: fake.url, httpTimeoutMs: 500 });
  const c = new Client({ host: '127.0.0.1', port: p.port('app'), user: 'alice', database: 'appdb' });
  const err = (await c.connect().catch((e: unknown) => e)) as { code?: string; message?: string };
  expect(err.code).toBe('28000');
  expect(err.message).toMatch(/no AWS credentials/);
});

test('clock skew is estimated from the Date headers of credential calls and warned about', async () => {
  delete process.env['AWS_EC2_METADATA_DISABLED'];
  fake.options.dateOffsetSeconds = -600; // AWS says it is 10 minutes earlier: our clock is ahead
  const p = await proxyFor({ imdsEndpoint: fake.url });
  await whoami(p);
  const warn = p.records().find((r) => r['msg'] === 'host clock skew');
  expect(warn?.['offsetSeconds']).toBeGreaterThan(590);
  expect(String(warn?.['detail'])).toMatch(/ahead of AWS/);
  expect(String(warn?.['hint'])).toMatch(/fix NTP/);
});

test('Aurora DSQL tokens: DbConnectAdmin for admin, DbConnect for other roles', async () => {
  process.env['AWS_ACCESS_KEY_ID'] = TEST_ACCESS_KEY_ID;
  process.env['AWS_SECRET_ACCESS_KEY'] = TEST_SECRET_ACCESS_KEY;
  const p = await proxyFor({}, dsqlDb, { mode: 'dsql' });
  expect(await whoami(p, 'admin')).toBe('admin');
  expect(await whoami(p, 'app')).toBe('app');
  expect(dsqlDb.verifier.entries.map((e) => [e.user, e.ok])).toEqual([
    ['admin', true],
    ['app', true],
  ]);
});

test('temporary credentials from IMDS sign a token that logs into the RDS-like MariaDB through the proxy', async () => {
  delete process.env['AWS_EC2_METADATA_DISABLED'];
  const { startRdsLikeMariaDb } = await import('../harness/mariadb');
  const maria = await startRdsLikeMariaDb();
  const registered = fake.options.onIssue;
  fake.options.onIssue = (id, secret) => {
    registered(id, secret);
    maria.keys[id] = secret;
  };
  try {
    const p = await startTestProxy(
      {
        aws: { imdsEndpoint: fake.url },
        listeners: [
          {
            name: 'mysql',
            engine: 'mysql',
            listen: '127.0.0.1:0',
            upstream: {
              host: maria.host,
              port: maria.port,
              address: maria.address,
              tls: { ca: maria.caFile },
            },
            auth: { mode: 'iam', region: maria.region },
            client: { tls: 'off' },
          },
        ],
      },
      { realAws: true },
    );
    proxies.push(p);
    const mysql = await import('mysql2/promise');
    const conn = await mysql.createConnection({
      host: '127.0.0.1',
      port: p.port('mysql'),
      user: 'alice',
      database: 'appdb',
    });
    const [rows] = await conn.query('select current_user() as u');
    await conn.end();
    expect((rows as { u: string }[])[0]?.u).toMatch(/^alice@/);
    const last = maria.verifier.entries.at(-1);
    expect(last?.ok).toBe(true);
    expect(last?.tokenLength).toBeGreaterThan(1024);
    expect(fake.issued.at(-1)?.via).toBe('imds');

    // Revoke the key behind the cached token: the proxy retries once with fresh credentials.
    delete maria.keys[fake.issued.at(-1)?.accessKeyId as string];
    const before = maria.verifier.entries.length;
    const again = await mysql.createConnection({
      host: '127.0.0.1',
      port: p.port('mysql'),
      user: 'alice',
      database: 'appdb',
    });
    await again.query('select 1');
    await again.end();
    expect(maria.verifier.entries.slice(before).map((x) => x.ok)).toEqual([false, true]);
  } finally {
    fake.options.onIssue = registered;
    await maria.stop();
  }
});

test('no outbound connection goes anywhere but the configured local endpoints', () => {
  expect(connects.length).toBeGreaterThan(10);
  const foreign = connects.filter((c) => !/^(127\.0\.0\.1|localhost|::1):|^\//.test(c));
  expect(foreign).toEqual([]);
});
