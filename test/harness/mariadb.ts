/**
 * A throwaway MariaDB 10.11 that logs users in the way RDS IAM does for MySQL: TLS required, the
 * server asks for mysql_clear_password (pam_use_cleartext_plugin), and PAM hands the token to the
 * in-process verifier. MariaDB runs PAM in a helper, auth_pam_tool, that it forks from its plugin
 * directory. Needs root (mariadbd drops to user mysql; /etc/pam.d is written). See verifier.ts
 * about never blocking the event loop while it runs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureRootDir, HARNESS_LIB_DIR } from './pam';
import {
  makeWorkDir,
  prepare,
  sqlString,
  type Prepared,
  type RdsLikeOptions,
  type RdsLikeServer,
} from './rdslike';
import { accountIds, freePort, requireRoot, run, waitFor } from './util';

export type { RdsLikeOptions } from './rdslike';

export const DEFAULT_MARIADB_ENDPOINT = 'testdb-mariadb.cluster-abc123xyz.us-east-1.rds.amazonaws.com';
const SYSTEM_PLUGIN_DIR = '/usr/lib/mysql/plugin';
const TOOL = 'auth_pam_tool_dir/auth_pam_tool';

export interface RdsLikeMariaDb extends RdsLikeServer {
  /** Runs `sql` (may hold several statements) with the mariadb CLI as root over the unix socket; tab-separated rows, no header. */
  sqlAdmin(sql: string): Promise<string>;
}

/**
 * A plugin directory holding auth_pam.so and auth_pam_tool. Debian's mariadb-server ships the
 * tool setuid root, but slimmed container images often lack it (dpkg -V reports it missing).
 * Then the harness builds its own plugin dir from the package's .deb of the installed version
 * (apt-get download, which reaches the Debian mirror). The copy is not setuid: our PAM module
 * needs no privileges, so the tool can run as mysql; it is root-owned and 0755 all the same.
 */
export async function ensureMariaDbPluginDir(): Promise<string> {
  const hasTool = (dir: string): Promise<boolean> =>
    fs.access(path.join(dir, TOOL)).then(
      () => true,
      () => false,
    );
  if (await hasTool(SYSTEM_PLUGIN_DIR)) return SYSTEM_PLUGIN_DIR;
  const version = (await run('dpkg-query', ['-W', '-f=${Version}', 'mariadb-server'])).trim();
  const dir = path.join(HARNESS_LIB_DIR, `mariadb-plugin-${version.replace(/[^A-Za-z0-9.+-]/g, '_')}`);
  if (await hasTool(dir)) return dir;

  await ensureRootDir(HARNESS_LIB_DIR);
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'rdsiam-deb-'));
  try {
    await fs.chmod(work, 0o777); // apt-get download drops to user _apt when it can
    await run('apt-get', ['download', `mariadb-server=${version}`], { cwd: work }).catch((err: Error) => {
      throw new Error(
        `${path.join(SYSTEM_PLUGIN_DIR, TOOL)} is missing and fetching mariadb-server=${version} failed ` +
          `(run apt-get update, or apt-get install --reinstall mariadb-server): ${err.message}`,
      );
    });
    const deb = (await fs.readdir(work)).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download mariadb-server=${version} left no .deb`);
    const root = path.join(work, 'root');
    await run('dpkg-deb', ['-x', path.join(work, deb), root]);
    const staged = path.join(work, 'plugin');
    await fs.mkdir(path.join(staged, 'auth_pam_tool_dir'), { recursive: true });
    await fs.copyFile(path.join(root, 'usr/lib/mysql/plugin/auth_pam.so'), path.join(staged, 'auth_pam.so'));
    await fs.copyFile(path.join(root, 'usr/lib/mysql/plugin', TOOL), path.join(staged, TOOL));
    await fs.chmod(path.join(staged, 'auth_pam.so'), 0o644);
    await fs.chmod(path.join(staged, TOOL), 0o755);
    for (const d of [staged, path.join(staged, 'auth_pam_tool_dir')]) await ensureRootDir(d);
    await fs.rename(staged, dir).catch(async (err: NodeJS.ErrnoException) => {
      if (!(await hasTool(dir))) throw err; // a parallel worker won the race
    });
    return dir;
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/**
 * Starts mariadbd with only a generated config (never /etc/mysql), TLS required, auth_pam in
 * cleartext mode, and users: IAM users IDENTIFIED VIA pam, passwordUsers with
 * mysql_native_password, all REQUIRE SSL with ALL on appdb and otherdb.
 */
export async function startRdsLikeMariaDb(opts: RdsLikeOptions = {}): Promise<RdsLikeMariaDb> {
  requireRoot('startRdsLikeMariaDb');
  const pluginDir = await ensureMariaDbPluginDir();
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(opts, await freePort(), pluginDir);
    } catch (err) {
      // Another process may grab the free port between the probe and the listen.
      if (attempt >= 3 || !/already in use/i.test((err as Error).message)) throw err;
    }
  }
}

async function startOnce(opts: RdsLikeOptions, port: number, pluginDir: string): Promise<RdsLikeMariaDb> {
  const dir = await makeWorkDir('my');
  const dataDir = path.join(dir, 'data');
  const socketDir = path.join(dir, 'run');
  const socket = path.join(socketDir, 'mysqld.sock');
  const logFile = path.join(socketDir, 'error.log');
  const mysql = accountIds('mysql');
  for (const d of [dataDir, socketDir]) {
    await fs.mkdir(d, { mode: 0o755 });
    await fs.chown(d, ...mysql);
  }
  // Small InnoDB files make install and start-up fast; passed through to the bootstrap server.
  const innodb = ['--innodb-log-file-size=8M', '--innodb-buffer-pool-size=32M'];
  const install = run('mariadb-install-db', [
    '--no-defaults',
    `--datadir=${dataDir}`,
    '--user=mysql',
    '--auth-root-authentication-method=normal',
    '--skip-test-db',
    '--skip-name-resolve',
    ...innodb,
  ]);
  install.catch(() => undefined);

  let p: Prepared | undefined;
  let child: ChildProcess | undefined;
  const stop = async (): Promise<void> => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const c = child;
      const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      c.kill('SIGTERM');
      const timer = setTimeout(() => c.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    }
    if (p) {
      await p.removePam();
      await p.verifier.close();
    }
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    p = await prepare(dir, port, opts, DEFAULT_MARIADB_ENDPOINT);
    const certFile = path.join(dir, 'server.crt');
    const keyFile = path.join(dir, 'server.key');
    await fs.writeFile(certFile, p.server.cert, { mode: 0o644 });
    await fs.writeFile(keyFile, p.server.key, { mode: 0o600 });
    await fs.chown(keyFile, ...mysql);
    const cnf = path.join(dir, 'my.cnf');
    await fs.writeFile(
      cnf,
      [
        '# rds-iam-proxy test harness',
        '[mariadbd]',
        'user = mysql',
        `datadir = ${dataDir}`,
        `socket = ${socket}`,
        `pid-file = ${path.join(socketDir, 'mariadbd.pid')}`,
        `log-error = ${logFile}`,
        `port = ${port}`,
        'bind-address = 127.0.0.1',
        'skip-name-resolve',
        `plugin-dir = ${pluginDir}`,
        'plugin-load-add = auth_pam',
        'pam-use-cleartext-plugin = ON',
        'require-secure-transport = ON',
        `ssl-ca = ${p.caFile}`,
        `ssl-cert = ${certFile}`,
        `ssl-key = ${keyFile}`,
        'local-infile = 1',
        'max_connections = 500',
        'innodb-log-file-size = 8M',
        'innodb-buffer-pool-size = 32M',
        'innodb-flush-log-at-trx-commit = 0',
        'performance-schema = OFF',
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    await install;

    const c = spawn('mariadbd', [`--defaults-file=${cnf}`], { stdio: 'ignore' });
    child = c;
    const died = new Promise<never>((_, reject) => {
      c.once('exit', async (code, signal) => {
        const log = await fs.readFile(logFile, 'utf8').catch(() => '');
        reject(
          new Error(
            `mariadbd exited (${signal ?? code}) during start-up\n--- error.log ---\n${log.slice(-4000)}`,
          ),
        );
      });
      c.once('error', reject);
    });
    died.catch(() => undefined);
    await Promise.race([died, waitFor(() => greets(socket), 60_000, 'mariadbd to accept connections')]);

    const sqlAdmin = async (sql: string): Promise<string> => {
      const out = await run(
        'mariadb',
        ['--no-defaults', '-S', socket, '-u', 'root', '--batch', '--skip-column-names'],
        {
          input: sql,
        },
      );
      return out.replace(/\n$/, '');
    };
    const q = (s: string): string => sqlString(s, true);
    const pamService = p.pamService;
    const grants = (u: string): string[] =>
      ['appdb', 'otherdb'].map((db) => `GRANT ALL PRIVILEGES ON \`${db}\`.* TO ${q(u)}@'%';`);
    await sqlAdmin(
      [
        'CREATE DATABASE appdb;',
        'CREATE DATABASE otherdb;',
        ...(opts.users ?? ['alice']).flatMap((u) => [
          `CREATE USER ${q(u)}@'%' IDENTIFIED VIA pam USING ${q(pamService)} REQUIRE SSL;`,
          ...grants(u),
        ]),
        ...Object.entries(opts.passwordUsers ?? {}).flatMap(([u, pw]) => [
          `CREATE USER ${q(u)}@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD(${q(pw)}) REQUIRE SSL;`,
          ...grants(u),
        ]),
      ].join('\n'),
    );
    return {
      host: p.endpoint,
      address: '127.0.0.1',
      port,
      region: p.region,
      caPem: p.ca.cert,
      caFile: p.caFile,
      verifier: p.verifier,
      keys: p.keys,
      dataDir,
      socketDir,
      sqlAdmin,
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

/** True once the server's unix socket answers with its greeting packet. */
function greets(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socket);
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.once('data', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(2000, () => done(false));
  });
}
