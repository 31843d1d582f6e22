/**
 * A throwaway PostgreSQL 15 that logs users in the way RDS IAM does: TLS only, the server asks
 * for a cleartext password, and PAM hands it to the in-process token verifier.
 * Needs root (initdb runs as user postgres; /etc/pam.d is written). See verifier.ts about never
 * blocking the event loop while it runs.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import {
  makeWorkDir,
  prepare,
  sqlString,
  type Prepared,
  type RdsLikeOptions,
  type RdsLikeServer,
} from './rdslike';
import { accountIds, freePort, requireRoot, run } from './util';

export type { RdsLikeOptions } from './rdslike';

export const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';
export const DEFAULT_PG_ENDPOINT = 'testdb.cluster-abc123xyz.us-east-1.rds.amazonaws.com';

export interface RdsLikePg extends RdsLikeServer {
  /** Runs `sql` (a script; may \connect) with psql as superuser over the unix socket; -At output. */
  psqlAdmin(sql: string, db?: string): Promise<string>;
}

const asPostgres = (bin: string, args: string[]): Promise<string> =>
  run('runuser', ['-u', 'postgres', '--', path.join(PG_BIN, bin), ...args]);
const ident = (s: string): string => `"${s.replace(/"/g, '""')}"`;

/**
 * Starts the server: initdb, TLS for the endpoint name, pg_hba (trust on the unix socket for the
 * admin, SCRAM over TLS for passwordUsers, PAM over TLS for everyone else, no plaintext TCP),
 * then roles and the databases appdb, otherdb and one named after each user.
 */
export async function startRdsLikePostgres(opts: RdsLikeOptions = {}): Promise<RdsLikePg> {
  requireRoot('startRdsLikePostgres');
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(opts, await freePort());
    } catch (err) {
      // Another process may grab the free port between the probe and the listen.
      if (attempt >= 3 || !/already in use/i.test((err as Error).message)) throw err;
    }
  }
}

async function startOnce(opts: RdsLikeOptions, port: number): Promise<RdsLikePg> {
  const dir = await makeWorkDir('pg');
  const { dataDir, socketDir, logFile, pgIds } = await clusterDirs(dir);
  // initdb (a child process) overlaps with the CPU-bound key generation in prepare().
  const initdbArgs = ['-D', dataDir, ...'-U postgres --auth=trust -E UTF8 --locale=C --no-sync'.split(' ')];
  const initdb = asPostgres('initdb', initdbArgs);
  initdb.catch(() => undefined);
  let p: Prepared | undefined;
  let running = false;
  const stop = async (): Promise<void> => {
    if (running) {
      running = false;
      await asPostgres('pg_ctl', ['stop', '-D', dataDir, '-m', 'immediate', '-w']);
    }
    if (p) {
      await p.removePam();
      await p.verifier.close();
    }
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    p = await prepare(dir, port, opts, DEFAULT_PG_ENDPOINT);
    const certFile = path.join(dir, 'server.crt');
    const keyFile = path.join(dir, 'server.key');
    await fs.writeFile(certFile, p.server.cert, { mode: 0o644 });
    await fs.writeFile(keyFile, p.server.key, { mode: 0o600 });
    await fs.chown(keyFile, ...pgIds);
    await initdb;

    const passwordUsers = Object.keys(opts.passwordUsers ?? {});
    await fs.appendFile(
      path.join(dataDir, 'postgresql.conf'),
      harnessPostgresConf({ port, socketDir, certFile, keyFile, maxConnections: 200 }),
    );
    await fs.writeFile(
      path.join(dataDir, 'pg_hba.conf'),
      [
        'local all all trust',
        ...passwordUsers.map((u) => `hostssl all ${ident(u)} 127.0.0.1/32 scram-sha-256`),
        `hostssl all all 127.0.0.1/32 pam pamservice=${p.pamService}`,
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
      const args = [
        ...'-X -q -At -v ON_ERROR_STOP=1 -U postgres'.split(' '),
        '-h',
        socketDir,
        '-p',
        String(port),
      ];
      const out = await run('psql', [...args, '-d', db], { input: sql });
      return out.replace(/\n$/, '');
    };
    const users = opts.users ?? ['alice'];
    const everyone = [...users, ...passwordUsers];
    await psqlAdmin(
      [
        ...users.map((u) => `CREATE ROLE ${ident(u)} LOGIN;`),
        ...Object.entries(opts.passwordUsers ?? {}).map(
          ([u, pw]) => `CREATE ROLE ${ident(u)} LOGIN PASSWORD ${sqlString(pw, false)};`,
        ),
        // PG15 took CREATE on schema public from PUBLIC; give it back in the template every test db copies.
        '\\connect template1',
        'GRANT ALL ON SCHEMA public TO PUBLIC;',
        '\\connect postgres',
        ...['appdb', 'otherdb', ...everyone].map((db) => `CREATE DATABASE ${ident(db)};`),
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
      psqlAdmin,
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

/** The postgresql.conf lines every harness cluster gets: its port, TLS, fast and throwaway. */
export function harnessPostgresConf(o: {
  port: number;
  socketDir: string;
  certFile: string;
  keyFile: string;
  maxConnections: number;
  extra?: string[];
}): string {
  return [
    '',
    '# rds-iam-proxy test harness',
    `port = ${o.port}`,
    `listen_addresses = '127.0.0.1'`,
    `unix_socket_directories = '${o.socketDir}'`,
    'ssl = on',
    `ssl_cert_file = '${o.certFile}'`,
    `ssl_key_file = '${o.keyFile}'`,
    `password_encryption = 'scram-sha-256'`,
    `max_connections = ${o.maxConnections}`,
    'fsync = off',
    'synchronous_commit = off',
    'full_page_writes = off',
    'log_connections = on',
    // Segments live in the data dir, so even a killed server leaves nothing in /dev/shm.
    'dynamic_shared_memory_type = mmap',
    ...(o.extra ?? []),
    '',
  ].join('\n');
}

/**
 * The directories of a throwaway cluster in `dir`, owned by user postgres: data (0700), the
 * unix socket directory and an empty server log.
 */
export async function clusterDirs(
  dir: string,
): Promise<{ dataDir: string; socketDir: string; logFile: string; pgIds: [number, number] }> {
  const dataDir = path.join(dir, 'data');
  const socketDir = path.join(dir, 'sock');
  const logFile = path.join(dir, 'postgres.log');
  const pgIds = accountIds('postgres');
  for (const [d, mode] of [
    [dataDir, 0o700],
    [socketDir, 0o755],
  ] as const) {
    await fs.mkdir(d, { mode });
    await fs.chown(d, ...pgIds);
  }
  await fs.writeFile(logFile, '');
  await fs.chown(logFile, ...pgIds);
  return { dataDir, socketDir, logFile, pgIds };
}
