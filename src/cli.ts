#!/usr/bin/env node
import { Command, InvalidArgumentError, Option } from 'commander';
import { loadConfig, ConfigError } from './config/load';
import type { Config } from './config/schema';
import { URL_OPTIONS, urlLayer, type UrlFlags } from './config/url';
import { createLogger } from './log';
import { deferMetrics } from './admin/metrics';
import { Runtime, resolveLogFormat } from './runtime';
import { ExitCode, ProxyError } from './errors';
import { version } from '../package.json';
import { generateToken, type TokenFlags } from './commands/token';
import { formatReport, runDoctor } from './commands/doctor';
import { DEFAULT_ADMIN, parseDuration, requestShutdown, waitReady } from './commands/lifecycle';

/** Options shared by commands that read a config. */
interface ConfigFlags extends UrlFlags {
  config?: string;
  set?: string[];
  logLevel?: string;
}

/** file < env < database URLs and their flags < --set (and --log-level). */
function readConfig(urls: string[], flags: ConfigFlags): Config {
  const sets = [...(flags.set ?? [])];
  if (flags.logLevel) sets.push(`log.level=${flags.logLevel}`);
  return loadConfig({
    file: flags.config ?? process.env['RDS_IAM_PROXY_CONFIG'],
    sets,
    layers: [urlLayer(urls, flags)],
  });
}

function parsePort(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 65535) throw new InvalidArgumentError('expected a port number (0-65535)');
  return n;
}

const URL_HELP = `
Database URLs (one listener each):
  postgres://[USER@]HOST[:PORT][/DATABASE][?OPTIONS]    (also postgresql://)
  mysql://[USER@]HOST[:PORT][/DATABASE][?OPTIONS]       (also mariadb://)
  USER and DATABASE, when given, are used upstream whatever the client sends.
  Local ports count up from --port (default: 5432 / 3306 per engine) in URL order.
  URL options:${Object.entries(URL_OPTIONS)
    .map(([k, v]) => `\n    ${k.padEnd(12)}${v}`)
    .join('')}

Examples:
  rds-iam-proxy run postgres://app_iam@mydb.abc123.us-east-1.rds.amazonaws.com/app --port 15432
  rds-iam-proxy run mysql://app_iam@aurora.cluster-xyz.eu-west-1.rds.amazonaws.com --unix-socket /run/rds-iam-proxy
  rds-iam-proxy run --config /etc/rds-iam-proxy/config.yaml --admin 127.0.0.1:9090
`;

function configOptions(cmd: Command): Command {
  return cmd
    .argument('[urls...]', 'database URLs, one listener each (see below)')
    .addOption(new Option('-c, --config <file>', 'YAML config file').env('RDS_IAM_PROXY_CONFIG'))
    .option('-p, --port <port>', 'first local TCP port for URL listeners (then +1 each)', parsePort)
    .option('-a, --address <host>', 'local bind host for URL listeners (default 127.0.0.1)')
    .option(
      '-u, --unix-socket <dir>',
      'unix sockets in DIR instead of TCP (DIR/.s.PGSQL.PORT, DIR/NAME.sock)',
    )
    .option('--region <region>', 'signing region (default: from the host name) and aws.region')
    .option('--ca <rds|file>', 'upstream CA for URL listeners: rds (the RDS bundle) or a PEM file')
    .addOption(new Option('--client-tls <mode>', 'local TLS for URL listeners').choices(['off', 'auto']))
    .addOption(
      new Option('--admin <host:port>', 'admin HTTP: /healthz, /readyz, /metrics, POST /quitquitquit').env(
        'RDS_IAM_PROXY_ADMIN',
      ),
    )
    .option(
      '--set <path=value>',
      'override a config key, e.g. listeners.app.upstream.port=5433 (repeatable)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--log-level <level>', 'override log.level')
    .addOption(new Option('-q, --quiet', 'log only warnings and errors').conflicts('logLevel'))
    .addHelpText('after', URL_HELP);
}

/**
 * `run`: starts the proxy and its admin server, then lives until a signal. SIGTERM/SIGINT drain
 * (src/runtime.ts), SIGHUP reloads the config from the same file, environment and flags.
 */
async function run(urls: string[], flags: RunFlags): Promise<void> {
  const cfg = readConfig(urls, flags);
  const { format, fallback } = resolveLogFormat(cfg.log.format, process.stdout.isTTY === true);
  const log = createLogger({ level: cfg.log.level, format, version });
  if (fallback)
    log.warn('log.format pretty needs the pino-pretty package, which is not installed; logging JSON');
  if (flags.runConnectionTest) await connectionTest(cfg, log);
  // No admin server, no /metrics: prom-client stays unloaded until a reload adds one.
  if (cfg.admin.listen === undefined) deferMetrics();
  const runtime = new Runtime({ config: cfg, load: () => readConfig(urls, flags), log, version });
  await runtime.start();
  runtime.installSignals(process);
  const code = await runtime.done;
  log.flush?.();
  process.exit(code);
}

interface RunFlags extends ConfigFlags {
  runConnectionTest?: boolean;
}

/**
 * --run-connection-test: doctor's checks, including a real login, for every listener before the
 * listeners open; any failure (or a listener with no user to log in as) exits 1 with the report.
 */
async function connectionTest(cfg: Config, log: ReturnType<typeof createLogger>): Promise<void> {
  const steps = await runDoctor(cfg, { log });
  const noUser = steps.filter((s) => s.step === 'login' && s.status === 'skip');
  if (steps.some((s) => s.status === 'fail') || noUser.length > 0) {
    process.stderr.write(formatReport(steps) + '\n');
    if (noUser.length > 0)
      process.stderr.write(
        `rds-iam-proxy: --run-connection-test needs a user to log in as for ${noUser.map((s) => s.listener).join(', ')}: put it in the URL (postgres://USER@HOST) or set upstream.user\n`,
      );
    log.error(
      {
        failed: steps.filter((s) => s.status === 'fail').map((s) => ({ listener: s.listener, step: s.step })),
      },
      'connection test failed; not starting',
    );
    log.flush?.();
    process.exit(ExitCode.Failure);
  }
  log.info({ listeners: cfg.listeners.map((l) => l.name) }, 'connection test passed');
}

function fail(err: unknown): never {
  if (err instanceof ConfigError) {
    process.stderr.write(`rds-iam-proxy: ${err.message}\n`);
    process.exit(ExitCode.Config);
  }
  if (err instanceof ProxyError) {
    process.stderr.write(`rds-iam-proxy: ${err.message}${err.hint ? `\n  hint: ${err.hint}` : ''}\n`);
    process.exit(ExitCode.Failure);
  }
  process.stderr.write(
    `rds-iam-proxy: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(ExitCode.Failure);
}

const program = new Command()
  .name('rds-iam-proxy')
  .description('Local Postgres/MySQL proxy that logs in to Amazon RDS and Aurora with IAM auth tokens')
  .version(version, '-v, --version', 'print the version')
  .exitOverride((err) => process.exit(err.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage));

configOptions(
  program
    .command('run')
    .description('start the proxy: a listener per database URL and per listener in the config')
    .option(
      '--run-connection-test',
      "log in to every database once (doctor's checks) before opening; exit 1 if any fails",
    ),
).action((urls: string[], flags: RunFlags) => run(urls, flags).catch(fail));

configOptions(
  program.command('check').description('validate the config (URLs, file, env, flags) and exit (0 = valid)'),
).action((urls: string[], flags: ConfigFlags) => {
  try {
    const cfg = readConfig(urls, flags);
    process.stdout.write(
      `config OK: ${cfg.listeners.length} listener(s): ${cfg.listeners.map((l) => `${l.name} (${l.engine}) ${l.listen} -> ${l.upstream.host}`).join(', ')}\n`,
    );
  } catch (err) {
    fail(err);
  }
});

const adminOption = (): Option =>
  new Option('--admin <host:port>', "the proxy's admin address (its admin.listen / --admin)")
    .env('RDS_IAM_PROXY_ADMIN')
    .default(DEFAULT_ADMIN);

program
  .command('wait')
  .description('wait until a running proxy is ready (its /readyz answers 200); exit 0, or 1 at the timeout')
  .addOption(adminOption())
  .option('--timeout <duration>', 'give up after this long: 30s, 500ms, 2m', '30s')
  .action(async (flags: { admin: string; timeout: string }) => {
    try {
      await waitReady(flags.admin, parseDuration(flags.timeout));
      process.stdout.write('ready\n');
      process.exit(ExitCode.Ok);
    } catch (err) {
      fail(err);
    }
  });

program
  .command('shutdown')
  .description('ask a running proxy to drain and exit, the same as SIGTERM (POST /quitquitquit)')
  .addOption(adminOption())
  .action(async (flags: { admin: string }) => {
    try {
      await requestShutdown(flags.admin);
      process.stdout.write('draining\n');
      process.exit(ExitCode.Ok);
    } catch (err) {
      fail(err);
    }
  });

program
  .command('token')
  .description(
    'print an IAM auth token (drop-in for `aws rds generate-db-auth-token`); only the token goes to stdout',
  )
  .requiredOption('--hostname <host>', 'database endpoint name')
  .requiredOption('--port <port>', 'database port')
  .requiredOption('--username <user>', 'database user')
  .option('--region <region>', 'AWS region (default: from the host name, then AWS_REGION)')
  .option('--profile <name>', 'shared config profile')
  .option('--role-arn <arn>', 'role to assume first')
  .option('--external-id <id>', 'external id for --role-arn')
  .option('--sts-endpoint <url>', 'STS endpoint (VPC interface endpoint)')
  .option('--dsql', 'an Aurora DSQL token (DbConnect, or DbConnectAdmin for user admin)')
  .action(async (flags: TokenFlags) => {
    try {
      process.stdout.write((await generateToken(flags)) + '\n');
    } catch (err) {
      fail(err);
    }
  });

configOptions(
  program
    .command('doctor')
    .description('check credentials, token, clock, DNS, TCP, TLS and a real login for each listener'),
)
  .option('--json', 'machine-readable report')
  .option('--user <name>', 'database user to log in as when upstream.user is not set')
  .option('--database <name>', 'database for the test login')
  .action(
    async (urls: string[], flags: ConfigFlags & { json?: boolean; user?: string; database?: string }) => {
      try {
        const cfg = readConfig(urls, flags);
        const log = createLogger({ level: 'silent', format: 'json' });
        const steps = await runDoctor(cfg, {
          log,
          ...(flags.user ? { user: flags.user } : {}),
          ...(flags.database ? { database: flags.database } : {}),
        });
        const failed = steps.some((s) => s.status === 'fail');
        process.stdout.write(
          (flags.json ? JSON.stringify({ ok: !failed, steps }, null, 2) : formatReport(steps)) + '\n',
        );
        process.exit(failed ? ExitCode.Failure : ExitCode.Ok);
      } catch (err) {
        if (flags.json && err instanceof ConfigError) {
          process.stdout.write(
            JSON.stringify(
              { ok: false, steps: [{ listener: '*', step: 'config', status: 'fail', detail: err.message }] },
              null,
              2,
            ) + '\n',
          );
          process.exit(ExitCode.Config);
        }
        fail(err);
      }
    },
  );

program.parseAsync(process.argv).catch(fail);
