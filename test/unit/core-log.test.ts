import os from 'node:os';
import { Writable } from 'node:stream';
import { version as packageVersion } from '../../package.json';
import { Signer } from '@aws-sdk/rds-signer';
import { createLogger, lazyChild, scrubSecrets } from '../../src/log';
import { credentialsError } from '../../src/credentials/tokens';
import { ErrorCode, ProxyError } from '../../src/errors';

const HOST = 'db.abc123.us-east-1.rds.amazonaws.com';
const PASSWORD = 'hunter2-Sup3rS3cret!';

let TOKEN: string;
beforeAll(async () => {
  TOKEN = await new Signer({
    hostname: HOST,
    port: 5432,
    username: 'alice',
    region: 'us-east-1',
    credentials: {
      accessKeyId: 'AKIDEXAMPLE',
      secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
      sessionToken: 'IQoJb3JpZ2luX2VjEXAMPLESESSION/+=',
    },
  }).getAuthToken();
});

/** The parts of a token that would let someone log in. */
function tokenSecrets(token: string): string[] {
  const q = new URLSearchParams(token.slice(token.indexOf('?') + 1));
  return [
    token,
    q.get('X-Amz-Signature') as string,
    q.get('X-Amz-Security-Token') as string,
    encodeURIComponent(q.get('X-Amz-Security-Token') as string),
  ];
}

function collector(): { stream: Writable; text: () => string; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  const text = (): string => chunks.join('');
  return {
    stream,
    text,
    lines: () =>
      text()
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

describe('scrubSecrets', () => {
  it('removes an IAM auth token from a sentence, keeping the words around it', () => {
    const out = scrubSecrets(`login refused with password ${TOKEN} for user alice`);
    expect(out).toBe('login refused with password [REDACTED] for user alice');
    for (const s of tokenSecrets(TOKEN)) expect(out).not.toContain(s);
  });

  it('removes a token in quotes and at the start or end of the text', () => {
    expect(scrubSecrets(`"${TOKEN}"`)).toBe('"[REDACTED]"');
    expect(scrubSecrets(`password '${TOKEN}' rejected`)).toBe("password '[REDACTED]' rejected");
    expect(scrubSecrets(TOKEN)).toBe('[REDACTED]');
  });

  it('removes several tokens and bare X-Amz-Signature / Security-Token / Credential parameters', () => {
    const text =
      `a ${TOKEN} b ${TOKEN}\nurl https://sts.amazonaws.com/x?X-Amz-Signature=abcdef0123&X-Amz-Security-Token=SESSION%2Fxyz` +
      '&X-Amz-Credential=AKID%2F20240101 done';
    const out = scrubSecrets(text);
    for (const s of [...tokenSecrets(TOKEN), 'abcdef0123', 'SESSION%2Fxyz', 'AKID%2F20240101']) {
      expect(out).not.toContain(s);
    }
    expect(out.startsWith('a [REDACTED] b [REDACTED]\nurl ')).toBe(true);
    expect(out.endsWith(' done')).toBe(true);
  });

  it('leaves ordinary text alone', () => {
    const text = 'connect ECONNREFUSED 10.0.0.5:5432 (host db.abc.us-east-1.rds.amazonaws.com)';
    expect(scrubSecrets(text)).toBe(text);
  });
});

describe('createLogger redaction', () => {
  function logAll(log: ReturnType<typeof createLogger>): void {
    log.info({ password: PASSWORD }, 'top-level password');
    log.info({ token: TOKEN }, 'top-level token');
    log.info({ x: { password: PASSWORD } }, 'nested password');
    log.info({ x: { token: TOKEN } }, 'nested token');
    log.info({ a: { b: { password: PASSWORD, token: TOKEN } } }, 'two levels down');
    log.info({ secret: PASSWORD, sessionToken: 'IQoJb3JpZ2luX2VjEXAMPLESESSION/+=' }, 'aws-ish');
    log.info({ creds: { secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' } }, 'sdk object');
    log.error({ err: new Error(`password authentication failed: ${TOKEN}`) }, 'err.message');
    log.error({ err: new Error(`upstream refused ${TOKEN}`) }, 'with a message');
    log.warn({ pid: 1, err: `cancel failed: ${TOKEN}` }, 'err as a string');
    log.error({ err: new Error('wrapped', { cause: new Error(`inner ${TOKEN}`) }) }, 'cause chain');
    log.error({ err: credentialsError(new Error(`STS said no to ${TOKEN}`)) }, 'credentials');
    log.error(
      {
        err: new ProxyError(ErrorCode.UpstreamAuth, `PAM authentication failed for ${TOKEN}`, {
          serverError: { message: 'PAM authentication failed', sqlState: '28000' },
        }),
      },
      'proxy error',
    );
    log.child({ listener: 'app' }).warn({ token: TOKEN, x: { password: PASSWORD } }, 'child logger');
  }

  it('never writes a token or password placed at redacted paths or in err.message', () => {
    const out = collector();
    const log = createLogger({ level: 'trace', format: 'json', destination: out.stream });
    logAll(log);
    const text = out.text();
    const lines = out.lines();
    expect(lines).toHaveLength(14);
    for (const s of [
      PASSWORD,
      ...tokenSecrets(TOKEN),
      'IQoJb3JpZ2luX2VjEXAMPLESESSION',
      'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
    ]) {
      expect(text).not.toContain(s);
    }
    expect(text).toContain('[REDACTED]');
  });

  it('keeps the structure and the harmless parts of what was logged', () => {
    const out = collector();
    const log = createLogger({ level: 'info', format: 'json', destination: out.stream });
    logAll(log);
    const lines = out.lines();
    const byMsg = (m: string): Record<string, unknown> => {
      const l = lines.find((x) => x['msg'] === m);
      if (!l) throw new Error(`no line ${m}`);
      return l;
    };
    expect(byMsg('top-level password')['password']).toBe('[REDACTED]');
    expect(byMsg('top-level token')['token']).toBe('[REDACTED]');
    expect(byMsg('nested password')['x']).toEqual({ password: '[REDACTED]' });
    expect(byMsg('two levels down')['a']).toEqual({ b: { password: '[REDACTED]', token: '[REDACTED]' } });
    const err = byMsg('err.message')['err'] as Record<string, unknown>;
    expect(err['message']).toBe('password authentication failed: [REDACTED]');
    expect(err['type']).toBe('Error');
    expect(String(err['stack'])).toContain('[REDACTED]');
    const cred = (lines.find((l) => l['msg'] === 'credentials')?.['err'] ?? {}) as Record<string, unknown>;
    expect(cred['code']).toBe(ErrorCode.Credentials);
    expect(String(cred['message'])).toContain('STS said no to [REDACTED]');
    const child = byMsg('child logger');
    expect(child['listener']).toBe('app');
    expect(child['level']).toBe('warn');
    expect(typeof child['time']).toBe('string');
    expect(child['pid']).toBe(process.pid);
  });

  it('names the level and carries service, version and hostname on every line, children included', () => {
    const out = collector();
    const log = createLogger({ level: 'trace', format: 'json', destination: out.stream, version: '9.8.7' });
    log.trace('t');
    log.debug('d');
    log.info('i');
    log.child({ listener: 'app' }).warn('w');
    log.error(new Error('e'));
    log.fatal('f');
    const lines = out.lines();
    expect(lines.map((l) => l['level'])).toEqual(['trace', 'debug', 'info', 'warn', 'error', 'fatal']);
    for (const l of lines) {
      expect(l).toMatchObject({ service: 'rds-iam-proxy', version: '9.8.7', hostname: os.hostname() });
    }
    const dflt = collector();
    createLogger({ level: 'info', format: 'json', destination: dflt.stream }).info('x');
    expect(dflt.lines()[0]?.['version']).toBe(packageVersion);
  });

  // Regression: with no message argument pino copies err.message into `msg` unscrubbed (only `err` is).
  it('scrubs a token from an Error logged without a message (log.error(err), log.error({ err }))', () => {
    const out = collector();
    const log = createLogger({ level: 'info', format: 'json', destination: out.stream });
    log.error(new Error(`upstream refused ${TOKEN}`));
    log.error({ err: new Error(`upstream refused ${TOKEN}`) });
    const text = out.text();
    expect(out.lines()).toHaveLength(2);
    for (const s of tokenSecrets(TOKEN)) expect(text).not.toContain(s);
  });

  // Regression: the err serializer only scrubs `instanceof Error`; an error-like object (a library's plain
  // {name, message} rejection, or an Error from another realm) passes through with its message intact.
  it('scrubs err.message of an error-like object that is not an Error instance', () => {
    const out = collector();
    const log = createLogger({ level: 'info', format: 'json', destination: out.stream });
    log.error({ err: { name: 'CredentialsProviderError', message: `STS refused ${TOKEN}` } }, 'error-like');
    const text = out.text();
    expect(text).toContain('STS refused');
    for (const s of tokenSecrets(TOKEN)) expect(text).not.toContain(s);
  });

  it('honours the level', () => {
    const out = collector();
    const log = createLogger({ level: 'warn', format: 'json', destination: out.stream });
    log.info({ a: 1 }, 'hidden');
    log.warn({ a: 2 }, 'shown');
    expect(out.lines().map((l) => l['msg'])).toEqual(['shown']);
  });
});

describe("lazyChild (a connection's logger)", () => {
  it('makes no child and computes no bindings while nothing is logged at an enabled level', () => {
    const out = collector();
    const log = createLogger({ level: 'warn', format: 'json', destination: out.stream });
    let computed = 0;
    const conn = lazyChild(log, () => {
      computed++;
      return { connId: 7 };
    });
    conn.info('accepted');
    conn.debug({ a: 1 }, 'detail');
    conn.setBindings({ user: 'alice' });
    expect(computed).toBe(0);
    expect(out.text()).toBe('');
  });

  it('logs with its bindings and late bindings, once made, like a pino child', () => {
    const out = collector();
    const log = createLogger({ level: 'info', format: 'json', destination: out.stream });
    let computed = 0;
    const conn = lazyChild(log, () => {
      computed++;
      return { connId: 7, listener: 'app' };
    });
    conn.setBindings({ user: 'alice' });
    conn.info({ ms: 1 }, 'logged in');
    conn.setBindings({ database: 'appdb' });
    conn.warn(new Error(`refused ${TOKEN}`));
    expect(computed).toBe(1);
    const [first, second] = out.lines();
    expect(first).toMatchObject({ connId: 7, listener: 'app', user: 'alice', ms: 1, msg: 'logged in' });
    expect(second).toMatchObject({ connId: 7, user: 'alice', database: 'appdb', level: 'warn' });
    for (const s of tokenSecrets(TOKEN)) expect(out.text()).not.toContain(s);
  });
});
