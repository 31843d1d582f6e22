/**
 * Node built-ins an idle proxy does not use, loaded on first use: the admin server, the
 * `wait` / `shutdown` commands and a custom CA for AWS endpoints need them; a proxy without
 * those never loads them (0.5 MiB of idle RSS, docs/PERFORMANCE.md). A top-level import would
 * load them at start, also from the single-file bundle.
 */
import type Http from 'node:http';
import type Https from 'node:https';

/** node:http, loaded on the first call. */
export function nodeHttp(): typeof Http {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('node:http') as typeof Http;
}

/** node:https, loaded on the first call. */
export function nodeHttps(): typeof Https {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('node:https') as typeof Https;
}
