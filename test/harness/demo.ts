/**
 * `npm run demo`: the main job on an embedded default. Starts an RDS-like PostgreSQL and MariaDB
 * (TLS only, IAM tokens checked through PAM like RDS does), starts rds-iam-proxy in front of
 * them, runs a query through the proxy with psql and with the mariadb CLI, and prints
 * connection strings to try by hand.
 * `npm run demo -- --once` exits after the query.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { startProxy } from '../../src/app';
import { validateConfig } from '../../src/config/load';
import { createLogger } from '../../src/log';
import { IamTokenMinter } from '../../src/credentials/tokens';
import { PG_BIN, startRdsLikePostgres } from './pg';
import { startRdsLikeMariaDb } from './mariadb';
import { runProgram } from './clients';
import { LONG_SESSION_TOKEN, testCredentials } from './proxy';

const once = process.argv.includes('--once');

function preflight(): string[] {
  const missing: string[] = [];
  if (process.getuid?.() !== 0)
    missing.push(
      'root (the demo writes a PAM service to /etc/pam.d and runs PostgreSQL as user postgres): run it as root or with sudo',
    );
  if (!existsSync(path.join(PG_BIN, 'initdb')))
    missing.push(`PostgreSQL 15 server binaries in ${PG_BIN}: apt-get install postgresql-15`);
  if (!existsSync('/usr/include/security/pam_modules.h'))
    missing.push('PAM headers to build the test PAM module: apt-get install libpam0g-dev gcc');
  if (!existsSync('/usr/sbin/mariadbd'))
    missing.push('MariaDB server binaries: apt-get install mariadb-server mariadb-client');
  return missing;
}

async function main(): Promise<void> {
  const missing = preflight();
  if (missing.length > 0) {
    console.error('rds-iam-proxy demo cannot start; it needs:\n' + missing.map((m) => `  - ${m}`).join('\n'));
    process.exit(1);
  }
  const step = (s: string): void => console.log(`\n==> ${s}`);
  step('Starting an RDS-like PostgreSQL 15 (TLS only; logins checked by an IAM token verifier through PAM)');
  const db = await startRdsLikePostgres();
  console.log(
    `    endpoint ${db.host}:${db.port} (dialled at ${db.address}), region ${db.region}, IAM user alice`,
  );
  step(
    'Starting an RDS-like MariaDB 10.11 (TLS required; mysql_clear_password checked by the same verifier through PAM)',
  );
  const maria = await startRdsLikeMariaDb();
  console.log(
    `    endpoint ${maria.host}:${maria.port} (dialled at ${maria.address}), region ${maria.region}, IAM user alice`,
  );

  step('Starting rds-iam-proxy in front of it');
  const config = (listen: string, mysqlListen: string) =>
    validateConfig({
      log: { level: 'info', format: 'json' },
      listeners: [
        {
          name: 'demo-mysql',
          engine: 'mysql',
          listen: mysqlListen,
          upstream: { host: maria.host, port: maria.port, address: maria.address, tls: { ca: maria.caFile } },
          auth: { mode: 'iam', region: maria.region },
          client: { tls: 'auto', auth: 'trust' },
        },
        {
          name: 'demo-pg',
          engine: 'postgres',
          listen,
          upstream: { host: db.host, port: db.port, address: db.address, tls: { ca: db.caFile } },
          auth: { mode: 'iam', region: db.region },
          client: { tls: 'auto', auth: 'trust' },
        },
      ],
    });
  const log = createLogger({ level: 'warn', format: 'json' });
  // Temporary test credentials (with a session token, as from STS) that the local verifier trusts.
  const deps = { log, minter: new IamTokenMinter(testCredentials({ sessionToken: LONG_SESSION_TOKEN })) };
  // 15432 when free, so the printed connection string is easy to type; any free port otherwise.
  const app = await startProxy(config('127.0.0.1:15432', '127.0.0.1:13306'), deps).catch(() =>
    startProxy(config('127.0.0.1:0', '127.0.0.1:0'), deps),
  );
  const port = app.listeners.find((l) => l.name === 'demo-pg')?.port() ?? 0;
  const mysqlPort = app.listeners.find((l) => l.name === 'demo-mysql')?.port() ?? 0;
  console.log(
    `    postgres on 127.0.0.1:${port}, mysql on 127.0.0.1:${mysqlPort}; upstream TLS verified against each server's test CA and endpoint name`,
  );

  step('Running a query through the proxy with psql (no password, no IAM code in the client)');
  const conn = `host=127.0.0.1 port=${port} user=alice dbname=appdb`;
  const sql =
    'select current_user as user, (select ssl from pg_stat_ssl where pid = pg_backend_pid()) as upstream_tls, version()';
  console.log(`    psql "${conn}" -c "${sql}"`);
  const r = await runProgram('psql', ['-X', '-P', 'pager=off', '-x', '-d', conn, '-c', sql]);
  console.log(r.stdout.trimEnd().replace(/^/gm, '    '));
  if (r.code !== 0) console.error(r.stderr);
  const last = db.verifier.entries.at(-1);
  console.log(
    `    the server's verifier accepted a ${last?.tokenLength}-byte IAM token for ${last?.user}: ${last?.ok ? 'yes' : 'no'}`,
  );

  step('Running a query through the proxy with the mariadb CLI (no password, no cleartext-plugin option)');
  const mysqlArgs = ['--protocol=TCP', '-h', '127.0.0.1', '-P', String(mysqlPort), '-u', 'alice', 'appdb'];
  const msql =
    "select current_user() as user, @@version as version, (select variable_value from information_schema.session_status where variable_name = 'Ssl_cipher') as upstream_tls_cipher";
  console.log(`    mariadb ${mysqlArgs.join(' ')} -e "${msql}"`);
  const m = await runProgram('mariadb', [...mysqlArgs, '-E', '-e', msql]);
  console.log(m.stdout.trimEnd().replace(/^/gm, '    '));
  if (m.code !== 0) console.error(m.stderr);
  const lastM = maria.verifier.entries.at(-1);
  console.log(
    `    the server's verifier accepted a ${lastM?.tokenLength}-byte IAM token for ${lastM?.user}: ${lastM?.ok ? 'yes' : 'no'}`,
  );

  const tlsConn = `host=localhost port=${port} user=alice dbname=appdb sslmode=verify-full sslrootcert=${app.localTls.caPath}`;
  console.log('\nTry it yourself:');
  console.log(`    psql "${conn}"`);
  console.log(`    psql "${tlsConn}"`);
  console.log(`    postgresql://alice@127.0.0.1:${port}/appdb`);
  console.log(`    mariadb --protocol=TCP -h 127.0.0.1 -P ${mysqlPort} -u alice appdb`);
  console.log(
    `    mariadb --protocol=TCP -h localhost -P ${mysqlPort} -u alice --ssl-ca=${app.localTls.caPath} --ssl-verify-server-cert appdb`,
  );

  const stop = async (): Promise<void> => {
    await app.close();
    await Promise.all([db.stop(), maria.stop()]);
  };
  const ok = r.code === 0 && m.code === 0;
  if (once || !ok) {
    await stop();
    process.exit(ok ? 0 : 1);
  }
  console.log('\nPress Ctrl-C to stop the demo (it removes the test database and PAM service).');
  const onSignal = (): void => {
    stop().then(() => process.exit(0));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
}

main().catch((err: unknown) => {
  console.error('demo failed:', err instanceof Error ? err.message : err);
  process.exit(1);
});
