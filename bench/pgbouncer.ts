/**
 * PgBouncer (Debian's package) as the peer: session mode, plaintext client side, verify-full TLS
 * to the same upstream with the same password user.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { accountIds } from '../test/harness/util';
import { freePort, startDaemon, waitForPort, type Daemon } from './util';

export interface PgBouncer extends Daemon {
  port: number;
}

/**
 * Starts PgBouncer in front of `upstream` (dialled at 127.0.0.1, whose certificate must carry
 * that IP: PgBouncer verifies the name it dials). Clients log in as `user` without a password
 * (auth_type trust); PgBouncer logs in upstream with SCRAM using the password from its
 * auth_file. Runs as user postgres (PgBouncer refuses root).
 */
export async function startPgBouncer(o: {
  dir: string;
  upstreamPort: number;
  caFile: string;
  user: string;
  password: string;
  database: string;
  /** More PgBouncer database names for `database` behind other ports (e.g. the far-database relay). */
  aliases?: Record<string, number>;
}): Promise<PgBouncer> {
  const port = await freePort();
  const dir = path.join(o.dir, 'pgbouncer');
  await fs.mkdir(dir, { recursive: true });
  const ids = accountIds('postgres');
  const q = (s: string): string => `"${s.replace(/"/g, '""')}"`;
  const userlist = path.join(dir, 'userlist.txt');
  await fs.writeFile(userlist, `${q(o.user)} ${q(o.password)}\n`, { mode: 0o600 });
  const ini = path.join(dir, 'pgbouncer.ini');
  await fs.writeFile(
    ini,
    [
      '[databases]',
      `${o.database} = host=127.0.0.1 port=${o.upstreamPort} dbname=${o.database}`,
      ...Object.entries(o.aliases ?? {}).map(
        ([name, port]) => `${name} = host=127.0.0.1 port=${port} dbname=${o.database}`,
      ),
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${userlist}`,
      'pool_mode = session',
      'max_client_conn = 2000',
      'default_pool_size = 100',
      'server_tls_sslmode = verify-full',
      `server_tls_ca_file = ${o.caFile}`,
      'client_tls_sslmode = disable',
      'log_connections = 0',
      'log_disconnections = 0',
      'syslog = 0',
      '',
    ].join('\n'),
  );
  for (const f of [dir, userlist, ini]) await fs.chown(f, ...ids);
  const d = startDaemon('pgbouncer', ['-u', 'postgres', ini], path.join(dir, 'pgbouncer.log'));
  try {
    await waitForPort(port, d.exited);
  } catch (err) {
    await d.stop(0);
    const log = await fs.readFile(d.logFile, 'utf8').catch(() => '');
    throw new Error(`${(err as Error).message}\n--- pgbouncer log ---\n${log.slice(-3000)}`);
  }
  return { ...d, port };
}
