/**
 * `npm run demo`: the main job on an embedded default. Starts an RDS-like PostgreSQL (TLS only,
 * IAM tokens checked through PAM like RDS does), starts rds-iam-proxy in front of it, runs a
 * query through the proxy with psql, and prints a connection string to try by hand.
 * `npm run demo -- --once` exits after the query.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { startProxy } from '../../src/app';
import { validateConfig } from '../../src/config/load';
import { createLogger } from '../../src/log';
import { IamTokenMinter } from '../../src/credentials/tokens';
import { PG_BIN, startRdsLikePostgres } from './pg';
import { runProgram } from './clients';
import { LONG_SESSION_TOKEN, testCredentials } from './proxy';

const once = process.argv.includes('--once');

function preflight(): string[] {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root (the demo writes a PAM service to /etc/pam.d and runs PostgreSQL as user postgres): run it as root or with sudo');
  if (!existsSync(path.join(PG_BIN, 'initdb'))) missing.push(`PostgreSQL 15 server binaries in ${PG_BIN}: apt-get install postgresql-15`);
  if (!existsSync('/usr/include/security/pam_modules.h')) missing.push('PAM headers to build the test PAM module: apt-get install libpam0g-dev gcc');
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
  console.log(`    endpoint ${db.host}:${db.port} (dialled at ${db.address}), region ${db.region}, IAM user alice`);

  step('Starting rds-iam-proxy in front of it');
  const config = (listen: string) => validateConfig({
    log: { level: 'info', format: 'json' },
    listeners: [
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
  const app = await startProxy(config('127.0.0.1:15432'), deps).catch(() => startProxy(config('127.0.0.1:0'), deps));
  const port = app.listeners[0]?.port() ?? 0;
  console.log(`    listening on 127.0.0.1:${port}; upstream TLS verified against the test CA for ${db.host}`);

  step('Running a query through the proxy with psql (no password, no IAM code in the client)');
  const conn = `host=127.0.0.1 port=${port} user=alice dbname=appdb`;
  const sql = "select current_user as user, (select ssl from pg_stat_ssl where pid = pg_backend_pid()) as upstream_tls, version()";
  console.log(`    psql "${conn}" -c "${sql}"`);
  const r = await runProgram('psql', ['-X', '-P', 'pager=off', '-x', '-d', conn, '-c', sql]);
  console.log(r.stdout.trimEnd().replace(/^/gm, '    '));
  if (r.code !== 0) console.error(r.stderr);
  const last = db.verifier.entries.at(-1);
  console.log(`    the server's verifier accepted a ${last?.tokenLength}-byte IAM token for ${last?.user}: ${last?.ok ? 'yes' : 'no'}`);

  const tlsConn = `host=localhost port=${port} user=alice dbname=appdb sslmode=verify-full sslrootcert=${app.localTls.caPath}`;
  console.log('\nTry it yourself:');
  console.log(`    psql "${conn}"`);
  console.log(`    psql "${tlsConn}"`);
  console.log(`    postgresql://alice@127.0.0.1:${port}/appdb`);

  const stop = async (): Promise<void> => {
    await app.close();
    await db.stop();
  };
  if (once || r.code !== 0) {
    await stop();
    process.exit(r.code === 0 ? 0 : 1);
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
