/**
 * The one-line start: database URLs and their flags become a config layer between the
 * environment and --set (src/config/url.ts), validated by the same schema as a config file.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { ConfigError, loadConfig, NO_LISTENERS, type LoadOptions } from '../../src/config/load';
import { Listener } from '../../src/config/schema';
import { hostLabel, redactUrl, urlLayer, type UrlFlags } from '../../src/config/url';

const PG = 'mydb.abc123.us-east-1.rds.amazonaws.com';
const MY = 'aurora.cluster-xyz.eu-west-1.rds.amazonaws.com';

let dir: string;
beforeAll(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'config-url-'))));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function load(urls: string[], flags: UrlFlags = {}, more: Omit<LoadOptions, 'layers'> = {}) {
  return loadConfig({ env: {}, ...more, layers: [urlLayer(urls, flags)] });
}

function problems(fn: () => unknown): { path: string; message: string }[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('a database URL becomes a listener', () => {
  test('postgres://USER@HOST:PORT/DB: engine, upstream user, database, port; region from the host', () => {
    const cfg = load([`postgres://app_iam@${PG}:5433/app`], { port: 15432 });
    expect(cfg.listeners).toHaveLength(1);
    const l = cfg.listeners[0] as Listener;
    expect(l).toMatchObject({
      name: 'mydb',
      engine: 'postgres',
      listen: '127.0.0.1:15432',
      upstream: { host: PG, port: 5433, user: 'app_iam', database: 'app', tls: { ca: 'rds' } },
      auth: { mode: 'iam', region: 'us-east-1' },
      client: { tls: 'auto', auth: 'trust' },
    });
  });

  test('user and database are optional; mysql:// and mariadb:// are the mysql engine', () => {
    const cfg = load([`mysql://${MY}`, `mariadb://u@${MY}/shop`, `postgresql://${PG}`]);
    expect(cfg.listeners.map((l) => [l.name, l.engine, l.upstream.user, l.upstream.database])).toEqual([
      ['aurora', 'mysql', undefined, undefined],
      ['aurora-2', 'mysql', 'u', 'shop'],
      ['mydb', 'postgres', undefined, undefined],
    ]);
  });

  test('percent-encoded user and database names are decoded', () => {
    const l = load([`postgres://app%40corp@${PG}/my%20db`]).listeners[0];
    expect(l?.upstream).toMatchObject({ user: 'app@corp', database: 'my db' });
  });

  test('ports count up from --port in URL order, or from each engine default without it', () => {
    const urls = [`postgres://${PG}`, `mysql://${MY}`, `postgres://${PG}`, `mysql://${MY}`];
    expect(load(urls, { port: 6000 }).listeners.map((l) => l.listen)).toEqual([
      '127.0.0.1:6000',
      '127.0.0.1:6001',
      '127.0.0.1:6002',
      '127.0.0.1:6003',
    ]);
    expect(load(urls).listeners.map((l) => l.listen)).toEqual([
      '127.0.0.1:5432',
      '127.0.0.1:3306',
      '127.0.0.1:5433',
      '127.0.0.1:3307',
    ]);
  });

  test('--address binds another loopback host (IPv6 in brackets); ?port and ?address pin one listener', () => {
    const cfg = load([`postgres://${PG}`, `postgres://${PG}?port=7000&address=127.0.0.2`], {
      address: '::1',
      port: 6000,
    });
    expect(cfg.listeners.map((l) => l.listen)).toEqual(['[::1]:6000', '127.0.0.2:7000']);
  });

  test('--unix-socket DIR: DIR/.s.PGSQL.PORT for Postgres (libpq host=DIR port=PORT), DIR/NAME.sock for MySQL', () => {
    const cfg = load(
      [`postgres://${PG}`, `postgres://${PG}`, `mysql://${MY}`, `postgres://${PG}?address=127.0.0.1`],
      {
        unixSocket: '/run/rip/',
      },
    );
    expect(cfg.listeners.map((l) => l.listen)).toEqual([
      '/run/rip/.s.PGSQL.5432',
      '/run/rip/.s.PGSQL.5433',
      '/run/rip/aurora.sock',
      '127.0.0.1:5434',
    ]);
    const one = load([`mysql://${MY}?unix-socket=/var/run/db&name=orders`]).listeners[0];
    expect(one?.listen).toBe('/var/run/db/orders.sock');
  });

  test('?dial is upstream.address (the host stays what TLS and the token name), ?ca and --ca the upstream CA', () => {
    const cfg = load([`postgres://${PG}?dial=127.0.0.1:15999&ca=/etc/ca.pem`, `mysql://${MY}`], {
      ca: '/etc/other.pem',
    });
    expect(cfg.listeners[0]?.upstream).toMatchObject({
      host: PG,
      address: '127.0.0.1:15999',
      tls: { ca: '/etc/ca.pem' },
    });
    expect(cfg.listeners[1]?.upstream.tls.ca).toBe('/etc/other.pem');
  });

  test('--region and ?region set the signing region (a host without one needs it); --region also sets aws.region', () => {
    const cfg = load(['postgres://10.0.0.5/app', 'postgres://db.internal?region=eu-west-1'], {
      region: 'us-west-2',
    });
    expect(cfg.listeners.map((l) => l.auth.region)).toEqual(['us-west-2', 'eu-west-1']);
    expect(cfg.aws.region).toBe('us-west-2');
    const ps = problems(() => load(['postgres://db.internal']));
    expect(ps).toEqual([
      { path: 'listeners.0.auth.region', message: expect.stringMatching(/set auth.region/) },
    ]);
  });

  test('--client-tls, --admin and --quiet', () => {
    const cfg = load([`postgres://${PG}?client-tls=auto`, `mysql://${MY}`], {
      clientTls: 'off',
      admin: '127.0.0.1:9191',
      quiet: true,
    });
    expect(cfg.listeners.map((l) => l.client.tls)).toEqual(['auto', 'off']);
    expect(cfg.admin.listen).toBe('127.0.0.1:9191');
    expect(cfg.log.level).toBe('warn');
  });
});

describe('names', () => {
  test('the first label of the host; an IP address gives db; unique against the file and each other', () => {
    expect(hostLabel(PG)).toBe('mydb');
    expect(hostLabel('10.1.2.3')).toBe('db');
    expect(hostLabel('::1')).toBe('db');
    expect(hostLabel('my_db.x')).toBe('my_db');
    const file = path.join(dir, 'one.yaml');
    writeFileSync(
      file,
      `listeners:\n  - { name: mydb, engine: postgres, listen: 6432, upstream: { host: ${PG} } }\n`,
    );
    const cfg = load(
      [`postgres://${PG}`, `postgres://${PG}`, 'postgres://10.0.0.1?region=us-east-1'],
      { port: 7000 },
      { file },
    );
    expect(cfg.listeners.map((l) => l.name)).toEqual(['mydb', 'mydb-2', 'mydb-3', 'db']);
  });

  test('any number of URLs for any host gives valid, unique names', () => {
    fc.assert(
      fc.property(fc.array(fc.domain(), { minLength: 1, maxLength: 6 }), (hosts) => {
        const cfg = load(
          hosts.map((h) => `postgres://${h}?region=us-east-1`),
          { port: 20000 },
        );
        const names = cfg.listeners.map((l) => l.name);
        expect(new Set(names).size).toBe(hosts.length);
        expect(cfg.listeners.map((l) => l.upstream.host)).toEqual(
          hosts.map((h) => new URL(`postgres://${h}`).hostname),
        );
      }),
    );
  });
});

describe('precedence: file < env < URLs and flags < --set', () => {
  test('flags override the file and env; --set overrides a URL listener by its name', () => {
    const file = path.join(dir, 'prec.yaml');
    writeFileSync(file, 'admin: { listen: 127.0.0.1:9001 }\nlog: { level: debug }\n');
    const env = { RDS_IAM_PROXY__ADMIN__LISTEN: '127.0.0.1:9002' };
    const base = load([`postgres://${PG}`], {}, { file, env });
    expect(base.admin.listen).toBe('127.0.0.1:9002'); // env over file
    expect(base.log.level).toBe('debug');
    const flagged = load([`postgres://${PG}`], { admin: '127.0.0.1:9003', quiet: true }, { file, env });
    expect(flagged.admin.listen).toBe('127.0.0.1:9003'); // flag over env
    expect(flagged.log.level).toBe('warn');
    const set = load(
      [`postgres://${PG}`],
      { port: 15432 },
      { file, env, sets: ['listeners.mydb.listen=127.0.0.1:16000'] },
    );
    expect(set.listeners[0]?.listen).toBe('127.0.0.1:16000');
  });
});

describe('problems are reported together, and name what to do', () => {
  test('a password, an unknown scheme, an unknown option and a bad port', () => {
    const ps = problems(() =>
      load([
        'postgres://app:hunter2@db.x/app',
        'ftp://db.x',
        `mysql://${MY}?sslmode=require`,
        `postgres://${PG}?port=99999`,
      ]),
    );
    expect(ps).toEqual([
      { path: 'URL 1', message: expect.stringMatching(/carries a password.*IAM tokens/) },
      { path: 'URL 2', message: expect.stringMatching(/unknown scheme "ftp:".*postgres:\/\//) },
      { path: 'URL 3.sslmode', message: expect.stringMatching(/unknown URL option; known: name, port/) },
      { path: 'URL 4.port', message: '"99999" is not a port number' },
    ]);
    expect(JSON.stringify(ps)).not.toContain('hunter2');
    expect(redactUrl('postgres://app:hunter2@db.x/app')).toBe('postgres://app:[REDACTED]@db.x/app');
  });

  test('listener flags without a URL say how to change a config-file listener instead', () => {
    const file = path.join(dir, 'flags.yaml');
    writeFileSync(
      file,
      `listeners:\n  - { name: app, engine: postgres, listen: 6432, upstream: { host: ${PG} } }\n`,
    );
    const ps = problems(() => load([], { port: 1, unixSocket: '/x', ca: 'rds' }, { file }));
    expect(ps.map((p) => p.path)).toEqual(['--port', '--unix-socket', '--ca']);
    expect(ps[0]?.message).toMatch(/--set listeners\.NAME/);
  });

  test('no listeners at all: how to give one, instead of a schema message', () => {
    for (const opts of [{}, { file: path.join(dir, 'empty.yaml') }]) {
      writeFileSync(path.join(dir, 'empty.yaml'), 'listeners: []\nlog: { level: info }\n');
      const ps = problems(() => load([], {}, opts));
      expect(ps).toEqual([{ path: 'listeners', message: NO_LISTENERS }]);
    }
    expect(NO_LISTENERS).toMatch(/postgres:\/\//);
    expect(NO_LISTENERS).toMatch(/--config/);
    expect(NO_LISTENERS).toMatch(/RDS_IAM_PROXY_CONFIG/);
  });
});
