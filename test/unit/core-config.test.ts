import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import YAML from 'yaml';
import { ErrorCode } from '../../src/errors';
import {
  ConfigError,
  type ConfigProblem,
  ENV_PREFIX,
  isLoopback,
  listenerRegion,
  loadConfig,
  parseListen,
  regionFromHost,
  upstreamPort,
  validateConfig,
} from '../../src/config/load';
import type { Listener } from '../../src/config/schema';

const HOST = 'db.abc123.us-east-1.rds.amazonaws.com';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'core-config-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileNo = 0;
function writeYaml(content: unknown): string {
  const file = path.join(dir, `config-${++fileNo}.yaml`);
  writeFileSync(file, typeof content === 'string' ? content : YAML.stringify(content));
  return file;
}

const BASE_YAML = `
log:
  level: warn
listeners:
  - name: app
    engine: postgres
    listen: 127.0.0.1:6432
    upstream:
      host: ${HOST}
      port: 5432
  - name: other
    engine: mysql
    listen: "[::1]:3307"
    upstream:
      host: aurora.cluster-xyz.eu-west-1.rds.amazonaws.com
`;

function configError(fn: () => unknown): ConfigError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ConfigError);
  expect((caught as ConfigError).code).toBe(ErrorCode.Config);
  return caught as ConfigError;
}

function hasProblem(problems: ConfigProblem[], pathRe: RegExp | string, messageRe: RegExp | string): boolean {
  const pathOk = (p: string): boolean => (typeof pathRe === 'string' ? p === pathRe : pathRe.test(p));
  const msgOk = (m: string): boolean =>
    typeof messageRe === 'string' ? m.includes(messageRe) : messageRe.test(m);
  return problems.some((p) => pathOk(p.path) && msgOk(p.message));
}

function expectProblem(problems: ConfigProblem[], pathRe: RegExp | string, messageRe: RegExp | string): void {
  if (!hasProblem(problems, pathRe, messageRe)) {
    throw new Error(
      `no problem at ${String(pathRe)} matching ${String(messageRe)} in:\n${JSON.stringify(problems, null, 2)}`,
    );
  }
}

function listener(cfg: { listeners: Listener[] }, name: string): Listener {
  const l = cfg.listeners.find((x) => x.name === name);
  if (!l) throw new Error(`no listener ${name}`);
  return l;
}

describe('loadConfig: file, env and --set', () => {
  it('loads a YAML file', () => {
    const cfg = loadConfig({ file: writeYaml(BASE_YAML), env: {} });
    expect(cfg.log.level).toBe('warn');
    expect(cfg.listeners.map((l) => l.name)).toEqual(['app', 'other']);
    expect(listener(cfg, 'app').upstream).toMatchObject({ host: HOST, port: 5432 });
    expect(listener(cfg, 'other').listen).toBe('[::1]:3307');
  });

  it('applies env overrides by listener name, case-insensitively, with typed numbers', () => {
    const cfg = loadConfig({
      file: writeYaml(BASE_YAML),
      env: {
        RDS_IAM_PROXY__LISTENERS__APP__UPSTREAM__PORT: '6000',
        RDS_IAM_PROXY__LOG__LEVEL: 'debug',
        RDS_IAM_PROXY__LISTENERS__OTHER__HANDSHAKE_TIMEOUT_MS: '2500',
        RDS_IAM_PROXY__LISTENERS__1__UPSTREAM__CONNECT_TIMEOUT_MS: '750',
        UNRELATED__LOG__LEVEL: 'trace',
        rds_iam_proxy__log__level: 'trace', // prefix is case-sensitive
      },
    });
    expect(listener(cfg, 'app').upstream.port).toBe(6000);
    expect(typeof listener(cfg, 'app').upstream.port).toBe('number');
    expect(cfg.log.level).toBe('debug');
    expect(listener(cfg, 'other').handshakeTimeoutMs).toBe(2500);
    expect(listener(cfg, 'other').upstream.connectTimeoutMs).toBe(750);
    // Untouched values keep the file's.
    expect(listener(cfg, 'app').upstream.host).toBe(HOST);
  });

  it('matches listener names regardless of their case in the file', () => {
    const cfg = loadConfig({
      file: writeYaml(BASE_YAML.replace('name: app', 'name: App')),
      env: { RDS_IAM_PROXY__LISTENERS__APP__UPSTREAM__PORT: '6000' },
      sets: ['listeners.aPP.upstream.host=x.us-west-2.rds.amazonaws.com'],
    });
    expect(listener(cfg, 'App').upstream).toMatchObject({
      port: 6000,
      host: 'x.us-west-2.rds.amazonaws.com',
    });
  });

  it('--set beats env, which beats the file', () => {
    const file = writeYaml(BASE_YAML);
    const env = {
      RDS_IAM_PROXY__LISTENERS__APP__UPSTREAM__HOST: 'env.us-east-2.rds.amazonaws.com',
      RDS_IAM_PROXY__LISTENERS__APP__UPSTREAM__PORT: '6000',
      RDS_IAM_PROXY__LOG__LEVEL: 'debug',
    };
    const cfg = loadConfig({
      file,
      env,
      sets: ['listeners.app.upstream.host=x.us-west-2.rds.amazonaws.com', 'log.level=error'],
    });
    const app = listener(cfg, 'app');
    expect(app.upstream.host).toBe('x.us-west-2.rds.amazonaws.com'); // --set
    expect(app.upstream.port).toBe(6000); // env
    expect(cfg.log.level).toBe('error'); // --set over env
    expect(listenerRegion(app)).toBe('us-west-2');
    expect(loadConfig({ file, env }).listeners[0]?.upstream.host).toBe('env.us-east-2.rds.amazonaws.com');
    expect(loadConfig({ file, env: {} }).listeners[0]?.upstream.host).toBe(HOST);
  });

  it('--set types values as YAML scalars and addresses list elements by index', () => {
    const cfg = loadConfig({
      file: writeYaml(BASE_YAML),
      env: {},
      sets: [
        'listeners.0.upstream.port=7000',
        'listeners.other.listen=3399',
        'listeners.app.auth.region=eu-north-1',
      ],
    });
    expect(listener(cfg, 'app').upstream.port).toBe(7000);
    expect(listener(cfg, 'other').listen).toBe(3399);
    expect(listener(cfg, 'app').auth.region).toBe('eu-north-1');
    expect(parseListen(listener(cfg, 'other').listen)).toEqual({
      kind: 'tcp',
      host: '127.0.0.1',
      port: 3399,
    });
  });

  // Regression: LoadOptions.file is documented as optional "when everything comes from env and flags", but
  // applyOverride only ever creates objects, so LISTENERS__0__... yields {listeners: {"0": ...}}.
  it('builds a whole config from env and --set alone (no file)', () => {
    const cfg = loadConfig({
      env: {
        [`${ENV_PREFIX}LISTENERS__0__NAME`]: 'solo',
        [`${ENV_PREFIX}LISTENERS__0__ENGINE`]: 'postgres',
        [`${ENV_PREFIX}LISTENERS__0__LISTEN`]: '127.0.0.1:5439',
      },
      sets: [`listeners.solo.upstream.host=${HOST}`],
    });
    expect(cfg.listeners).toHaveLength(1);
    expect(listener(cfg, 'solo').upstream.host).toBe(HOST);
  });

  it('reports bad overrides as problems with their source', () => {
    const err = configError(() =>
      loadConfig({
        file: writeYaml(BASE_YAML),
        env: { RDS_IAM_PROXY__LISTENERS__NOPE__UPSTREAM__PORT: '1' },
        sets: ['no-equals-sign', 'listeners.missing.upstream.port=1', '=x'],
      }),
    );
    expectProblem(err.problems, 'RDS_IAM_PROXY__LISTENERS__NOPE__UPSTREAM__PORT', 'no list element named');
    expectProblem(err.problems, 'no-equals-sign', '--set takes path=value');
    expectProblem(err.problems, '=x', '--set takes path=value');
    expectProblem(err.problems, /--set listeners\.missing\.upstream\.port/, 'no list element named');
    expect(err.problems).toHaveLength(4);
    expect(err.message).toContain('no-equals-sign');
  });

  it('an env override typed wrongly fails validation at the real key path', () => {
    const err = configError(() =>
      loadConfig({
        file: writeYaml(BASE_YAML),
        env: { RDS_IAM_PROXY__LISTENERS__APP__UPSTREAM__PORT: 'not-a-number' },
      }),
    );
    expectProblem(err.problems, 'listeners.0.upstream.port', /number/i);
  });

  // Regression: snakeToCamel turns MY_APP into "myApp", which never matches a listener named my_app,
  // although the schema allows "_" in names and documents names as the env-override key.
  it('addresses a listener whose name contains "_" from the environment', () => {
    const file = writeYaml(BASE_YAML.replace('name: app', 'name: my_app'));
    const viaSet = loadConfig({ file, env: {}, sets: ['listeners.my_app.upstream.port=6001'] });
    expect(listener(viaSet, 'my_app').upstream.port).toBe(6001);
    const viaEnv = loadConfig({ file, env: { RDS_IAM_PROXY__LISTENERS__MY_APP__UPSTREAM__PORT: '6000' } });
    expect(listener(viaEnv, 'my_app').upstream.port).toBe(6000);
  });

  it('reports unreadable files and YAML syntax errors as ConfigError naming the file', () => {
    const missing = path.join(dir, 'does-not-exist.yaml');
    const e1 = configError(() => loadConfig({ file: missing, env: {} }));
    expect(e1.problems[0]?.path).toBe(missing);
    expect(e1.problems[0]?.message).toMatch(/cannot read/);
    const bad = writeYaml('listeners:\n  - name: [unclosed\n');
    const e2 = configError(() => loadConfig({ file: bad, env: {} }));
    expect(e2.problems.length).toBeGreaterThan(0);
    expect(e2.problems.every((p) => p.path === bad)).toBe(true);
  });

  it('an empty file is an empty config (which needs a listener)', () => {
    const err = configError(() => loadConfig({ file: writeYaml(''), env: {} }));
    expectProblem(err.problems, 'listeners', /.+/);
  });
});

describe('validation', () => {
  const good = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
    name: 'app',
    engine: 'postgres',
    listen: '127.0.0.1:5432',
    upstream: { host: HOST },
    ...over,
  });

  it('fills defaults', () => {
    const cfg = validateConfig({
      listeners: [good(), good({ name: 'my', engine: 'mysql', listen: 3306 })],
    });
    const pg = listener(cfg, 'app');
    const my = listener(cfg, 'my');
    expect(upstreamPort(pg)).toBe(5432);
    expect(upstreamPort(my)).toBe(3306);
    expect(upstreamPort({ ...pg, upstream: { ...pg.upstream, port: 15432 } })).toBe(15432);
    expect(pg.client).toEqual({ tls: 'auto', auth: 'trust', passwordMethod: 'scram-sha-256', users: [] });
    expect(pg.auth.mode).toBe('iam');
    expect(pg.upstream.tls).toEqual({ ca: 'rds', minVersion: 'TLSv1.2', negotiation: 'postgres' });
    expect(pg.upstream.connectTimeoutMs).toBe(10_000);
    expect(pg.handshakeTimeoutMs).toBe(15_000);
    expect(cfg.log).toEqual({ level: 'info', format: 'auto' });
    expect(listenerRegion(pg)).toBe('us-east-1');
    expect(listenerRegion({ ...pg, auth: { ...pg.auth, region: 'ap-south-1' } })).toBe('ap-south-1');
  });

  it('refuses an unknown top-level key', () => {
    const err = configError(() => validateConfig({ listeners: [good()], listners: [] }));
    expectProblem(err.problems, '(root)', 'listners');
  });

  it('reports every schema problem at once, with key paths', () => {
    const err = configError(() =>
      validateConfig({
        log: { level: 'loud' },
        listeners: [
          good({ upstream: { hots: HOST } }),
          good({ name: 'b', engine: 'oracle' }),
          good({ name: 'c', upstream: { port: 5432 } }),
          good({ name: 'bad name!' }),
        ],
      }),
    );
    const ps = err.problems;
    // The typo is named, at (or under) listeners.0.upstream.
    expect(
      ps.some((p) => /^listeners\.0\.upstream(\.hots)?$/.test(p.path) && /hots/.test(p.path + p.message)),
    ).toBe(true);
    expectProblem(ps, 'listeners.0.upstream.host', /.+/);
    expectProblem(ps, 'listeners.1.engine', /.+/);
    expectProblem(ps, 'listeners.2.upstream.host', /.+/);
    expectProblem(ps, 'listeners.3.name', 'use letters, digits, _ and -');
    expectProblem(ps, 'log.level', /.+/);
    expect(err.message).toContain('listeners.1.engine');
  });

  it('reports every cross-field problem at once, with key paths', () => {
    const err = configError(() =>
      validateConfig({
        admin: { listen: '/tmp/admin.sock' },
        listeners: [
          good({ listen: '0.0.0.0:5432' }),
          good({ name: 'b', listen: '127.0.0.1:5433', client: { auth: 'password' } }),
          good({ name: 'c', listen: '127.0.0.1:5434', auth: { mode: 'password' } }),
          good({ name: 'd', listen: '127.0.0.1:5435', upstream: { host: 'db.internal.example' } }),
          good({ name: 'b', listen: '127.0.0.1:5436' }),
          good({ name: 'f', listen: '127.0.0.1:5433' }),
          good({ name: 'g', listen: 'not a listen address' }),
        ],
      }),
    );
    const ps = err.problems;
    expectProblem(ps, 'listeners.0.listen', /not a loopback address/);
    expectProblem(ps, 'listeners.1.client.users', 'at least one user');
    expectProblem(ps, 'listeners.2.auth.password', 'auth.mode: password needs auth.password');
    expectProblem(ps, 'listeners.3.auth.region', /cannot read a region from "db\.internal\.example"/);
    expectProblem(ps, 'listeners.4.name', 'duplicate listener name "b"');
    expectProblem(ps, 'listeners.5.listen', '127.0.0.1:5433 is used by another listener');
    expectProblem(ps, 'listeners.6.listen', /is not host:port/);
    expectProblem(ps, 'admin.listen', 'must be host:port');
    expect(ps).toHaveLength(8);
  });

  it('accepts a non-loopback listen with client.auth password and users', () => {
    const cfg = validateConfig({
      listeners: [
        good({
          listen: '0.0.0.0:5432',
          client: { auth: 'password', users: [{ name: 'u', password: { env: 'U_PW' } }] },
        }),
        good({ name: 'p', listen: 5433, auth: { mode: 'password', password: { file: '/run/pw' } } }),
        good({ name: 'r', listen: 5434, upstream: { host: 'localhost' }, auth: { region: 'us-east-1' } }),
        good({ name: 'z1', listen: '127.0.0.1:0' }),
        good({ name: 'z2', listen: '127.0.0.1:0' }),
      ],
    });
    expect(cfg.listeners).toHaveLength(5);
  });

  it('requires exactly one of file/env in a secret reference', () => {
    const err = configError(() =>
      validateConfig({
        listeners: [good({ auth: { mode: 'password', password: { file: '/a', env: 'B' } } })],
      }),
    );
    expectProblem(err.problems, /^listeners\.0\.auth\.password/, 'give exactly one of file or env');
  });

  // Regression: validateConfig throws on the first schema failure before running crossChecks, so a file
  // with one typo hides every cross-field problem (ConfigError promises "every problem found").
  it('reports schema and cross-field problems together in one ConfigError', () => {
    const err = configError(() =>
      loadConfig({
        file: writeYaml({
          listeners: [
            good({ upstream: { hots: HOST } }),
            good({ name: 'b', engine: 'oracle' }),
            good({ name: 'c', upstream: {} }),
            good({ name: 'd', listen: '0.0.0.0:5432' }),
            good({ name: 'e', listen: 5440, client: { auth: 'password' } }),
            good({ name: 'f', listen: 5441, auth: { mode: 'password' } }),
            good({ name: 'g', listen: 5442, upstream: { host: 'db.internal.example' } }),
            good({ name: 'd', listen: 5443 }),
          ],
        }),
        env: {},
      }),
    );
    const ps = err.problems;
    expect(ps.some((p) => p.path.startsWith('listeners.0.upstream') && /hots/.test(p.path + p.message))).toBe(
      true,
    );
    expectProblem(ps, 'listeners.1.engine', /.+/);
    expectProblem(ps, 'listeners.2.upstream.host', /.+/);
    expectProblem(ps, 'listeners.3.listen', /not a loopback address/);
    expectProblem(ps, 'listeners.4.client.users', 'at least one user');
    expectProblem(ps, 'listeners.5.auth.password', 'auth.mode: password needs auth.password');
    expectProblem(ps, 'listeners.6.auth.region', 'cannot read a region');
    expectProblem(ps, 'listeners.7.name', 'duplicate listener name "d"');
  });
});

describe('parseListen', () => {
  it.each([
    ['127.0.0.1:5432', { kind: 'tcp', host: '127.0.0.1', port: 5432 }],
    ['[::1]:5432', { kind: 'tcp', host: '::1', port: 5432 }],
    ['[::]:6543', { kind: 'tcp', host: '::', port: 6543 }],
    ['5432', { kind: 'tcp', host: '127.0.0.1', port: 5432 }],
    [':5432', { kind: 'tcp', host: '127.0.0.1', port: 5432 }],
    ['0.0.0.0:0', { kind: 'tcp', host: '0.0.0.0', port: 0 }],
    ['localhost:65535', { kind: 'tcp', host: 'localhost', port: 65535 }],
    ['/tmp/x/.s.PGSQL.5432', { kind: 'unix', path: '/tmp/x/.s.PGSQL.5432' }],
    ['unix:/tmp/s', { kind: 'unix', path: '/tmp/s' }],
  ])('%s', (input, expected) => {
    expect(parseListen(input)).toEqual(expected);
  });

  it('takes a number as a loopback port', () => {
    expect(parseListen(5432)).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 5432 });
    expect(() => parseListen(70000)).toThrow(/out of range/);
    expect(() => parseListen(1.5)).toThrow(/out of range/);
  });

  it.each([
    'garbage',
    '',
    'host:',
    'host:port',
    '::1:5432',
    '1.2.3.4:5432:1',
    'tcp://1.2.3.4:5432',
    '-1',
    '[::1]',
  ])('rejects %j', (input) => {
    expect(() => parseListen(input)).toThrow(/is not host:port/);
  });

  it('rejects ports out of range', () => {
    expect(() => parseListen('127.0.0.1:65536')).toThrow(/port 65536 is out of range/);
    expect(() => parseListen('99999')).toThrow(/out of range/);
  });
});

describe('regionFromHost', () => {
  it.each([
    ['db.abc.us-east-1.rds.amazonaws.com', 'us-east-1'],
    ['x.cluster-ro-abc.eu-central-1.rds.amazonaws.com', 'eu-central-1'],
    ['a.b.cn-north-1.rds.amazonaws.com.cn', 'cn-north-1'],
    ['x.us-gov-west-1.rds.amazonaws.com', 'us-gov-west-1'],
    ['px.proxy-abc.ap-southeast-2.rds.amazonaws.com', 'ap-southeast-2'],
    ['db.abc.us-east-1.rds.amazonaws.com.', 'us-east-1'],
  ])('%s → %s', (host, region) => {
    expect(regionFromHost(host)).toBe(region);
  });

  it.each([
    'localhost',
    '127.0.0.1',
    'db.example.com',
    'db.abc.us-east-1.rds.amazonaws.com.evil.example',
    'us-east-1.rds.amazonaws.com',
    'db.abc.us-east-1.rds.amazonaws.co',
  ])('%s → undefined', (host) => {
    expect(regionFromHost(host)).toBeUndefined();
  });
});

describe('isLoopback', () => {
  it.each(['127.0.0.1', '127.1.2.3', '127.255.255.254', '::1', '0:0:0:0:0:0:0:1', 'localhost'])(
    '%s is loopback',
    (h) => {
      expect(isLoopback(h)).toBe(true);
    },
  );
  it.each([
    '0.0.0.0',
    '::',
    '10.0.0.1',
    '128.0.0.1',
    '1.127.0.0',
    '127.example.com',
    '::2',
    'example.com',
    '',
  ])('%s is not loopback', (h) => {
    expect(isLoopback(h)).toBe(false);
  });
});

describe('config.example.yaml', () => {
  it('exists at the repo root and validates', () => {
    const file = path.join(__dirname, '..', '..', 'config.example.yaml');
    expect(existsSync(file)).toBe(true);
    const cfg = loadConfig({ file, env: {} });
    expect(cfg.listeners.length).toBeGreaterThan(0);
  });
});
