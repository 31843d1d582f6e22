/**
 * `rds-iam-proxy token` and `rds-iam-proxy doctor`, run as the built CLI against an RDS-like
 * PostgreSQL: the token logs in; doctor names the failing step for a wrong CA, a closed port,
 * a refused login and missing credentials.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { createCA } from '../../src/net/certs';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { runProgram } from '../harness/clients';
import { CLI, requireBuilt } from '../harness/cliproc';
import { LONG_SESSION_TOKEN } from '../harness/proxy';
import { TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../harness/sign';
import { freePort } from '../harness/util';

let db: RdsLikePg;
let dir: string;
const CREDS = {
  AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY,
  AWS_SESSION_TOKEN: LONG_SESSION_TOKEN,
};

beforeAll(async () => {
  requireBuilt();
  db = await startRdsLikePostgres();
  dir = mkdtempSync(path.join(os.tmpdir(), 'rip-doctor-'));
});
afterAll(async () => {
  await db?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const cli = (args: string[], env: NodeJS.ProcessEnv = CREDS) =>
  runProgram(process.execPath, [CLI, ...args], { env });

interface Step {
  listener: string;
  step: string;
  status: string;
  detail: string;
  causes?: string[];
  fix?: string;
}

async function doctor(
  over: { ca?: string; port?: number; region?: string } = {},
  env: NodeJS.ProcessEnv = CREDS,
) {
  const file = path.join(dir, `cfg-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(
    file,
    [
      'listeners:',
      '  - name: app',
      '    engine: postgres',
      '    listen: 127.0.0.1:0',
      '    upstream:',
      `      host: ${db.host}`,
      `      port: ${over.port ?? db.port}`,
      `      address: ${db.address}`,
      '      user: alice',
      '      database: appdb',
      `      tls: { ca: ${over.ca ?? db.caFile} }`,
      `    auth: { mode: iam, region: ${over.region ?? db.region} }`,
      '',
    ].join('\n'),
  );
  const r = await cli(['doctor', '--config', file, '--json'], env);
  const report = JSON.parse(r.stdout) as { ok: boolean; steps: Step[] };
  const text = await cli(['doctor', '--config', file], env);
  return {
    code: r.code,
    report,
    text: text.stdout,
    failed: report.steps.filter((s) => s.status === 'fail').map((s) => s.step),
  };
}

test('token prints only a token, and it logs in directly to the database', async () => {
  const r = await cli([
    'token',
    '--hostname',
    db.host,
    '--port',
    String(db.port),
    '--username',
    'alice',
    '--region',
    db.region,
  ]);
  expect(r.code).toBe(0);
  expect(r.stderr).toBe('');
  const lines = r.stdout.split('\n').filter(Boolean);
  expect(lines).toHaveLength(1);
  const token = lines[0] as string;
  expect(token.startsWith(`${db.host}:${db.port}/?Action=connect&DBUser=alice&`)).toBe(true);
  expect(token).toContain('X-Amz-Security-Token=');
  const c = new Client({
    host: db.address,
    port: db.port,
    user: 'alice',
    database: 'appdb',
    password: token,
    ssl: { ca: db.caPem, servername: db.host },
  });
  await c.connect();
  expect((await c.query('select current_user as u')).rows[0].u).toBe('alice');
  await c.end();
});

test('token without credentials fails on stderr with the sources named, and nothing on stdout', async () => {
  const r = await cli(
    ['token', '--hostname', db.host, '--port', '5432', '--username', 'alice', '--region', 'us-east-1'],
    {},
  );
  expect(r.code).not.toBe(0);
  expect(r.stdout).toBe('');
  expect(r.stderr).toMatch(/no AWS credentials/);
});

test('doctor passes every step against a healthy setup', async () => {
  const d = await doctor();
  expect(d.failed).toEqual([]);
  expect(d.code).toBe(0);
  const steps = Object.fromEntries(d.report.steps.map((s) => [s.step, s]));
  expect(steps['credentials']?.detail).toMatch(/environment variables/);
  expect(steps['token']?.status).toBe('ok');
  expect(steps['tls']?.detail).toMatch(
    new RegExp(`subject CN=${db.host.replace(/\./g, '\\.')}; issuer CN=rds-iam-proxy test CA; valid until`),
  );
  expect(steps['login']?.detail).toBe('logged in as alice to appdb');
  expect(d.text).toMatch(/\[app\] ok {3}login/);
  expect(d.text).not.toContain('X-Amz-Signature');
});

test('doctor names the TLS step for a wrong CA', async () => {
  const ca = path.join(dir, 'other-ca.pem');
  writeFileSync(ca, createCA('Another CA').cert);
  const d = await doctor({ ca });
  expect(d.code).toBe(1);
  expect(d.failed).toEqual(['tls']);
  expect(d.report.steps.find((s) => s.step === 'tls')?.detail).toMatch(/issuer: CN=rds-iam-proxy test CA/);
});

test('doctor names the TCP step for a closed port', async () => {
  const d = await doctor({ port: await freePort() });
  expect(d.code).toBe(1);
  expect(d.failed).toEqual(['tcp']);
  expect(d.report.steps.find((s) => s.step === 'tcp')?.fix).toMatch(/security group/);
});

test('doctor names the login step for a refused login, with the likely causes', async () => {
  const d = await doctor({ region: 'eu-central-1' });
  expect(d.code).toBe(1);
  expect(d.failed).toEqual(['login']);
  const login = d.report.steps.find((s) => s.step === 'login');
  expect(login?.detail).toMatch(/PAM authentication failed for user "alice"/);
  expect(login?.causes?.join('\n')).toMatch(/rds_iam/);
  expect(login?.causes?.join('\n')).toMatch(/rds-db:connect on arn:aws:rds-db:eu-central-1:/);
  expect(d.text).toMatch(/likely cause: .*region/);
});

test('doctor names the credentials step when no source has credentials', async () => {
  const d = await doctor({}, {});
  expect(d.code).toBe(1);
  expect(d.failed).toContain('credentials');
  expect(d.report.steps.find((s) => s.step === 'credentials')?.detail).toMatch(
    /Could not load credentials from any providers/,
  );
});

describe('doctor against MariaDB', () => {
  let maria: import('../harness/mariadb').RdsLikeMariaDb;
  beforeAll(async () => {
    const { startRdsLikeMariaDb } = await import('../harness/mariadb');
    maria = await startRdsLikeMariaDb();
  });
  afterAll(async () => {
    await maria?.stop();
  });

  const run = async (region: string) => {
    const file = path.join(dir, `maria-${region}.yaml`);
    writeFileSync(
      file,
      [
        'listeners:',
        '  - name: mysql',
        '    engine: mysql',
        '    listen: 127.0.0.1:0',
        '    upstream:',
        `      host: ${maria.host}`,
        `      port: ${maria.port}`,
        `      address: ${maria.address}`,
        '      user: alice',
        '      database: appdb',
        `      tls: { ca: ${maria.caFile} }`,
        `    auth: { mode: iam, region: ${region} }`,
        '',
      ].join('\n'),
    );
    const r = await cli(['doctor', '--config', file, '--json']);
    return { code: r.code, steps: (JSON.parse(r.stdout) as { steps: Step[] }).steps };
  };

  test('passes TLS and a real mysql_clear_password login', async () => {
    const d = await run(maria.region);
    expect(d.steps.filter((s) => s.status === 'fail')).toEqual([]);
    expect(d.code).toBe(0);
    expect(d.steps.find((s) => s.step === 'tls')?.detail).toMatch(/issuer CN=rds-iam-proxy test CA/);
    expect(d.steps.find((s) => s.step === 'login')?.detail).toBe('logged in as alice to appdb');
  });

  test('names the login step, with the AWSAuthenticationPlugin cause, when the token is refused', async () => {
    const d = await run('ap-south-1');
    expect(d.code).toBe(1);
    const login = d.steps.find((s) => s.step === 'login');
    expect(login?.status).toBe('fail');
    expect(login?.detail).toMatch(/Access denied for user 'alice'.*errno 1045/);
    expect(login?.causes?.join('\n')).toMatch(/AWSAuthenticationPlugin/);
  });
});
