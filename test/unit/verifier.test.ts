import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Signer } from '@aws-sdk/rds-signer';
import fc from 'fast-check';
import {
  signToken,
  TEST_ACCESS_KEY_ID,
  TEST_KEYS,
  TEST_SECRET_ACCESS_KEY,
  type SignTokenOptions,
} from '../harness/sign';
import { startVerifier, verifyToken } from '../harness/verifier';

const HOST = 'testdb.cluster-abc123xyz.us-east-1.rds.amazonaws.com';
const PORT = 5432;
const REGION = 'us-east-1';
const OPTS = { endpoint: `${HOST}:${PORT}`, region: REGION, keys: { ...TEST_KEYS } };
/** Shaped like an STS session token, long enough to push the token past 1 KB. */
const SESSION_TOKEN = `IQoJb3JpZ2luX2VjE${'A1b2+C3d/E4f='.repeat(70)}`;
const base: SignTokenOptions = {
  host: HOST,
  port: PORT,
  user: 'alice',
  region: REGION,
  accessKeyId: TEST_ACCESS_KEY_ID,
  secretAccessKey: TEST_SECRET_ACCESS_KEY,
};

function rdsSigner(
  o: { user?: string; sessionToken?: string; host?: string; port?: number } = {},
): Promise<string> {
  return new Signer({
    hostname: o.host ?? HOST,
    port: o.port ?? PORT,
    username: o.user ?? 'alice',
    region: REGION,
    credentials: {
      accessKeyId: TEST_ACCESS_KEY_ID,
      secretAccessKey: TEST_SECRET_ACCESS_KEY,
      ...(o.sessionToken !== undefined ? { sessionToken: o.sessionToken } : {}),
    },
  }).getAuthToken();
}

/** Runs `fn` with only Date frozen at `at`, so rds-signer signs at a known time and promises still run. */
async function atFixedDate<T>(at: Date, fn: () => Promise<T>): Promise<T> {
  jest.useFakeTimers({
    now: at,
    doNotFake: [
      'nextTick',
      'queueMicrotask',
      'setImmediate',
      'clearImmediate',
      'setTimeout',
      'clearTimeout',
      'setInterval',
      'clearInterval',
      'hrtime',
      'performance',
    ],
  });
  try {
    return await fn();
  } finally {
    jest.useRealTimers();
  }
}

describe('signToken', () => {
  const at = new Date('2026-03-04T05:06:07.890Z');

  it.each([
    ['static credentials', {}],
    ['a session token', { sessionToken: SESSION_TOKEN }],
    ['a user needing escapes', { user: "o'brien+test (ü)*!@corp" }],
  ])(
    'matches @aws-sdk/rds-signer byte for byte with %s',
    async (_name, extra: { user?: string; sessionToken?: string }) => {
      const expected = await atFixedDate(at, () => rdsSigner(extra));
      expect(signToken({ ...base, ...extra, date: at })).toBe(expected);
    },
  );

  it('has the documented structure', () => {
    const token = signToken({ ...base, date: at, sessionToken: 'S' });
    expect(token).toMatch(
      new RegExp(
        `^${HOST.replace(/\./g, '\\.')}:5432/\\?Action=connect&DBUser=alice&X-Amz-Algorithm=AWS4-HMAC-SHA256` +
          `&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20260304%2Fus-east-1%2Frds-db%2Faws4_request` +
          `&X-Amz-Date=20260304T050607Z&X-Amz-Expires=900&X-Amz-Security-Token=S` +
          `&X-Amz-Signature=[0-9a-f]{64}&X-Amz-SignedHeaders=host$`,
      ),
    );
  });
});

describe('verifyToken', () => {
  it('accepts rds-signer tokens with static credentials', async () => {
    expect(verifyToken(await rdsSigner(), 'alice', OPTS)).toEqual({ ok: true, reason: 'ok' });
  });

  it('accepts rds-signer tokens with a session token (> 1 KB)', async () => {
    const token = await rdsSigner({ sessionToken: SESSION_TOKEN });
    expect(token.length).toBeGreaterThan(1024);
    expect(verifyToken(token, 'alice', OPTS)).toEqual({ ok: true, reason: 'ok' });
  });

  it('accepts sign.ts tokens for any user name and session token', () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 1, unit: 'grapheme' }),
        fc.option(fc.string({ minLength: 1 })),
        (user, st) => {
          const token = signToken({ ...base, user, ...(st !== null ? { sessionToken: st } : {}) });
          expect(verifyToken(token, user, OPTS)).toEqual({ ok: true, reason: 'ok' });
        },
      ),
    );
  });

  const now = Date.UTC(2026, 2, 4, 5, 6, 7);
  const at = (offsetSeconds: number): Date => new Date(now + offsetSeconds * 1000);
  const verifyAt = (token: string, user = 'alice', extra = {}) =>
    verifyToken(token, user, { ...OPTS, now: () => now, ...extra });

  it('accepts a token up to X-Amz-Expires old and slightly from the future', () => {
    expect(verifyAt(signToken({ ...base, date: at(-900) })).ok).toBe(true);
    expect(verifyAt(signToken({ ...base, date: at(-60), expiresIn: 61 })).ok).toBe(true);
    expect(verifyAt(signToken({ ...base, date: at(59) })).ok).toBe(true);
  });

  it.each<[string, () => string, string | undefined, RegExp]>([
    ['expired', () => signToken({ ...base, date: at(-901) }), undefined, /^expired 901 s/],
    [
      'expired by a short X-Amz-Expires',
      () => signToken({ ...base, date: at(-61), expiresIn: 60 }),
      undefined,
      /^expired/,
    ],
    ['signed in the future', () => signToken({ ...base, date: at(120) }), undefined, /future/],
    [
      'X-Amz-Expires above 900',
      () => signToken({ ...base, date: at(0), expiresIn: 901 }),
      undefined,
      /X-Amz-Expires 901/,
    ],
    [
      'a wrong host',
      () => signToken({ ...base, date: at(0), host: 'other.example.com' }),
      undefined,
      /signed for other\.example\.com:5432/,
    ],
    [
      'a wrong port',
      () => signToken({ ...base, date: at(0), port: 5433 }),
      undefined,
      /signed for .*:5433, expected/,
    ],
    [
      'a wrong user',
      () => signToken({ ...base, date: at(0), user: 'mallory' }),
      'alice',
      /DBUser mallory does not match login user alice/,
    ],
    [
      'a wrong region',
      () => signToken({ ...base, date: at(0), region: 'eu-west-1' }),
      undefined,
      /region eu-west-1, expected us-east-1/,
    ],
    [
      'a wrong service',
      () => signToken({ ...base, date: at(0), service: 'dsql' }),
      undefined,
      /service dsql/,
    ],
    [
      'a wrong action',
      () => signToken({ ...base, date: at(0), action: 'DbConnect' }),
      undefined,
      /action DbConnect/,
    ],
    [
      'an unknown key id',
      () => signToken({ ...base, date: at(0), accessKeyId: 'AKIAOTHERKEY00000000' }),
      undefined,
      /unknown access key id AKIAOTHERKEY/,
    ],
    [
      'a wrong secret',
      () => signToken({ ...base, date: at(0), secretAccessKey: 'not-the-secret' }),
      undefined,
      /^signature mismatch$/,
    ],
    [
      'a tampered signature',
      () =>
        signToken({ ...base, date: at(0) }).replace(
          /Signature=(.)/,
          (_m, c: string) => `Signature=${c === 'a' ? 'b' : 'a'}`,
        ),
      undefined,
      /^signature mismatch$/,
    ],
    [
      'a user changed after signing',
      () => signToken({ ...base, date: at(0), user: 'mallory' }).replace('DBUser=mallory', 'DBUser=alice'),
      undefined,
      /^signature mismatch$/,
    ],
    [
      'a session token dropped after signing',
      () => signToken({ ...base, date: at(0), sessionToken: 'S' }).replace('&X-Amz-Security-Token=S', ''),
      undefined,
      /^signature mismatch$/,
    ],
    [
      'a duplicated parameter',
      () => `${signToken({ ...base, date: at(0) })}&DBUser=alice`,
      undefined,
      /duplicate DBUser/,
    ],
    [
      'a missing parameter',
      () => signToken({ ...base, date: at(0) }).replace(/&X-Amz-Expires=900/, ''),
      undefined,
      /missing X-Amz-Expires/,
    ],
    ['no token at all', () => 'hunter2', undefined, /malformed/],
  ])('rejects %s', (_name, make, user, reason) => {
    const verdict = verifyAt(make(), user);
    expect(verdict.ok).toBe(false);
    expect(verdict.reason).toMatch(reason);
  });

  it('rejects a real rds-signer token for another endpoint or user', async () => {
    expect(verifyToken(await rdsSigner({ port: 3306 }), 'alice', OPTS).reason).toMatch(/signed for .*:3306/);
    expect(verifyToken(await rdsSigner({ user: 'bob' }), 'alice', OPTS).reason).toMatch(/DBUser bob/);
  });
});

describe('startVerifier', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'verifier-test-'));
  });
  afterEach(() => fs.rm(dir, { recursive: true, force: true }));

  /** Speaks the pam_rdsiam.c protocol: user NUL token, half-close, read the reply to EOF. */
  function ask(socketPath: string, user: string, token: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = net.connect(socketPath);
      let reply = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => (reply += d));
      s.on('end', () => resolve(reply));
      s.on('error', reject);
      s.end(Buffer.concat([Buffer.from(`${user}\0`), Buffer.from(token)]));
    });
  }

  it('answers over the socket and logs reasons, never tokens', async () => {
    const v = await startVerifier({ ...OPTS, socketPath: path.join(dir, 'v.sock') });
    try {
      expect((await fs.stat(v.socketPath)).mode & 0o777).toBe(0o777);
      expect((await fs.stat(dir)).mode & 0o011).toBe(0o011);
      const good = signToken({ ...base, sessionToken: 'x'.repeat(8000) });
      const bad = signToken({ ...base, user: 'mallory' });
      expect(await ask(v.socketPath, 'alice', good)).toBe('OK\n');
      expect(await ask(v.socketPath, 'alice', bad)).toBe(
        'DENY DBUser mallory does not match login user alice\n',
      );
      expect(await ask(v.socketPath, 'alice', '')).toMatch(/^DENY malformed/);
      expect(v.entries).toHaveLength(3);
      expect(v.entries[0]).toEqual({
        at: expect.any(Number),
        user: 'alice',
        ok: true,
        reason: 'ok',
        tokenLength: good.length,
        tokenSha256: createHash('sha256').update(good).digest('hex'),
      });
      expect(v.entries[1]).toMatchObject({
        ok: false,
        reason: 'DBUser mallory does not match login user alice',
      });
      expect(JSON.stringify(v.entries)).not.toContain('X-Amz-Signature');
    } finally {
      await v.close();
    }
    await expect(fs.stat(v.socketPath)).rejects.toThrow();
  });

  it('replaces a stale socket file left by a crashed run', async () => {
    const socketPath = path.join(dir, 'v.sock');
    await fs.writeFile(socketPath, 'stale');
    const v = await startVerifier({ ...OPTS, socketPath });
    try {
      expect(await ask(socketPath, 'alice', signToken(base))).toBe('OK\n');
    } finally {
      await v.close();
    }
  });
});
