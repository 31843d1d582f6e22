/** The admin server's routes with stub handlers, metric names, peer checks and log-format choice. */
import http from 'node:http';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { AdminServer, isLoopbackPeer, type ReadinessReport } from '../../src/admin/http';
import { metrics, registry, setClockSkew, setCredentialsExpiry } from '../../src/admin/metrics';
import { ErrorCode, ProxyError } from '../../src/errors';
import { createLogger } from '../../src/log';
import { resolveLogFormat } from '../../src/runtime';

const quietLog = createLogger({
  level: 'silent',
  format: 'json',
  destination: new Writable({ write: (_c, _e, cb) => cb() }),
});

function request(
  port: number,
  path: string,
  method = 'GET',
): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method, agent: false }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type']) }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

describe('AdminServer', () => {
  let admin: AdminServer;
  let report: ReadinessReport = { status: 'ready', listeners: [{ listener: 'app', ready: true }] };
  let quits = 0;

  beforeAll(async () => {
    admin = await AdminServer.start(
      '127.0.0.1:0',
      { readiness: async () => report, quit: () => quits++ },
      quietLog,
    );
  });
  afterAll(() => admin.close());

  test('binds loopback by default and reports its address', () => {
    expect(admin.address()).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  test('/healthz, /readyz 200 and 503 with the report as JSON', async () => {
    expect(await request(admin.port(), '/healthz')).toMatchObject({ status: 200, body: '{"status":"ok"}\n' });
    const ok = await request(admin.port(), '/readyz?verbose=1');
    expect(ok.status).toBe(200);
    expect(ok.type).toMatch(/application\/json/);
    expect(JSON.parse(ok.body)).toEqual(report);
    report = {
      status: 'not ready',
      listeners: [{ listener: 'app', ready: false, reason: 'credentials: nope' }],
    };
    const bad = await request(admin.port(), '/readyz');
    expect(bad.status).toBe(503);
    expect(JSON.parse(bad.body)).toEqual(report);
    report = { status: 'draining', listeners: [] };
    expect((await request(admin.port(), '/readyz')).status).toBe(503);
  });

  test('/metrics in the Prometheus text format', async () => {
    const m = await request(admin.port(), '/metrics');
    expect(m.status).toBe(200);
    expect(m.type).toMatch(/^text\/plain/);
    expect(m.body).toContain('# TYPE rds_iam_proxy_connections_total counter');
  });

  test('POST /quitquitquit from loopback starts the drain; other methods and paths are refused', async () => {
    expect((await request(admin.port(), '/quitquitquit', 'POST')).status).toBe(202);
    expect(quits).toBe(1);
    expect((await request(admin.port(), '/quitquitquit')).status).toBe(405);
    expect((await request(admin.port(), '/metrics', 'DELETE')).status).toBe(405);
    expect((await request(admin.port(), '/')).status).toBe(404);
  });

  test('an address in use is a clear error', async () => {
    await expect(
      AdminServer.start(
        `127.0.0.1:${admin.port()}`,
        { readiness: async () => report, quit: () => undefined },
        quietLog,
      ),
    ).rejects.toThrow(/admin server cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/);
  });
});

test('isLoopbackPeer', () => {
  for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) expect(isLoopbackPeer(a)).toBe(true);
  for (const a of ['10.0.0.1', '::ffff:10.0.0.1', 'fe80::1', '', undefined])
    expect(isLoopbackPeer(a)).toBe(false);
});

describe('metrics', () => {
  const value = async (name: string, labels: Record<string, string> = {}): Promise<number | undefined> => {
    const base = name.replace(/_(sum|count|bucket)$/, '');
    const m = await (registry.getSingleMetric(name) ?? registry.getSingleMetric(base))?.get();
    return m?.values.find(
      (v) =>
        ((v as { metricName?: string }).metricName ?? name) === name &&
        Object.entries(labels).every(([k, val]) => (v.labels as Record<string, unknown>)[k] === val),
    )?.value;
  };

  test('intent-named functions feed conventional names', async () => {
    metrics.connectionOpened('u1');
    expect(await value('rds_iam_proxy_connections_active', { listener: 'u1' })).toBe(1);
    metrics.connectionClosed('u1', 'spliced');
    expect(await value('rds_iam_proxy_connections_active', { listener: 'u1' })).toBe(0);
    expect(await value('rds_iam_proxy_connections_total', { listener: 'u1', outcome: 'spliced' })).toBe(1);
    metrics.connectionRefused('u1', 'max_connections');
    expect(
      await value('rds_iam_proxy_limit_rejections_total', { listener: 'u1', limit: 'max_connections' }),
    ).toBe(1);
    expect(await value('rds_iam_proxy_connections_total', { listener: 'u1', outcome: 'rejected' })).toBe(1);

    metrics.handshakeCompleted('u1', { downstreamMs: 2, upstreamLoginMs: 30 }, 40);
    expect(
      await value('rds_iam_proxy_handshake_duration_seconds_sum', {
        listener: 'u1',
        phase: 'upstream_login',
      }),
    ).toBeCloseTo(0.03);
    expect(
      await value('rds_iam_proxy_handshake_duration_seconds_count', { listener: 'u1', phase: 'total' }),
    ).toBe(1);
    expect(
      await value('rds_iam_proxy_handshake_duration_seconds_count', {
        listener: 'u1',
        phase: 'upstream_tls',
      }),
    ).toBeUndefined();

    const refused = new ProxyError(ErrorCode.UpstreamAuth, 'no', {
      serverError: { sqlState: '28P01', message: 'pw' },
    });
    metrics.handshakeFailed('u1', refused);
    const unreachable = new ProxyError(ErrorCode.UpstreamUnreachable, 'down', {
      cause: Object.assign(new Error('x'), { code: 'ECONNREFUSED' }),
    });
    metrics.handshakeFailed('u1', unreachable);
    metrics.handshakeFailed('u1', new ProxyError(ErrorCode.ClientProtocol, 'bad'));
    expect(
      await value('rds_iam_proxy_upstream_login_failures_total', {
        listener: 'u1',
        code: 'UPSTREAM_AUTH',
        server_code: '28P01',
      }),
    ).toBe(1);
    expect(
      await value('rds_iam_proxy_upstream_login_failures_total', {
        listener: 'u1',
        server_code: 'ECONNREFUSED',
      }),
    ).toBe(1);
    expect(
      await value('rds_iam_proxy_upstream_login_failures_total', { listener: 'u1', code: 'CLIENT_PROTOCOL' }),
    ).toBeUndefined();
    expect(
      await value('rds_iam_proxy_handshake_failures_total', { listener: 'u1', code: 'CLIENT_PROTOCOL' }),
    ).toBe(1);

    metrics.sessionClosed('u1', 'idle_timeout', { fromClient: 100, toClient: 2000 }, 1500);
    expect(await value('rds_iam_proxy_bytes_total', { listener: 'u1', direction: 'upstream' })).toBe(100);
    expect(await value('rds_iam_proxy_bytes_total', { listener: 'u1', direction: 'downstream' })).toBe(2000);
    expect(
      await value('rds_iam_proxy_sessions_closed_total', { listener: 'u1', reason: 'idle_timeout' }),
    ).toBe(1);

    const target = { host: 'db.example', port: 5432, user: 'app' };
    metrics.tokenMinted(target, 1_700_000_900_000);
    metrics.tokenMintFailed(target, true);
    expect(await value('rds_iam_proxy_token_mints_total', { endpoint: 'db.example:5432', user: 'app' })).toBe(
      1,
    );
    expect(await value('rds_iam_proxy_token_expiry_timestamp_seconds', { endpoint: 'db.example:5432' })).toBe(
      1_700_000_900,
    );
    expect(await value('rds_iam_proxy_token_mint_failures_total', { user: 'app', kind: 'refresh' })).toBe(1);

    setClockSkew(-2.5);
    expect(await value('rds_iam_proxy_clock_skew_seconds')).toBe(-2.5);
    setCredentialsExpiry(1_700_003_600_000);
    expect(await value('rds_iam_proxy_credentials_expiry_timestamp_seconds')).toBe(1_700_003_600);
    setCredentialsExpiry(undefined);
    expect(await value('rds_iam_proxy_credentials_expiry_timestamp_seconds')).toBe(0);
  });

  test('every proxy metric has the prefix and a conventional suffix; default process metrics are there', async () => {
    const all = await registry.getMetricsAsJSON();
    const ours = all.filter((m) => m.name.startsWith('rds_iam_proxy_'));
    expect(ours.length).toBeGreaterThanOrEqual(19);
    for (const m of ours) {
      if (String(m.type) === 'counter') expect(m.name).toMatch(/_total$/);
      if (String(m.type) === 'histogram') expect(m.name).toMatch(/_seconds$/);
    }
    expect(all.map((m) => m.name)).toEqual(
      expect.arrayContaining([
        'process_cpu_seconds_total',
        'process_resident_memory_bytes',
        'nodejs_eventloop_lag_seconds',
      ]),
    );
  });
});

test('resolveLogFormat: pretty only on a TTY and only with pino-pretty installed', () => {
  const have = (): string => '/x';
  const missing = (): string => {
    throw new Error('not found');
  };
  expect(resolveLogFormat('auto', false, have)).toEqual({ format: 'json', fallback: false });
  expect(resolveLogFormat('auto', true, have)).toEqual({ format: 'pretty', fallback: false });
  expect(resolveLogFormat('auto', true, missing)).toEqual({ format: 'json', fallback: false });
  expect(resolveLogFormat('pretty', false, missing)).toEqual({ format: 'json', fallback: true });
  expect(resolveLogFormat('json', true, have)).toEqual({ format: 'json', fallback: false });
});

test('the Grafana dashboard queries only metrics that exist, and shows every proxy metric', async () => {
  const dash = JSON.parse(
    readFileSync(path.resolve(__dirname, '../../docs/grafana-dashboard.json'), 'utf8'),
  ) as {
    panels: { type: string; title: string; targets?: { expr: string }[] }[];
  };
  const exprs = dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
  expect(exprs.length).toBeGreaterThan(20);
  const known = new Set((await registry.getMetricsAsJSON()).map((m) => m.name));
  const used = new Set<string>();
  for (const e of exprs) {
    for (const [name] of e.matchAll(/\b(?:rds_iam_proxy|process|nodejs)_[a-z0-9_]+/g)) {
      const base = name.replace(/_(bucket|count|sum)$/, '');
      expect({ name, known: known.has(name) || known.has(base) }).toEqual({ name, known: true });
      used.add(known.has(name) ? name : base);
    }
  }
  for (const name of known)
    if (name.startsWith('rds_iam_proxy_'))
      expect({ name, used: used.has(name) }).toEqual({ name, used: true });
});
