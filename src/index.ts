/**
 * The library entry of the rds-iam-proxy package (`require('rds-iam-proxy')`). The command line is
 * the `rds-iam-proxy` bin (dist/src/cli.js); requiring this module starts nothing.
 *
 * Embedding: load a config (file < env < URL layer < --set), then run it:
 *   const cfg = loadConfig({ layers: [urlLayer(['postgres://app@db.x.us-east-1.rds.amazonaws.com'], { port: 15432 })] });
 *   const rt = new Runtime({ config: cfg, log: createLogger({ level: 'info', format: 'json' }), version });
 *   await rt.start(); rt.installSignals(); process.exitCode = await rt.done;
 */
import { version as packageVersion } from '../package.json';

export {
  loadConfig,
  validateConfig,
  parseListen,
  ConfigError,
  NO_LISTENERS,
  type ConfigLayer,
  type ConfigProblem,
  type LoadOptions,
} from './config/load';
export { urlLayer, URL_OPTIONS, type UrlFlags } from './config/url';
export type { Config, ConfigInput, Listener } from './config/schema';
export { Runtime, type RuntimeOptions } from './runtime';
export { createLogger, scrubSecrets, type Logger, type LogOptions } from './log';
export { ProxyError, ErrorCode, ExitCode } from './errors';
export { waitReady, requestShutdown } from './commands/lifecycle';
/** The package's version. */
export const VERSION: string = packageVersion;
