/**
 * The proxy's own files and sockets on a shared host: the generated local CA (and, when cached,
 * its key), and the permissions of unix socket listeners.
 *
 * Threat: the proxy often runs as root, and any local user may plant a symlink or a file at a
 * predictable path in a directory others can write (/tmp), then have the proxy overwrite a file
 * of their choosing or swap the CA that clients verify against. So every file lives in a
 * directory that only the proxy (or root) can write, is written to a fresh temporary file opened
 * with O_CREAT|O_EXCL|O_NOFOLLOW and renamed into place, and is read back only through
 * O_NOFOLLOW and an ownership check on the open descriptor.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, ProxyError } from '../errors';

/** Where the proxy's directory came from, in resolution order. */
export type StateDirSource =
  | 'localTls.dir'
  | 'localTls.caFile'
  | 'STATE_DIRECTORY'
  | 'RUNTIME_DIRECTORY'
  | 'XDG_RUNTIME_DIR'
  | 'default';

/** The directory the proxy writes its files to. */
export interface StateDir {
  path: string;
  source: StateDirSource;
}

const S_IWGRP_IWOTH = 0o022;
const S_IRWXG_IRWXO = 0o077;
const S_ISVTX = 0o1000;

/** The effective uid, or undefined where POSIX ids do not exist (Windows). */
function euid(): number | undefined {
  return process.geteuid?.();
}

/**
 * The proxy's directory for its own files, without touching the file system. Order: the
 * config's `localTls.dir`; the directory of `localTls.caFile`; systemd's `$STATE_DIRECTORY`
 * (persistent) then `$RUNTIME_DIRECTORY` (first entry of each); `$XDG_RUNTIME_DIR/rds-iam-proxy`;
 * `/run/rds-iam-proxy` when running as root; else `<os.tmpdir()>/rds-iam-proxy-<uid>`.
 */
export function resolveStateDir(
  opts: { dir?: string | undefined; caFile?: string | undefined },
  env: NodeJS.ProcessEnv = process.env,
): StateDir {
  if (opts.dir) return { path: path.resolve(opts.dir), source: 'localTls.dir' };
  if (opts.caFile) return { path: path.dirname(path.resolve(opts.caFile)), source: 'localTls.caFile' };
  for (const name of ['STATE_DIRECTORY', 'RUNTIME_DIRECTORY'] as const) {
    // systemd joins several directories with ':'; the first is the unit's own.
    const first = env[name]?.split(':')[0];
    if (first && path.isAbsolute(first)) return { path: first, source: name };
  }
  const xdg = env['XDG_RUNTIME_DIR'];
  if (xdg && path.isAbsolute(xdg))
    return { path: path.join(xdg, 'rds-iam-proxy'), source: 'XDG_RUNTIME_DIR' };
  const uid = euid();
  if (uid === 0 && isDirectory('/run')) return { path: '/run/rds-iam-proxy', source: 'default' };
  return { path: path.join(os.tmpdir(), `rds-iam-proxy-${uid ?? 'user'}`), source: 'default' };
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function refuse(message: string, cause?: unknown): ProxyError {
  return new ProxyError(ErrorCode.Config, message, cause === undefined ? {} : { cause });
}

/**
 * Makes sure `dir` is a directory only this process's user (or root) can write: creates it if
 * missing (mode 0755 exactly: clients must read the CA certificate; parents of a configured
 * directory are created too), then refuses with a ProxyError naming the path and the fix when it
 * is a symlink, not a directory, owned by another user, or writable by group/others without the
 * sticky bit (a sticky directory such as /tmp is accepted: others cannot rename or remove our
 * files there, and every file is checked on its own). `rootLinkOk` accepts a root-owned symlink
 * to a directory that passes the same checks (for directories systemd hands over).
 */
export function ensureOwnDir(
  dir: string,
  opts: { createParents?: boolean; rootLinkOk?: boolean } = {},
): void {
  let created = false;
  try {
    const parents = opts.createParents ?? false;
    const first = fs.mkdirSync(dir, { mode: 0o755, recursive: parents });
    created = !parents || first !== undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EEXIST')
      throw refuse(
        `cannot create the proxy's directory ${dir}: ${code ?? (err as Error).message}; ` +
          `set localTls.dir to a directory the proxy's user can create or owns`,
        err,
      );
  }
  let st = fs.lstatSync(dir);
  // systemd's DynamicUser= makes $STATE_DIRECTORY a root-owned link into /var/lib/private.
  if (st.isSymbolicLink() && opts.rootLinkOk && st.uid === 0) st = fs.statSync(dir);
  if (st.isSymbolicLink())
    throw refuse(
      `${dir} is a symlink; the proxy refuses to follow it for its own files (someone else may control ` +
        `where it points). Remove it, or set localTls.dir to a real directory owned by the proxy's user`,
    );
  if (!st.isDirectory())
    throw refuse(`${dir} is not a directory; remove it or set localTls.dir to another directory`);
  const uid = euid();
  if (uid !== undefined && st.uid !== uid && st.uid !== 0)
    throw refuse(
      `${dir} is owned by uid ${st.uid}, not by the proxy's user (uid ${uid}) or root: that user could ` +
        `replace the local CA. Remove it (another user may have planted it), or set localTls.dir ` +
        `to a directory owned by uid ${uid}`,
    );
  if ((st.mode & S_IWGRP_IWOTH) !== 0 && (st.mode & S_ISVTX) === 0)
    throw refuse(
      `${dir} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)}), so another user ` +
        `could replace the local CA. Fix: chmod go-w ${dir}, or set localTls.dir to a private directory`,
    );
  // mkdir's mode is filtered by the umask; clients of other users must still read the CA.
  if (created) fs.chmodSync(dir, 0o755);
}

function checkOwnFile(file: string, st: fs.Stats, secret: boolean): void {
  if (!st.isFile()) throw refuse(`${file} is not a regular file; remove it so the proxy can write its own`);
  const uid = euid();
  if (uid !== undefined && st.uid !== uid)
    throw refuse(
      `${file} is owned by uid ${st.uid}, not by the proxy's user (uid ${uid}): it was not written by ` +
        `this proxy. Remove it, or set localTls.dir to a directory only the proxy writes`,
    );
  const forbidden = secret ? S_IRWXG_IRWXO : S_IWGRP_IWOTH;
  if ((st.mode & forbidden) !== 0)
    throw refuse(
      `${file} has mode ${(st.mode & 0o7777).toString(8)}; the proxy expects ${secret ? '0600' : '0644'}. ` +
        `Remove it and the proxy writes a fresh one`,
    );
}

function lstatOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.lstatSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function symlinkRefused(file: string): ProxyError {
  return refuse(
    `${file} is a symlink; the proxy does not follow links for its own files (a local user may have ` +
      `planted it to make the proxy overwrite another file). Remove it and restart, or set ` +
      `localTls.dir to a directory only the proxy's user can write`,
  );
}

/**
 * Writes `data` to `file` atomically and without following links: a fresh temporary file in the
 * same directory (O_CREAT|O_EXCL|O_NOFOLLOW, random name), mode set exactly (0644 for a
 * certificate clients read, 0600 for a key, whatever the umask), fsync, then rename over `file`.
 * An existing `file` that is a symlink, not a regular file or not ours is refused, not replaced.
 * With `exclusive`, an existing `file` is kept (link(2) instead of rename) and false is returned,
 * so that two processes creating the same file agree on the first one's content.
 * The directory must have passed ensureOwnDir.
 */
export function writeOwnFile(
  file: string,
  data: string | Buffer,
  mode: 0o644 | 0o600,
  opts: { exclusive?: boolean } = {},
): boolean {
  const existing = lstatOrUndefined(file);
  if (existing?.isSymbolicLink()) throw symlinkRefused(file);
  if (existing) checkOwnFile(file, existing, false);
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
    fs.fchmodSync(fd, mode);
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    if (!opts.exclusive) {
      fs.renameSync(tmp, file);
      return true;
    }
    try {
      fs.linkSync(tmp, file);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  } catch (err) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    if (err instanceof ProxyError) throw err;
    throw refuse(`cannot write ${file}: ${(err as Error).message}`, err);
  }
}

/**
 * Reads one of the proxy's own files without following links: undefined when it does not exist;
 * a ProxyError when it is a symlink, not a regular file, not owned by the proxy's user, or
 * writable by others (readable by others too, for a `secret`).
 */
export function readOwnFile(file: string, opts: { secret?: boolean } = {}): Buffer | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw symlinkRefused(file);
    throw refuse(`cannot read ${file}: ${code ?? (err as Error).message}`, err);
  }
  try {
    checkOwnFile(file, fs.fstatSync(fd), opts.secret ?? false);
    return fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The gid of a group given by name or number: a numeric string is taken as is, else
 * /etc/group, else `getent group` (NSS sources such as LDAP or sssd). Throws a ProxyError when
 * the group does not exist.
 */
export function groupId(group: string | number): number {
  if (typeof group === 'number') return group;
  if (/^\d+$/.test(group)) return Number(group);
  const fromLine = (line: string | undefined): number | undefined => {
    const [name, , gid] = (line ?? '').split(':');
    return name === group && gid !== undefined && /^\d+$/.test(gid) ? Number(gid) : undefined;
  };
  try {
    for (const line of fs.readFileSync('/etc/group', 'utf8').split('\n')) {
      const gid = fromLine(line);
      if (gid !== undefined) return gid;
    }
  } catch {
    // No /etc/group (distroless images): getent or a numeric gid.
  }
  try {
    const out = execFileSync('getent', ['group', group], { encoding: 'utf8', timeout: 5000, stdio: 'pipe' });
    const gid = fromLine(out.split('\n')[0]);
    if (gid !== undefined) return gid;
  } catch {
    // getent missing, or exit 2: no such group.
  }
  throw refuse(
    `group "${group}" does not exist on this host (looked in /etc/group and getent); give a numeric gid`,
  );
}

/**
 * Gives a unix socket listener its group (chown, when given) and its mode (octal string such as
 * '0660'). Connecting to a unix socket needs write permission on it, so these decide which local
 * users may use the listener (and, with client.auth trust, log in as its database user).
 */
export function setSocketPermissions(socketPath: string, mode: string, group?: string | number): void {
  if (group !== undefined) {
    const gid = groupId(group);
    try {
      fs.chownSync(socketPath, -1, gid);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw refuse(
        `cannot give ${socketPath} to group ${group} (gid ${gid}): ${code}; the proxy's user must be ` +
          `root or a member of that group`,
        err,
      );
    }
  }
  fs.chmodSync(socketPath, parseInt(mode, 8));
}
