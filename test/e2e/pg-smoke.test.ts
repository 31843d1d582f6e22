import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { startTestProxy, type TestProxy } from '../harness/proxy';

const exec = promisify(execFile);
let db: RdsLikePg;
let proxy: TestProxy;

beforeAll(async () => {
  db = await startRdsLikePostgres();
  proxy = await startTestProxy({
    listeners: [
      {
        name: 'app',
        engine: 'postgres',
        listen: '127.0.0.1:0',
        upstream: { host: db.host, port: db.port, address: db.address, tls: { ca: db.caFile } },
        auth: { mode: 'iam', region: db.region },
        client: { tls: 'auto', auth: 'trust' },
      },
    ],
  });
});
afterAll(async () => {
  await proxy?.close();
  await db?.stop();
});

test('psql through the proxy', async () => {
  const { stdout } = await exec('psql', ['-At', '-h', '127.0.0.1', '-p', String(proxy.port('app')), '-U', 'alice', '-d', 'appdb', '-c', 'select current_user'], { env: { ...process.env, PGSSLMODE: 'disable' } });
  console.log(stdout, proxy.logs.join('\n'), db.verifier.entries);
  expect(stdout.trim()).toBe('alice');
});
