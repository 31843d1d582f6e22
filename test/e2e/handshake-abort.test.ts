/**
 * Every handshake ends, whatever stops it: a stalled upstream (it accepts TCP and answers the
 * encryption request, then never answers the TLS ClientHello) meets the handshake deadline or a
 * shutdown, in both engines. The client gets the error for the real reason (timeout 08006 / 1159,
 * shutdown 57P01 / 1053), the log line and the failure metric name that reason, and the slot
 * and the active-connections gauge are released, so the next client fits in maxConnections: 1
 * and a SIGTERM exits at once.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import mysql from 'mysql2/promise';
import { startTestProxy, type TestProxy } from '../harness/proxy';
import { startCli } from '../harness/cliproc';
import { waitFor } from '../harness/util';
import { registry } from '../../src/admin/metrics';
import { fakeServer, mysqlGreetingPacket } from '../harness/fakeupstream';

const ENDPOINT = 'stalled.cluster-abc.us-east-1.rds.amazonaws.com';

/** A server that takes the encryption request, then never answers the ClientHello. */
async function stalledServer(engine: 'postgres' | 'mysql'): Promise<{
  port: number;
  /** Connections that went on to the TLS handshake (bytes after the encryption step). */
  hellos(): number;
  close(): Promise<void>;
}> {
  let hellos = 0;
  const server = await fakeServer((s) => {
    let stage = 0;
    if (engine === 'mysql') s.write(mysqlGreetingPacket('8.0.36-stalled'));
    s.on('data', (d: Buffer) => {
      // Postgres: the 8-byte SSLRequest gets 'S'. MySQL: the SSLRequest packet needs no answer.
      if (stage === 0 && engine === 'postgres') s.write('S');
      if (stage > 0 || (engine === 'mysql' && d.length > 36) || d[0] === 0x16) hellos++;
      stage++;
    });
  });
  return { ...server, hellos: () => hellos };
}

async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const m = await registry.getSingleMetric(name)?.get();
  const v = m?.values.find((x) => Object.entries(labels).every(([k, want]) => x.labels[k] === want));
  return v?.value ?? 0;
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'handshake-abort-'));
const caFile = path.join(tmp, 'any-ca.pem');
writeFileSync(caFile, '');
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function listener(name: string, engine: 'postgres' | 'mysql', port: number, handshakeTimeoutMs: number) {
  return {
    name,
    engine,
    listen: '127.0.0.1:0',
    handshakeTimeoutMs,
    maxConnections: 1,
    client: { tls: 'off' as const },
    upstream: { host: ENDPOINT, address: '127.0.0.1', port, tls: { ca: 'rds' } },
    auth: { region: 'us-east-1' },
  };
}

/** Connects and returns the error the client library reports. */
async function connectError(
  engine: 'postgres' | 'mysql',
  port: number,
): Promise<{ code?: unknown; errno?: unknown; message: string }> {
  try {
    if (engine === 'postgres') {
      const c = new Client({ host: '127.0.0.1', port, user: 'alice', database: 'app', ssl: false });
      c.on('error', () => undefined);
      await c.connect();
      await c.end();
    } else {
      const c = await mysql.createConnection({ host: '127.0.0.1', port, user: 'alice', database: 'app' });
      await c.end();
    }
  } catch (err) {
    return err as { code?: unknown; errno?: unknown; message: string };
  }
  throw new Error('connected to a stalled upstream');
}

describe.each(['postgres', 'mysql'] as const)('%s: a stalled upstream TLS handshake', (engine) => {
  let stalled: Awaited<ReturnType<typeof stalledServer>>;
  let proxy: TestProxy;

  beforeEach(async () => {
    stalled = await stalledServer(engine);
  });
  afterEach(async () => {
    await proxy?.close();
    await stalled.close();
  });

  it('ends at the handshake deadline: timeout error, slot and gauge released, the next client fits', async () => {
    const name = `stall_timeout_${engine}`;
    proxy = await startTestProxy({ listeners: [listener(name, engine, stalled.port, 600)] });
    const port = proxy.port(name);
    for (let i = 0; i < 2; i++) {
      const err = await connectError(engine, port);
      if (engine === 'postgres') expect(err.code).toBe('08006');
      else expect(err.errno).toBe(1159);
      expect(err.message).toContain('handshake not completed within 600 ms');
      await waitFor(
        async () => (await metric('rds_iam_proxy_connections_active', { listener: name })) === 0,
        5000,
        'the active gauge to return to 0',
      );
    }
    expect(stalled.hellos()).toBeGreaterThanOrEqual(2); // both reached the TLS handshake
    expect(proxy.app.connections()).toBe(0);
    expect(await metric('rds_iam_proxy_limit_rejections_total', { listener: name })).toBe(0);
    expect(
      await metric('rds_iam_proxy_handshake_failures_total', { listener: name, code: 'HANDSHAKE_TIMEOUT' }),
    ).toBe(2);
  });

  it('a shutdown during the TLS handshake is reported as shutdown, not as a timeout', async () => {
    const name = `stall_shutdown_${engine}`;
    proxy = await startTestProxy({ listeners: [listener(name, engine, stalled.port, 30_000)] });
    const pending = connectError(engine, proxy.port(name));
    await waitFor(async () => stalled.hellos() >= 1, 5000, 'the proxy to start TLS upstream');
    proxy.app.closeAll();
    const err = await pending;
    if (engine === 'postgres') expect(err.code).toBe('57P01');
    else expect(err.errno).toBe(1053);
    await waitFor(async () => proxy.app.connections() === 0, 5000, 'the session to be released');
    const failed = proxy.records().find((r) => r['msg'] === 'handshake failed');
    expect(failed?.['err']).toMatchObject({ code: 'SHUTDOWN' });
    expect(await metric('rds_iam_proxy_handshake_failures_total', { listener: name, code: 'SHUTDOWN' })).toBe(
      1,
    );
    expect(
      await metric('rds_iam_proxy_handshake_failures_total', { listener: name, code: 'HANDSHAKE_TIMEOUT' }),
    ).toBe(0);
  });
});

it('SIGTERM exits at once after handshakes that hit their deadline (no session left behind)', async () => {
  const stalled = await stalledServer('postgres');
  const cfg = path.join(tmp, 'stalled.yaml');
  writeFileSync(
    cfg,
    JSON.stringify({
      admin: { listen: '127.0.0.1:0' },
      shutdown: { minDelayMs: 0, maxDelayMs: 600_000 },
      listeners: [{ ...listener('stalled', 'postgres', stalled.port, 500), listen: '127.0.0.1:0' }],
    }),
  );
  const proc = startCli(['run', '--config', cfg], {
    AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE',
    AWS_SECRET_ACCESS_KEY: 'x',
  });
  try {
    const line = await proc.waitForLine(/"msg":"listening"/);
    const port = Number(/127\.0\.0\.1:(\d+)/.exec(line)?.[1]);
    const err = await connectError('postgres', port);
    expect(err.code).toBe('08006');
    proc.child.kill('SIGTERM');
    // With maxDelayMs at 10 minutes, a leaked session would hold the exit far past jest's timeout.
    expect(await proc.exited).toBe(0);
  } finally {
    proc.child.kill('SIGKILL');
    await stalled.close();
  }
});
