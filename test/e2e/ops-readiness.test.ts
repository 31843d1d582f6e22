/**
 * Readiness that reaches the database (issue 11): with readiness.checkDatabase, /readyz logs in
 * to the RDS-like server for real, shares one check among concurrent probes, and turns 503 with
 * the listener and the failure once the server is gone. The start-up line of the built CLI
 * never says "ready" without credentials: it says what is not ready.
 */
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { LONG_SESSION_TOKEN, testCredentials } from '../harness/proxy';
import { startCli } from '../harness/cliproc';
import { freePort, waitFor } from '../harness/util';
import { validateConfig } from '../../src/config/load';
import { createLogger } from '../../src/log';
import { IamTokenMinter } from '../../src/credentials/tokens';
import { Runtime } from '../../src/runtime';

function get(port: number | undefined, p: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(`http://127.0.0.1:${port}${p}`, { agent: false }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

describe('readiness.checkDatabase', () => {
  let db: RdsLikePg;
  let rt: Runtime;

  beforeAll(async () => {
    db = await startRdsLikePostgres();
    rt = new Runtime({
      config: validateConfig({
        log: { level: 'silent', format: 'json' },
        admin: { listen: '127.0.0.1:0' },
        readiness: { checkDatabase: true, intervalSeconds: 1 },
        listeners: [
          {
            name: 'app',
            engine: 'postgres',
            listen: '127.0.0.1:0',
            upstream: {
              host: db.host,
              port: db.port,
              address: db.address,
              user: 'alice',
              database: 'appdb',
              tls: { ca: db.caFile },
            },
            client: { tls: 'off' },
          },
        ],
      }),
      log: createLogger({ level: 'silent', format: 'json' }),
      version: '0.0.0-test',
      deps: { minter: new IamTokenMinter(testCredentials({ sessionToken: LONG_SESSION_TOKEN })) },
    });
    await rt.start();
  }, 60_000);

  afterAll(async () => {
    rt?.shutdown('SIGINT');
    await rt?.done;
    await db?.stop();
  });

  test('200 after a real login; concurrent probes share one check; 503 naming the listener once the server stops', async () => {
    const admin = rt.adminServer?.port();
    const ok = await get(admin, '/readyz');
    expect(ok.status).toBe(200);
    // The server's token verifier saw the check's login.
    expect(db.verifier.entries.some((e) => e.user === 'alice' && e.ok)).toBe(true);

    await new Promise((r) => setTimeout(r, 1100)); // past intervalSeconds: the next probe checks again
    const before = db.verifier.entries.length;
    const burst = await Promise.all(Array.from({ length: 8 }, () => get(admin, '/readyz')));
    expect(burst.map((r) => r.status)).toEqual(Array(8).fill(200));
    expect(db.verifier.entries.length - before).toBe(1);

    await db.stop();
    await waitFor(async () => (await get(admin, '/readyz')).status === 503, 10_000, '/readyz to turn 503');
    const body = JSON.parse((await get(admin, '/readyz')).body) as {
      status: string;
      listeners: { listener: string; ready: boolean; reason?: string }[];
    };
    expect(body.status).toBe('not ready');
    expect(body.listeners).toEqual([
      {
        listener: 'app',
        ready: false,
        reason: expect.stringMatching(/^database: cannot connect to upstream/),
      },
    ]);
  });
});

test('the CLI without AWS credentials logs "listening; not ready" with the reason, never "ready"', async () => {
  const home = mkdtempSync(path.join(os.tmpdir(), 'rdsiam-nocreds-'));
  const port = await freePort();
  const proc = startCli(
    [
      'run',
      'postgres://alice@db.example.invalid:5432/appdb',
      '--port',
      String(port),
      '--region',
      'us-east-1',
      '--admin',
      '127.0.0.1:0',
    ],
    {
      HOME: home,
      AWS_ACCESS_KEY_ID: '',
      AWS_SECRET_ACCESS_KEY: '',
      AWS_SESSION_TOKEN: '',
      AWS_PROFILE: '',
      AWS_CONFIG_FILE: path.join(home, 'none'),
      AWS_SHARED_CREDENTIALS_FILE: path.join(home, 'none'),
      AWS_WEB_IDENTITY_TOKEN_FILE: '',
      AWS_CONTAINER_CREDENTIALS_FULL_URI: '',
      AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: '',
      AWS_EC2_METADATA_DISABLED: 'true',
    },
  );
  try {
    const line = JSON.parse(await proc.waitForLine(/listening; not ready/, 30_000)) as Record<
      string,
      unknown
    >;
    expect(line).toMatchObject({
      level: 'warn',
      msg: 'listening; not ready',
      listeners: [{ name: expect.any(String), address: `127.0.0.1:${port}` }],
      notReady: [{ listener: expect.any(String), reason: expect.stringMatching(/^credentials: /) }],
    });
    expect(proc.stdout()).not.toMatch(/rds-iam-proxy ready/);
  } finally {
    proc.child.kill('SIGTERM');
    await proc.exited;
    rmSync(home, { recursive: true, force: true });
  }
});
