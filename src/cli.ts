#!/usr/bin/env node
import { Command, Option } from 'commander';
import { loadConfig, ConfigError } from './config/load';
import type { Config } from './config/schema';
import { createLogger } from './log';
import { Runtime, resolveLogFormat } from './runtime';
import { ExitCode, ProxyError } from './errors';
import { version } from '../package.json';
import { generateToken, type TokenFlags } from './commands/token';
import { formatReport, runDoctor } from './commands/doctor';

/** Options shared by commands that read a config. */
interface ConfigFlags {
  config?: string;
  set?: string[];
  logLevel?: string;
}

function readConfig(flags: ConfigFlags): Config {
  const sets = [...(flags.set ?? [])];
  if (flags.logLevel) sets.push(`log.level=${flags.logLevel}`);
  return loadConfig({ file: flags.config ?? process.env['RDS_IAM_PROXY_CONFIG'], sets });
}

function configOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('-c, --config <file>', 'YAML config file').env('RDS_IAM_PROXY_CONFIG'))
    .option(
      '--set <path=value>',
      'override a config key, e.g. listeners.app.upstream.port=5433 (repeatable)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--log-level <level>', 'override log.level');
}

/**
 * `run`: starts the proxy and its admin server, then lives until a signal. SIGTERM/SIGINT drain
 * (src/runtime.ts), SIGHUP reloads the config from the same file, environment and flags.
 */
async function run(flags: ConfigFlags): Promise<void> {
  const cfg = readConfig(flags);
  const { format, fallback } = resolveLogFormat(cfg.log.format, process.stdout.isTTY === true);
  const log = createLogger({ level: cfg.log.level, format });
  if (fallback)
    log.warn('log.format pretty needs the pino-pretty package, which is not installed; logging JSON');
  const runtime = new Runtime({ config: cfg, load: () => readConfig(flags), log, version });
  await runtime.start();
  runtime.installSignals(process);
  const code = await runtime.done;
  log.flush?.();
  process.exit(code);
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
  .version(version)
  .exitOverride((err) => process.exit(err.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage));

configOptions(program.command('run').description('start the proxy')).action((flags: ConfigFlags) =>
  run(flags).catch(fail),
);

configOptions(program.command('check').description('validate the config and exit (0 = valid)')).action(
  (flags: ConfigFlags) => {
    try {
      const cfg = readConfig(flags);
      process.stdout.write(
        `config OK: ${cfg.listeners.length} listener(s): ${cfg.listeners.map((l) => `${l.name} (${l.engine})`).join(', ')}\n`,
      );
    } catch (err) {
      fail(err);
    }
  },
);

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
  .action(async (flags: ConfigFlags & { json?: boolean; user?: string; database?: string }) => {
    try {
      const cfg = readConfig(flags);
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
  });

program.parseAsync(process.argv).catch(fail);
