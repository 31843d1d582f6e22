/**
 * Runs rds-iam-proxy in-process for e2e tests, with every log line (at trace level) captured so
 * tests can assert on log content and that no secret ever appears.
 */
import { Writable } from 'node:stream';
import type { AwsCredentialIdentity } from '@aws-sdk/types';
import { startProxy, type ProxyApp } from '../../src/app';
import { validateConfig } from '../../src/config/load';
import type { ConfigInput } from '../../src/config/schema';
import { createLogger } from '../../src/log';
import { IamTokenMinter, type TokenMinter } from '../../src/credentials/tokens';
import type { Dialer } from '../../src/net/dial';
import { TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from './sign';

/** A session token long enough to push a token well over 1 KB, like real STS credentials. */
export const LONG_SESSION_TOKEN = 'IQoJb3JpZ2luX2VjE' + 'A'.repeat(1000) + '/test+session=token';

/** Static test credentials (optionally temporary, with a session token and expiry). */
export function testCredentials(
  o: { sessionToken?: string; expiration?: Date } = {},
): () => Promise<AwsCredentialIdentity> {
  return async () => ({
    accessKeyId: TEST_ACCESS_KEY_ID,
    secretAccessKey: TEST_SECRET_ACCESS_KEY,
    ...(o.sessionToken ? { sessionToken: o.sessionToken } : {}),
    ...(o.expiration ? { expiration: o.expiration } : {}),
  });
}

export interface TestProxy {
  app: ProxyApp;
  /** Raw JSON log lines, in order. */
  logs: string[];
  /** Parsed log records. */
  records(): Record<string, unknown>[];
  /** TCP port of the named listener. */
  port(name: string): number;
  close(): Promise<void>;
}

/** Starts the proxy with `cfg`; credentials default to LONG_SESSION_TOKEN temporary test keys. */
export async function startTestProxy(
  cfg: ConfigInput,
  o: {
    minter?: TokenMinter;
    env?: NodeJS.ProcessEnv;
    /** replaces tcpDialer for upstream connections */ dialer?: Dialer;
    /** use the SDK's real credential chain */ realAws?: boolean;
  } = {},
): Promise<TestProxy> {
  const logs: string[] = [];
  let partial = '';
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const text = partial + chunk.toString('utf8');
      const lines = text.split('\n');
      partial = lines.pop() ?? '';
      logs.push(...lines.filter((l) => l.length > 0));
      cb();
    },
  });
  const config = validateConfig({ log: { level: 'trace', format: 'json' }, ...cfg });
  const log = createLogger({ level: config.log.level, format: 'json', destination });
  const minter = o.realAws
    ? undefined
    : (o.minter ?? new IamTokenMinter(testCredentials({ sessionToken: LONG_SESSION_TOKEN })));
  const app = await startProxy(config, {
    log,
    ...(minter ? { minter } : {}),
    ...(o.env ? { env: o.env } : {}),
    ...(o.dialer ? { dialer: o.dialer } : {}),
  });
  return {
    app,
    logs,
    records: () => logs.map((l) => JSON.parse(l) as Record<string, unknown>),
    port(name) {
      const l = app.listeners.find((x) => x.name === name);
      if (!l) throw new Error(`no listener ${name}`);
      return l.port();
    },
    close: () => app.close(),
  };
}
