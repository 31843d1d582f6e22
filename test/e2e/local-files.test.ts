/**
 * The proxy's own files and sockets on a shared host, with real clients against an RDS-like
 * PostgreSQL: the local CA in its own directory survives a restart (psql verify-full keeps
 * working with the same file), a planted symlink stops the start, and a unix socket's mode and
 * group decide which local users reach the database.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { startTestProxy } from '../harness/proxy';
import { psql, runProgram } from '../harness/clients';
import { ProxyError } from '../../src/errors';

const isRoot = process.geteuid?.() === 0;
let db: RdsLikePg;
let tmp: string;

beforeAll(async () => {
  db = await startRdsLikePostgres();
});
afterAll(async () => {
  await db?.stop();
});
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rip-lf-'));
  // Other local users (nobody, below) must be able to reach sockets in here.
  fs.chmodSync(tmp, 0o755);
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

const upstream = () => ({ host: db.host, port: db.port, address: db.address, tls: { ca: db.caFile } });

test('localTls.dir: psql verify-full against the CA file, and again with the same file after a restart', async () => {
  const dir = path.join(tmp, 'state');
  const cfg = {
    localTls: { dir },
    listeners: [{ name: 'app', engine: 'postgres' as const, listen: '127.0.0.1:0', upstream: upstream() }],
  };
  const caFile = path.join(dir, 'local-ca.pem');
  const login = (port: number) =>
    psql(`host=localhost port=${port} user=alice dbname=appdb sslmode=verify-full sslrootcert=${caFile}`, [
      '-c',
      'select current_user',
    ]);
  let proxy = await startTestProxy(cfg);
  let r = await login(proxy.port('app'));
  expect(r.stderr).toBe('');
  expect(r.stdout.trim()).toBe('alice');
  const before = fs.readFileSync(caFile, 'utf8');
  expect(fs.statSync(caFile).mode & 0o777).toBe(0o644);
  expect(fs.statSync(path.join(dir, 'local-ca-key.pem')).mode & 0o777).toBe(0o600);
  await proxy.close();

  proxy = await startTestProxy(cfg);
  try {
    expect(fs.readFileSync(caFile, 'utf8')).toBe(before);
    r = await login(proxy.port('app'));
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('alice');
  } finally {
    await proxy.close();
  }
});

test('a symlink planted at the CA path: the start fails naming it, and its target is untouched', async () => {
  const victim = path.join(tmp, 'root-only');
  fs.writeFileSync(victim, 'secret\n', { mode: 0o600 });
  const caFile = path.join(tmp, 'local-ca.pem');
  fs.symlinkSync(victim, caFile);
  const start = startTestProxy({
    localTls: { caFile },
    listeners: [{ name: 'app', engine: 'postgres', listen: '127.0.0.1:0', upstream: upstream() }],
  });
  await expect(start).rejects.toBeInstanceOf(ProxyError);
  await expect(start).rejects.toThrow(`${caFile} is a symlink`);
  expect(fs.readFileSync(victim, 'utf8')).toBe('secret\n');
  expect(fs.statSync(victim).mode & 0o777).toBe(0o600);
});

// Runs psql as the unprivileged user nobody (needs root to switch user).
(isRoot ? describe : describe.skip)('unix socket mode and group', () => {
  const asNobody = (sockDir: string, port: number) =>
    runProgram('runuser', [
      '-u',
      'nobody',
      '--',
      'psql',
      '-X',
      '-At',
      '-d',
      `host=${sockDir} port=${port} user=alice dbname=appdb`,
      '-c',
      'select current_user',
    ]);

  test("socketMode '0660' with socketGroup: other users are refused by the kernel; the default 0777 lets them in", async () => {
    const proxy = await startTestProxy({
      listeners: [
        {
          name: 'private',
          engine: 'postgres',
          listen: path.join(tmp, '.s.PGSQL.6001'),
          socketMode: '0660',
          socketGroup: 'daemon',
          upstream: upstream(),
          client: { tls: 'off' },
        },
        {
          name: 'open',
          engine: 'postgres',
          listen: path.join(tmp, '.s.PGSQL.6002'),
          upstream: upstream(),
          client: { tls: 'off' },
        },
      ],
      localTls: { dir: path.join(tmp, 'tls') },
    });
    try {
      const priv = fs.statSync(path.join(tmp, '.s.PGSQL.6001'));
      expect(priv.isSocket()).toBe(true);
      expect(priv.mode & 0o777).toBe(0o660);
      expect(priv.gid).toBe(1); // daemon
      expect(fs.statSync(path.join(tmp, '.s.PGSQL.6002')).mode & 0o777).toBe(0o777);

      const refused = await asNobody(tmp, 6001);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/Permission denied/);
      const allowed = await asNobody(tmp, 6002);
      expect(allowed.stderr).toBe('');
      expect(allowed.stdout.trim()).toBe('alice');
      // The owner (root here) still connects to the 0660 socket.
      const owner = await psql(`host=${tmp} port=6001 user=alice dbname=appdb`, [
        '-c',
        'select current_user',
      ]);
      expect(owner.stdout.trim()).toBe('alice');
    } finally {
      await proxy.close();
    }
  });
});
