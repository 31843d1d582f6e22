import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import YAML from 'yaml';
import type { core } from 'zod/mini';
import { AwsSettings, Config, Listener } from './schema';
import { ErrorCode, ProxyError } from '../errors';

/** Prefix of environment overrides: RDS_IAM_PROXY__LISTENERS__APP__UPSTREAM__HOST=... */
export const ENV_PREFIX = 'RDS_IAM_PROXY__';

/** One key path and what is wrong with it. */
export interface ConfigProblem {
  path: string;
  message: string;
}

/** Raised with every problem found, not just the first. */
export class ConfigError extends ProxyError {
  constructor(readonly problems: ConfigProblem[]) {
    super(
      ErrorCode.Config,
      'invalid configuration:\n' + problems.map((p) => `  ${p.path}: ${p.message}`).join('\n'),
    );
  }
}

export interface LoadOptions {
  /** YAML file; optional when everything comes from env and flags. */
  file?: string;
  /** Environment to read overrides from (process.env by default). */
  env?: NodeJS.ProcessEnv;
  /** `path=value` overrides from --set, applied last. Paths are dotted: listeners.app.upstream.host. */
  sets?: string[];
  /** Flag-level layers (database URLs, --port, ...: src/config/url.ts), applied after env, before `sets`. */
  layers?: ConfigLayer[];
}

/** Returns the raw config with its changes; reports what it cannot apply in `problems`. */
export type ConfigLayer = (
  raw: Record<string, unknown>,
  problems: ConfigProblem[],
) => Record<string, unknown>;

/** What `run` and `check` say when nothing names a database. */
export const NO_LISTENERS =
  'no listeners: give a database URL (rds-iam-proxy run postgres://USER@HOST:5432/DB --port 15432), ' +
  'a config file (--config FILE or RDS_IAM_PROXY_CONFIG=FILE), or RDS_IAM_PROXY__LISTENERS__… variables';

/** Loads file < env < flags, validates, and returns the typed config or throws ConfigError. */
export function loadConfig(opts: LoadOptions): Config {
  let raw: unknown = {};
  if (opts.file) {
    let text: string;
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch (err) {
      throw new ConfigError([{ path: opts.file, message: `cannot read: ${(err as Error).message}` }]);
    }
    const doc = YAML.parseDocument(text, { prettyErrors: true });
    if (doc.errors.length > 0) {
      throw new ConfigError(doc.errors.map((e) => ({ path: opts.file as string, message: e.message })));
    }
    raw = dropNulls(doc.toJS()) ?? {};
  }
  const problems: ConfigProblem[] = [];
  for (const [name, value] of Object.entries(opts.env ?? process.env)) {
    if (!name.startsWith(ENV_PREFIX) || value === undefined) continue;
    const segments = name.slice(ENV_PREFIX.length).split('__');
    raw = applyOverride(raw, segments, value, name, problems);
  }
  for (const layer of opts.layers ?? []) raw = layer(isRecord(raw) ? raw : {}, problems);
  for (const set of opts.sets ?? []) {
    const eq = set.indexOf('=');
    if (eq <= 0) {
      problems.push({ path: set, message: '--set takes path=value' });
      continue;
    }
    raw = applyOverride(
      raw,
      set.slice(0, eq).split('.'),
      set.slice(eq + 1),
      `--set ${set.slice(0, eq)}`,
      problems,
    );
  }
  return validateConfig(raw, problems);
}

/** Validates an already-parsed object; also used by tests and reload. */
export function validateConfig(raw: unknown, problems: ConfigProblem[] = []): Config {
  const parsed = Config.safeParse(raw);
  if (!parsed.success) {
    const given = isRecord(raw) ? raw['listeners'] : undefined;
    const none = given === undefined || (Array.isArray(given) && given.length === 0);
    if (none) problems.push({ path: 'listeners', message: NO_LISTENERS });
    // zod's "expected array, received undefined" says nothing about how to give one.
    problems.push(...zodProblems(parsed.error).filter((p) => !(none && p.path === 'listeners')));
    // Still run the cross-field rules over the listeners that parse, so one run shows everything.
    const items = isRecord(raw) && Array.isArray(raw['listeners']) ? raw['listeners'] : [];
    const listeners = items.map((l) => Listener.safeParse(l)).map((r) => (r.success ? r.data : undefined));
    const aws = AwsSettings.safeParse(isRecord(raw) ? (raw['aws'] ?? {}) : {});
    problems.push(...listenerChecks(listeners, aws.success ? aws.data : {}));
    throw new ConfigError(problems);
  }
  problems.push(...crossChecks(parsed.data));
  if (problems.length > 0) throw new ConfigError(problems);
  // Store the signing region: code that holds only a listener then gets the top-level fallback too.
  for (const l of parsed.data.listeners) l.auth.region = listenerRegion(l, parsed.data.aws.region);
  return parsed.data;
}

function zodProblems(err: core.$ZodError): ConfigProblem[] {
  return err.issues.map((i) => ({ path: i.path.map(String).join('.') || '(root)', message: i.message }));
}

/** Rules that span fields; reported together with schema problems. */
function crossChecks(cfg: Config): ConfigProblem[] {
  const out = listenerChecks(cfg.listeners, cfg.aws);
  if (cfg.admin.listen !== undefined) {
    try {
      const a = parseListen(cfg.admin.listen);
      if (a.kind === 'unix') out.push({ path: 'admin.listen', message: 'admin.listen must be host:port' });
    } catch (err) {
      out.push({ path: 'admin.listen', message: (err as Error).message });
    }
  }
  return out;
}

/** Per-listener rules; `undefined` entries (listeners that failed the schema) are skipped but keep their index. */
function listenerChecks(listeners: (Listener | undefined)[], aws: AwsSettings): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const names = new Set<string>();
  const binds = new Set<string>();
  listeners.forEach((l, i) => {
    if (!l) return;
    const at = `listeners.${i}`;
    if (names.has(l.name)) out.push({ path: `${at}.name`, message: `duplicate listener name "${l.name}"` });
    names.add(l.name);
    let bind: ListenAddress | undefined;
    try {
      bind = parseListen(l.listen);
    } catch (err) {
      out.push({ path: `${at}.listen`, message: (err as Error).message });
    }
    if (bind) {
      const key = bind.kind === 'unix' ? bind.path : `${bind.host}:${bind.port}`;
      // Port 0 asks the OS for a free port, so several listeners may use it.
      if (binds.has(key) && !(bind.kind === 'tcp' && bind.port === 0))
        out.push({ path: `${at}.listen`, message: `${key} is used by another listener` });
      binds.add(key);
      if (bind.kind === 'tcp' && !isLoopback(bind.host) && l.client.auth !== 'password') {
        out.push({
          path: `${at}.listen`,
          message: `${bind.host} is not a loopback address: anyone who can reach it would log in as the IAM user; set client.auth: password (with client.users) or listen on 127.0.0.1`,
        });
      }
    }
    if (l.client.auth === 'password' && l.client.users.length === 0) {
      out.push({ path: `${at}.client.users`, message: 'client.auth: password needs at least one user' });
    }
    if (l.upstream.address !== undefined) {
      try {
        parseUpstreamAddress(l.upstream.address);
      } catch (err) {
        out.push({ path: `${at}.upstream.address`, message: (err as Error).message });
      }
    }
    if (l.engine === 'mysql' && l.upstream.tls.negotiation === 'direct') {
      out.push({
        path: `${at}.upstream.tls.negotiation`,
        message:
          'direct TLS is a PostgreSQL 17+ / Aurora PostgreSQL feature; MySQL and MariaDB always start in plaintext and upgrade with SSLRequest: remove it from this mysql listener',
      });
    }
    if (l.auth.mode === 'password' && !l.auth.password) {
      out.push({
        path: `${at}.auth.password`,
        message: 'auth.mode: password needs auth.password ({env: NAME} or {file: PATH})',
      });
    }
    if (
      l.auth.mode !== 'password' &&
      !l.auth.region &&
      !l.auth.aws?.region &&
      !aws.region &&
      !regionFromHost(l.upstream.host)
    ) {
      out.push({
        path: `${at}.auth.region`,
        message: `cannot read a region from "${l.upstream.host}"; set auth.region (e.g. us-east-1)`,
      });
    }
  });
  return out;
}

export type ListenAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/** Parses `host:port`, `[::1]:port`, `port` or an absolute unix socket path. Host defaults to 127.0.0.1. */
export function parseListen(listen: string | number): ListenAddress {
  if (typeof listen === 'number') return { kind: 'tcp', host: '127.0.0.1', port: checkPort(listen) };
  if (listen.startsWith('/')) return { kind: 'unix', path: listen };
  if (listen.startsWith('unix:')) return { kind: 'unix', path: listen.slice(5) };
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen) ?? /^()()(\d+)$/.exec(listen);
  if (!m) throw new Error(`"${listen}" is not host:port, a port, or an absolute unix socket path`);
  const host = m[1] || m[2] || '127.0.0.1';
  return { kind: 'tcp', host, port: checkPort(Number(m[3])) };
}

/** A parsed `upstream.address`: the host to dial, and the port when it differs from `upstream.port`. */
export interface UpstreamAddress {
  /** Name, IPv4 or IPv6 (without brackets) to dial. */
  host: string;
  /** Port to dial; absent means `upstream.port`. */
  port?: number;
}

/**
 * Parses `upstream.address`: `HOST`, `HOST:PORT`, `IPv6` or `[IPv6]:PORT` (`127.0.0.1:15432`,
 * `[::1]:15432`, `tunnel.local:15432`). Throws an Error whose message says what form is expected.
 */
export function parseUpstreamAddress(address: string): UpstreamAddress {
  const expected = 'expected HOST, HOST:PORT or [IPv6]:PORT, e.g. 127.0.0.1:15432 for a tunnel';
  if (isIP(address) === 6) return { host: address };
  const m = /^(?:\[([^\]]*)\]|([^:[\]]*))(?::(\d*))?$/.exec(address);
  if (!m) throw new Error(`"${address}" is not an address: ${expected}`);
  const [, v6, name, portText] = m;
  const host = v6 ?? name ?? '';
  if (v6 !== undefined && isIP(v6) !== 6) throw new Error(`"[${v6}]" is not an IPv6 address: ${expected}`);
  if (host === '') throw new Error(`"${address}" has no host: ${expected}`);
  if (v6 === undefined && isIP(host) === 0 && !/^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$/.test(host))
    throw new Error(`"${host}" is not a host name or IP address: ${expected}`);
  if (portText === undefined) return { host };
  const port = Number(portText);
  if (portText === '' || port < 1 || port > 65535)
    throw new Error(`port "${portText}" in "${address}" must be 1..65535: ${expected}`);
  return { host, port };
}

function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`port ${port} is out of range`);
  return port;
}

/** True for 127.0.0.0/8, ::1 and localhost. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1' || host === '0:0:0:0:0:0:0:1';
}

/** Region from an RDS/Aurora endpoint name (`*.REGION.rds.amazonaws.com[.cn]`), if it has one. */
export function regionFromHost(host: string): string | undefined {
  const m = /\.([a-z]{2}(?:-[a-z]+)+-\d)\.rds\.amazonaws\.com(?:\.cn)?\.?$/.exec(host);
  return m?.[1];
}

/**
 * The region a listener signs tokens for: auth.region, else the endpoint name's, else the
 * listener's auth.aws.region, else the top-level aws.region (`topRegion`; a validated config
 * has already stored the result in auth.region).
 */
export function listenerRegion(l: Listener, topRegion?: string): string | undefined {
  return l.auth.region ?? regionFromHost(l.upstream.host) ?? l.auth.aws?.region ?? topRegion;
}

/** The upstream port with the engine's default. */
export function upstreamPort(l: Listener): number {
  return l.upstream.port ?? (l.engine === 'postgres' ? 5432 : 3306);
}

/** Env and flag segments match keys and listener names ignoring case, `_` and `-` (MY_APP = my-app = myApp). */
function sameKey(key: string, segment: string): boolean {
  const norm = (x: string): string => x.toLowerCase().replace(/[-_]/g, '');
  return norm(key) === norm(segment);
}

function snakeToCamel(s: string): string {
  if (!s.includes('_') && s !== s.toUpperCase()) return s; // already camelCase (from --set)
  return s.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * Sets `value` (parsed as a YAML scalar, so numbers and booleans keep their type) at `path`.
 * Array elements are addressed by listener name or index; object keys match case-insensitively.
 */
function applyOverride(
  root: unknown,
  path: string[],
  value: string,
  source: string,
  problems: ConfigProblem[],
): unknown {
  if (path.length === 0 || path.some((p) => p === '')) {
    problems.push({ path: source, message: 'empty key path' });
    return root;
  }
  const top: Record<string, unknown> = isRecord(root) ? root : {};
  let node: unknown = top;
  for (let i = 0; i < path.length; i++) {
    const seg = path[i] as string;
    const last = i === path.length - 1;
    const next = path[i + 1];
    // A missing container becomes a list when the next segment is an index.
    const container = (v: unknown): unknown =>
      isRecord(v) || Array.isArray(v) ? v : next !== undefined && /^\d+$/.test(next) ? [] : {};
    if (Array.isArray(node)) {
      const idx = /^\d+$/.test(seg)
        ? Number(seg)
        : node.findIndex((e) => isRecord(e) && sameKey(String(e['name']), seg));
      if (idx < 0 || idx > node.length) {
        problems.push({ path: source, message: `no list element named "${seg}"` });
        return top;
      }
      if (last) node[idx] = parseScalar(value);
      else node = node[idx] = container(node[idx]);
      continue;
    }
    const obj = node as Record<string, unknown>;
    const key = Object.keys(obj).find((k) => sameKey(k, seg)) ?? snakeToCamel(seg);
    if (last) obj[key] = parseScalar(value);
    else node = obj[key] = container(obj[key]);
  }
  return top;
}

function parseScalar(value: string): unknown {
  try {
    return YAML.parse(value) ?? value;
  } catch {
    return value;
  }
}

/** A YAML key with nothing under it (all children commented out) means "not set", not null. */
function dropNulls(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(dropNulls);
  if (!isRecord(v)) return v;
  return Object.fromEntries(
    Object.entries(v)
      .filter(([, x]) => x !== null)
      .map(([k, x]) => [k, dropNulls(x)]),
  );
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
