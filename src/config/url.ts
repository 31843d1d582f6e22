/**
 * The one-line start: `rds-iam-proxy run postgres://app_iam@mydb.xxxx.us-east-1.rds.amazonaws.com/app
 * --port 15432`. Database URLs and the flags next to them are only a front for the config schema:
 * they become one more raw config layer, applied after the file and the environment and before
 * `--set` (see `LoadOptions.layers`), so every combination is validated by the same rules.
 *
 * A URL gives one listener:
 *   scheme          postgres / postgresql -> engine postgres; mysql / mariadb -> engine mysql
 *   user@           upstream.user (every client logs in upstream as this IAM user); optional
 *   host[:port]     upstream.host (the endpoint name the token is signed for) and upstream.port
 *   /database       upstream.database; optional
 *   ?query          per-listener options, see URL_OPTIONS
 */
import { isIP } from 'node:net';
import type { ConfigLayer, ConfigProblem } from './load';

/** Flags of `run` / `check` / `doctor` that shape the configuration. */
export interface UrlFlags {
  /** First local TCP port; each further URL listener takes the next one. */
  port?: number;
  /** Local bind host for URL listeners (default 127.0.0.1). */
  address?: string;
  /** Directory for unix sockets instead of TCP (Postgres: DIR/.s.PGSQL.PORT, MySQL: DIR/NAME.sock). */
  unixSocket?: string;
  /** Signing region for URL listeners, and aws.region for STS calls. */
  region?: string;
  /** Upstream CA for URL listeners: `rds` or a PEM file path. */
  ca?: string;
  /** Local TLS towards clients for URL listeners. */
  clientTls?: 'off' | 'auto';
  /** admin.listen: health, readiness, metrics and /quitquitquit. */
  admin?: string;
  /** log.level warn: only warnings and errors. */
  quiet?: boolean;
}

/** Query parameters a database URL accepts, and what each sets on its listener. */
export const URL_OPTIONS: Record<string, string> = {
  name: 'listener name (default: the first label of the host name)',
  port: 'local TCP port',
  address: 'local bind host',
  'unix-socket': 'directory for a unix socket instead of TCP',
  region: 'signing region (auth.region)',
  ca: 'upstream CA: rds or a PEM file (upstream.tls.ca)',
  dial: 'address to dial instead of the host, e.g. 127.0.0.1:15432 for a tunnel (upstream.address)',
  'client-tls': 'off or auto (client.tls)',
};

const SCHEMES: Record<string, 'postgres' | 'mysql'> = {
  'postgres:': 'postgres',
  'postgresql:': 'postgres',
  'mysql:': 'mysql',
  'mariadb:': 'mysql',
};

const DEFAULT_PORT = { postgres: 5432, mysql: 3306 } as const;

/** Flags that only make sense for listeners given as URLs. */
const LISTENER_FLAGS: [keyof UrlFlags, string][] = [
  ['port', '--port'],
  ['address', '--address'],
  ['unixSocket', '--unix-socket'],
  ['ca', '--ca'],
  ['clientTls', '--client-tls'],
];

/**
 * Builds the config layer for `urls` and `flags`. The layer appends one listener per URL (names
 * made unique against listeners already in the file or environment) and sets the global keys the
 * flags name. Problems (a bad URL, a password in a URL, an unknown option) are reported with the
 * URL they come from, together with every other config problem.
 */
export function urlLayer(urls: string[], flags: UrlFlags): ConfigLayer {
  return (raw, problems) => {
    const out: Record<string, unknown> = { ...raw };
    if (flags.admin !== undefined) out['admin'] = { ...asRecord(out['admin']), listen: flags.admin };
    if (flags.quiet) out['log'] = { ...asRecord(out['log']), level: 'warn' };
    if (flags.region !== undefined) out['aws'] = { ...asRecord(out['aws']), region: flags.region };
    if (urls.length === 0) {
      for (const [key, flag] of LISTENER_FLAGS) {
        if (flags[key] !== undefined)
          problems.push({
            path: flag,
            message: `${flag} applies to listeners given as database URLs (e.g. postgres://USER@HOST/DB); for a config file use --set listeners.NAME.…`,
          });
      }
      return out;
    }
    const existing = Array.isArray(out['listeners']) ? (out['listeners'] as unknown[]) : [];
    const taken = new Set(existing.map((l) => String(asRecord(l)['name'] ?? '')));
    const nextPort = { postgres: 0, mysql: 0, any: 0 };
    const added: unknown[] = [];
    urls.forEach((text, i) => {
      const listener = urlListener(text, i, flags, taken, nextPort, problems);
      if (listener) added.push(listener);
    });
    out['listeners'] = [...existing, ...added];
    return out;
  };
}

function urlListener(
  text: string,
  index: number,
  flags: UrlFlags,
  taken: Set<string>,
  nextPort: { postgres: number; mysql: number; any: number },
  problems: ConfigProblem[],
): Record<string, unknown> | undefined {
  const at = `URL ${index + 1}`;
  const bad = (message: string): undefined => {
    problems.push({ path: at, message });
    return undefined;
  };
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return bad(`"${redactUrl(text)}" is not a URL; expected postgres://USER@HOST:PORT/DATABASE or mysql://…`);
  }
  const engine = SCHEMES[url.protocol];
  if (!engine)
    return bad(
      `unknown scheme "${url.protocol}" in ${redactUrl(text)}: use postgres://, postgresql://, mysql:// or mariadb://`,
    );
  if (url.password)
    return bad(
      `${redactUrl(text)} carries a password: the proxy logs in with IAM tokens; leave it out (for a static password use a config file with auth.mode: password)`,
    );
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) return bad(`${redactUrl(text)} has no host`);
  const query = new Map<string, string>();
  for (const [k, v] of url.searchParams) {
    if (!(k in URL_OPTIONS)) {
      problems.push({
        path: `${at}.${k}`,
        message: `unknown URL option; known: ${Object.keys(URL_OPTIONS).join(', ')}`,
      });
      continue;
    }
    query.set(k, v);
  }

  const name = query.get('name') ?? uniqueName(hostLabel(host), taken);
  taken.add(name);
  const upstream: Record<string, unknown> = { host };
  if (url.port) upstream['port'] = Number(url.port);
  if (url.username) upstream['user'] = decodeURIComponent(url.username);
  const database = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (database) upstream['database'] = database;
  const dial = query.get('dial');
  if (dial !== undefined) upstream['address'] = dial;
  const ca = query.get('ca') ?? flags.ca;
  if (ca !== undefined) upstream['tls'] = { ca };

  const listener: Record<string, unknown> = {
    name,
    engine,
    listen: listenFor(engine, name, query, flags, nextPort, problems, at),
    upstream,
  };
  const region = query.get('region') ?? flags.region;
  if (region !== undefined) listener['auth'] = { region };
  const clientTls = query.get('client-tls') ?? flags.clientTls;
  if (clientTls !== undefined) listener['client'] = { tls: clientTls };
  return listener;
}

/**
 * Where a URL listener accepts clients. TCP ports count up from --port (or the engine's default
 * port, per engine) in URL order, the way cloud-sql-proxy assigns them; `?port=` pins one.
 */
function listenFor(
  engine: 'postgres' | 'mysql',
  name: string,
  query: Map<string, string>,
  flags: UrlFlags,
  nextPort: { postgres: number; mysql: number; any: number },
  problems: ConfigProblem[],
  at: string,
): string {
  let port: number;
  const pinned = query.get('port');
  if (pinned !== undefined) {
    port = Number(pinned);
    if (!/^\d+$/.test(pinned) || port > 65535) {
      problems.push({ path: `${at}.port`, message: `"${pinned}" is not a port number` });
      port = 0;
    }
  } else if (flags.port !== undefined) {
    port = flags.port + nextPort.any++;
  } else {
    port = DEFAULT_PORT[engine] + nextPort[engine]++;
  }
  // `?address=` asks for TCP even when --unix-socket is given.
  const dir = query.get('unix-socket') ?? (query.has('address') ? undefined : flags.unixSocket);
  if (dir !== undefined) {
    const base = dir.replace(/\/+$/, '') || '/';
    // libpq finds DIR/.s.PGSQL.PORT from host=DIR port=PORT; MySQL clients take a socket file path.
    const file = engine === 'postgres' ? `.s.PGSQL.${port}` : `${name}.sock`;
    return `${base === '/' ? '' : base}/${file}`;
  }
  const host = query.get('address') ?? flags.address ?? '127.0.0.1';
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** `mydb` from `mydb.xxxx.us-east-1.rds.amazonaws.com`; `db` for an IP address. */
export function hostLabel(host: string): string {
  if (isIP(host) !== 0) return 'db';
  const clean = (host.split('.')[0] ?? '')
    .replace(/[^A-Za-z0-9_-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 40);
  return clean || 'db';
}

function uniqueName(base: string, taken: Set<string>): string {
  if (!taken.has(base)) return base;
  for (let n = 2; ; n++) if (!taken.has(`${base}-${n}`)) return `${base}-${n}`;
}

/** The URL as text with any password replaced, for messages. */
export function redactUrl(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, '$1:[REDACTED]@');
}

function asRecord(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}
