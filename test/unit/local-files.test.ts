/**
 * The proxy's own files and sockets (src/net/files.ts, src/net/localTls.ts): a directory only the
 * proxy can write, no link followed, atomic writes with exact modes, two proxies that do not
 * clash, and unix socket mode / group.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  ensureOwnDir,
  groupId,
  readOwnFile,
  resolveStateDir,
  setSocketPermissions,
  writeOwnFile,
} from '../../src/net/files';
import { createCA } from '../../src/net/certs';
import { LocalTls } from '../../src/net/localTls';
import { ProxyError } from '../../src/errors';

const isRoot = process.geteuid?.() === 0;
/** An unprivileged uid that owns nothing here (Debian's nobody). */
const OTHER_UID = 65534;

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rip-files-'));
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

const mode = (p: string): number => fs.lstatSync(p).mode & 0o7777;
/** The thrown error, so that both its class and its words can be checked. */
function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a throw');
}

describe('resolveStateDir', () => {
  const env = {
    STATE_DIRECTORY: '/var/lib/rds-iam-proxy:/var/lib/other',
    RUNTIME_DIRECTORY: '/run/rds-iam-proxy',
    XDG_RUNTIME_DIR: '/run/user/1000',
  };

  test('config first, then the caFile directory, then systemd state, runtime, XDG', () => {
    expect(resolveStateDir({ dir: '/srv/x', caFile: '/etc/y/ca.pem' }, env)).toEqual({
      path: '/srv/x',
      source: 'localTls.dir',
    });
    expect(resolveStateDir({ caFile: '/etc/y/ca.pem' }, env)).toEqual({
      path: '/etc/y',
      source: 'localTls.caFile',
    });
    expect(resolveStateDir({}, env)).toEqual({ path: '/var/lib/rds-iam-proxy', source: 'STATE_DIRECTORY' });
    expect(resolveStateDir({}, { ...env, STATE_DIRECTORY: undefined })).toEqual({
      path: '/run/rds-iam-proxy',
      source: 'RUNTIME_DIRECTORY',
    });
    expect(resolveStateDir({}, { XDG_RUNTIME_DIR: '/run/user/1000' })).toEqual({
      path: '/run/user/1000/rds-iam-proxy',
      source: 'XDG_RUNTIME_DIR',
    });
  });

  test('without any: /run as root, else a per-uid directory under the temp dir', () => {
    const d = resolveStateDir({}, {});
    expect(d.source).toBe('default');
    expect(d.path).toBe(
      isRoot && fs.existsSync('/run')
        ? '/run/rds-iam-proxy'
        : path.join(os.tmpdir(), `rds-iam-proxy-${process.geteuid?.()}`),
    );
  });
});

describe('ensureOwnDir', () => {
  test('creates the directory mode 0755 whatever the umask', () => {
    const old = process.umask(0o077);
    try {
      const d = path.join(tmp, 'a', 'b');
      ensureOwnDir(d, { createParents: true });
      expect(mode(d)).toBe(0o755);
    } finally {
      process.umask(old);
    }
  });

  test('keeps a narrower mode the operator chose', () => {
    const d = path.join(tmp, 'private');
    fs.mkdirSync(d, { mode: 0o700 });
    ensureOwnDir(d);
    expect(mode(d)).toBe(0o700);
  });

  test('refuses a directory writable by others, naming the path and the fix', () => {
    const d = path.join(tmp, 'open');
    fs.mkdirSync(d);
    fs.chmodSync(d, 0o777);
    const err = thrown(() => ensureOwnDir(d));
    expect(err).toBeInstanceOf(ProxyError);
    expect(err.message).toContain(d);
    expect(err.message).toMatch(/writable by group or others \(mode 777\).*chmod go-w/);
    fs.chmodSync(d, 0o775);
    expect(thrown(() => ensureOwnDir(d)).message).toMatch(/mode 775/);
  });

  test('accepts a sticky world-writable directory (like /tmp): others cannot replace our files there', () => {
    const d = path.join(tmp, 'sticky');
    fs.mkdirSync(d);
    fs.chmodSync(d, 0o1777);
    expect(() => ensureOwnDir(d)).not.toThrow();
  });

  test('refuses a symlink in place of the directory', () => {
    const real = path.join(tmp, 'real');
    fs.mkdirSync(real);
    const link = path.join(tmp, 'link');
    fs.symlinkSync(real, link);
    const err = thrown(() => ensureOwnDir(link));
    expect(err).toBeInstanceOf(ProxyError);
    expect(err.message).toMatch(new RegExp(`${link} is a symlink.*localTls\\.dir`));
  });

  (isRoot ? test : test.skip)('a root-owned link (systemd DynamicUser state) only where allowed', () => {
    const real = path.join(tmp, 'private-state');
    fs.mkdirSync(real, { mode: 0o755 });
    const link = path.join(tmp, 'state');
    fs.symlinkSync(real, link);
    expect(() => ensureOwnDir(link, { rootLinkOk: true })).not.toThrow();
    fs.chmodSync(real, 0o777);
    expect(thrown(() => ensureOwnDir(link, { rootLinkOk: true })).message).toMatch(
      /writable by group or others/,
    );
    fs.lchownSync(link, OTHER_UID, OTHER_UID);
    fs.chmodSync(real, 0o755);
    expect(thrown(() => ensureOwnDir(link, { rootLinkOk: true })).message).toContain(`${link} is a symlink`);
  });

  (isRoot ? test : test.skip)('refuses a directory owned by another user', () => {
    const d = path.join(tmp, 'theirs');
    fs.mkdirSync(d, { mode: 0o755 });
    fs.chownSync(d, OTHER_UID, OTHER_UID);
    const err = thrown(() => ensureOwnDir(d));
    expect(err).toBeInstanceOf(ProxyError);
    expect(err.message).toContain(`${d} is owned by uid ${OTHER_UID}`);
    expect(err.message).toMatch(/set localTls\.dir/);
  });
});

describe('writeOwnFile / readOwnFile', () => {
  test('exact modes whatever the umask, no temporary file left behind', () => {
    const old = process.umask(0o077);
    try {
      writeOwnFile(path.join(tmp, 'ca.pem'), 'cert', 0o644);
      writeOwnFile(path.join(tmp, 'key.pem'), 'key', 0o600);
    } finally {
      process.umask(old);
    }
    expect(mode(path.join(tmp, 'ca.pem'))).toBe(0o644);
    expect(mode(path.join(tmp, 'key.pem'))).toBe(0o600);
    expect(fs.readdirSync(tmp).sort()).toEqual(['ca.pem', 'key.pem']);
    expect(readOwnFile(path.join(tmp, 'key.pem'), { secret: true })?.toString()).toBe('key');
    expect(readOwnFile(path.join(tmp, 'missing.pem'))).toBeUndefined();
  });

  test('replaces its own file atomically', () => {
    const f = path.join(tmp, 'ca.pem');
    writeOwnFile(f, 'one', 0o644);
    const inode = fs.statSync(f).ino;
    writeOwnFile(f, 'two', 0o644);
    expect(fs.readFileSync(f, 'utf8')).toBe('two');
    expect(fs.statSync(f).ino).not.toBe(inode);
  });

  test('a planted symlink is neither followed nor replaced', () => {
    const victim = path.join(tmp, 'victim');
    fs.writeFileSync(victim, 'root only', { mode: 0o600 });
    const f = path.join(tmp, 'local-ca.pem');
    fs.symlinkSync(victim, f);
    const err = thrown(() => writeOwnFile(f, 'CA', 0o644));
    expect(err).toBeInstanceOf(ProxyError);
    expect(err.message).toContain(`${f} is a symlink`);
    expect(fs.readFileSync(victim, 'utf8')).toBe('root only');
    expect(mode(victim)).toBe(0o600);
    expect(fs.lstatSync(f).isSymbolicLink()).toBe(true);
    expect(thrown(() => readOwnFile(f)).message).toContain(`${f} is a symlink`);
  });

  test('exclusive: the first writer wins and the second is told so', () => {
    const f = path.join(tmp, 'key.pem');
    expect(writeOwnFile(f, 'first', 0o600, { exclusive: true })).toBe(true);
    expect(writeOwnFile(f, 'second', 0o600, { exclusive: true })).toBe(false);
    expect(fs.readFileSync(f, 'utf8')).toBe('first');
    expect(fs.readdirSync(tmp)).toEqual(['key.pem']);
  });

  test('a key readable by others is refused', () => {
    const f = path.join(tmp, 'key.pem');
    fs.writeFileSync(f, 'k', { mode: 0o644 });
    fs.chmodSync(f, 0o644);
    expect(thrown(() => readOwnFile(f, { secret: true })).message).toMatch(
      /mode 644; the proxy expects 0600/,
    );
  });

  (isRoot ? test : test.skip)('a file planted by another user is refused, not replaced', () => {
    const f = path.join(tmp, 'local-ca.pem');
    fs.writeFileSync(f, 'their CA');
    fs.chownSync(f, OTHER_UID, OTHER_UID);
    expect(thrown(() => writeOwnFile(f, 'CA', 0o644)).message).toContain(`owned by uid ${OTHER_UID}`);
    expect(fs.readFileSync(f, 'utf8')).toBe('their CA');
  });
});

describe('LocalTls files', () => {
  test('a symlink planted at the CA path fails the start with a clear message and is not followed', () => {
    const victim = path.join(tmp, 'shadow');
    fs.writeFileSync(victim, 'root:x:0:0\n', { mode: 0o600 });
    const caFile = path.join(tmp, 'local-ca.pem');
    fs.symlinkSync(victim, caFile);
    const err = thrown(() => new LocalTls({ caFile }).contextFor('auto'));
    expect(err).toBeInstanceOf(ProxyError);
    expect(err.message).toContain(`${caFile} is a symlink`);
    expect(err.message).toMatch(/Remove it/);
    expect(fs.readFileSync(victim, 'utf8')).toBe('root:x:0:0\n');
  });

  test('a world-writable directory is refused before anything is written', () => {
    const dir = path.join(tmp, 'open');
    fs.mkdirSync(dir);
    fs.chmodSync(dir, 0o777);
    expect(thrown(() => new LocalTls({ dir }).contextFor('auto')).message).toContain(`${dir} is writable`);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  test('cache on: CA 0644 and key 0600 in the directory; a restart reuses the CA', () => {
    const dir = path.join(tmp, 'state');
    const first = new LocalTls({ dir });
    expect(first.cache).toBe(true);
    first.contextFor('auto');
    expect(first.caPath).toBe(path.join(dir, 'local-ca.pem'));
    expect(mode(first.caPath)).toBe(0o644);
    expect(mode(first.keyPath)).toBe(0o600);
    expect(fs.readFileSync(first.keyPath, 'utf8')).toMatch(/BEGIN PRIVATE KEY[\s\S]+BEGIN CERTIFICATE/);
    const again = new LocalTls({ dir });
    expect(again.caCertificate()).toBe(first.caCertificate());
    expect(fs.readFileSync(again.caPath, 'utf8')).toBe(first.caCertificate());
  });

  test('only caFile given: the key stays in memory (as before) and each start makes a new CA', () => {
    const caFile = path.join(tmp, 'ca.pem');
    const a = new LocalTls({ caFile });
    expect(a.cache).toBe(false);
    const pemA = a.caCertificate();
    expect(fs.readdirSync(tmp)).toEqual(['ca.pem']);
    expect(new LocalTls({ caFile }).caCertificate()).not.toBe(pemA);
  });

  test('two proxies sharing a directory present the same CA; separate directories stay separate', () => {
    const shared = path.join(tmp, 'shared');
    const a = new LocalTls({ dir: shared });
    const b = new LocalTls({ dir: shared });
    expect(b.caCertificate()).toBe(a.caCertificate());
    // Default resolution: one directory per systemd unit / per user session.
    const c = new LocalTls({}, { RUNTIME_DIRECTORY: path.join(tmp, 'unit-a') });
    const d = new LocalTls({}, { RUNTIME_DIRECTORY: path.join(tmp, 'unit-b') });
    fs.mkdirSync(path.join(tmp, 'unit-a'));
    fs.mkdirSync(path.join(tmp, 'unit-b'));
    expect(c.caCertificate()).not.toBe(d.caCertificate());
    expect(c.caPath).not.toBe(d.caPath);
  });

  test('a cached CA about to expire is replaced', () => {
    const dir = path.join(tmp, 'state');
    const first = new LocalTls({ dir });
    const old = first.caCertificate();
    // Rewrite the cache with a CA that has 10 days left (inside the 30-day renewal margin).
    const short = createCA('rds-iam-proxy local CA', 10);
    writeOwnFile(first.keyPath, short.key + short.cert, 0o600);
    const next = new LocalTls({ dir }).caCertificate();
    expect(next).not.toBe(old);
    expect(next).not.toBe(short.cert);
    expect(fs.readFileSync(path.join(dir, 'local-ca.pem'), 'utf8')).toBe(next);
  });
});

describe('unix socket permissions', () => {
  async function listening(p: string): Promise<net.Server> {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(p, r));
    return s;
  }

  // Giving a socket to a group the proxy's user is not in needs root.
  (isRoot ? test : test.skip)('mode and group by name or gid are applied to the socket', async () => {
    const p = path.join(tmp, '.s.PGSQL.5432');
    const s = await listening(p);
    try {
      const gid = groupId('daemon');
      expect(gid).toBe(1);
      setSocketPermissions(p, '0660', 'daemon');
      let st = fs.statSync(p);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o660);
      expect(st.gid).toBe(gid);
      setSocketPermissions(p, '600', 50);
      st = fs.statSync(p);
      expect(st.mode & 0o777).toBe(0o600);
      expect(st.gid).toBe(50);
    } finally {
      s.close();
    }
  });

  test('an unknown group is refused with the fix', () => {
    expect(thrown(() => groupId('no-such-group-rip')).message).toMatch(
      /group "no-such-group-rip" does not exist.*numeric gid/,
    );
  });
});
