import type { AwsCredentialIdentity } from '@aws-sdk/types';
import { ErrorCode, ProxyError } from '../../src/errors';
import {
  IamTokenMinter,
  StaticPasswordSource,
  TOKEN_LIFETIME_MS,
  type Token,
  TokenCache,
  type TokenMinter,
  type TokenRequest,
} from '../../src/credentials/tokens';

const T0 = 1_700_000_000_000;
const REQ: TokenRequest = {
  host: 'db.abc.us-east-1.rds.amazonaws.com',
  port: 5432,
  user: 'alice',
  region: 'us-east-1',
};
const SECRET_ACCESS_KEY = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETzz';
const SESSION_TOKEN = 'IQoJb3JpZ2luX2VjSESSIONzzTOKEN/+=';

class FakeClock {
  constructor(public t = T0) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

/** Timers that never fire on their own (background refreshes stay out of the way). */
function inertTimers() {
  const scheduled: { fn: () => void; ms: number }[] = [];
  return {
    scheduled,
    set: (fn: () => void, ms: number): unknown => scheduled.push({ fn, ms }),
    clear: (): void => undefined,
  };
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}
function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * Counts mints. By default each mint resolves at once with a token living `lifetimeMs` from the
 * clock's now; `next` queues manual outcomes instead.
 */
class FakeMinter implements TokenMinter {
  calls: { req: TokenRequest; opts: { forceRefresh?: boolean } | undefined }[] = [];
  pending: Deferred<Token>[] = [];
  manual = false;
  failWith: unknown;
  constructor(
    private readonly clock: FakeClock,
    public lifetimeMs = TOKEN_LIFETIME_MS,
  ) {}
  get count(): number {
    return this.calls.length;
  }
  mint(req: TokenRequest, opts?: { forceRefresh?: boolean }): Promise<Token> {
    this.calls.push({ req, opts });
    const n = this.calls.length;
    if (this.failWith !== undefined) {
      const e = this.failWith;
      this.failWith = undefined;
      return Promise.reject(e);
    }
    if (this.manual) {
      const d = deferred<Token>();
      this.pending.push(d);
      return d.promise;
    }
    return Promise.resolve({
      value: `tok-${n}-${req.host}-${req.port}-${req.user}-${req.region}`,
      expiresAt: this.clock.now() + this.lifetimeMs,
    });
  }
}

function setup(opts: { marginMs?: number; refreshAheadMs?: number } = {}) {
  const clock = new FakeClock();
  const minter = new FakeMinter(clock);
  const timers = inertTimers();
  const cache = new TokenCache(minter, clock, { jitterMs: 0, ...opts, timers });
  return { clock, minter, cache, timers };
}

const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('TokenCache', () => {
  it('reuses a token within its lifetime', async () => {
    const { clock, minter, cache } = setup();
    const a = await cache.getToken(REQ);
    clock.advance(5 * 60_000);
    const b = await cache.getToken(REQ);
    clock.advance(4 * 60_000 + 59_999); // just before the refresh-ahead window (900 - 300 s)
    const c = await cache.getToken(REQ);
    expect(new Set([a, b, c]).size).toBe(1);
    expect(minter.count).toBe(1);
    expect(cache.expiresAt(REQ)).toBe(T0 + TOKEN_LIFETIME_MS);
  });

  it('does not hand out a token within the margin (default 60 s) of its expiry', async () => {
    const { clock, minter, cache } = setup({ refreshAheadMs: 0 });
    const first = await cache.getToken(REQ);
    clock.t = T0 + TOKEN_LIFETIME_MS - 60_001;
    expect(await cache.getToken(REQ)).toBe(first);
    expect(minter.count).toBe(1);
    clock.t = T0 + TOKEN_LIFETIME_MS - 60_000;
    const second = await cache.getToken(REQ);
    expect(second).not.toBe(first);
    expect(minter.count).toBe(2);
    expect(cache.expiresAt(REQ)).toBe(clock.t + TOKEN_LIFETIME_MS);
  });

  it('honours a custom margin', async () => {
    const { clock, minter, cache } = setup({ marginMs: 5_000, refreshAheadMs: 0 });
    await cache.getToken(REQ);
    clock.t = T0 + TOKEN_LIFETIME_MS - 5_001;
    await cache.getToken(REQ);
    expect(minter.count).toBe(1);
    clock.t = T0 + TOKEN_LIFETIME_MS - 5_000;
    await cache.getToken(REQ);
    expect(minter.count).toBe(2);
  });

  it('re-mints a token that expired long ago', async () => {
    const { clock, minter, cache } = setup();
    await cache.getToken(REQ);
    clock.advance(3 * TOKEN_LIFETIME_MS);
    await cache.getToken(REQ);
    expect(minter.count).toBe(2);
  });

  it('refresh-ahead: serves the cached token immediately and starts one background mint', async () => {
    const { clock, minter, cache } = setup();
    const first = await cache.getToken(REQ);
    minter.manual = true;
    clock.t = T0 + TOKEN_LIFETIME_MS - 300_000; // default refresh-ahead is 300 s before expiry
    // The background mint never settles here, yet the caller is answered.
    expect(await cache.getToken(REQ)).toBe(first);
    expect(minter.count).toBe(2);
    // Later callers keep getting the valid token and do not start more mints.
    clock.advance(60_000);
    expect(await cache.getToken(REQ)).toBe(first);
    expect(await cache.getToken(REQ)).toBe(first);
    expect(minter.count).toBe(2);
    // When the background mint lands, its token is served.
    minter.pending[0]?.resolve({ value: 'fresh', expiresAt: clock.now() + TOKEN_LIFETIME_MS });
    await flush();
    expect(await cache.getToken(REQ)).toBe('fresh');
    expect(minter.count).toBe(2);
  });

  it('refresh-ahead: a failed background mint keeps the old token serving and the next caller retries', async () => {
    const { clock, minter, cache } = setup();
    const first = await cache.getToken(REQ);
    clock.t = T0 + TOKEN_LIFETIME_MS - 200_000;
    minter.failWith = new ProxyError(ErrorCode.Credentials, 'sts unreachable');
    expect(await cache.getToken(REQ)).toBe(first);
    await flush();
    expect(minter.count).toBe(2);
    expect(await cache.getToken(REQ)).toBe(first); // retried in the background, succeeded
    expect(minter.count).toBe(3);
    await flush();
    expect(await cache.getToken(REQ)).not.toBe(first);
  });

  it('refresh-ahead window before the margin when both are custom', async () => {
    const { clock, minter, cache } = setup({ marginMs: 10_000, refreshAheadMs: 20_000 });
    const first = await cache.getToken(REQ);
    clock.t = T0 + TOKEN_LIFETIME_MS - 20_001;
    expect(await cache.getToken(REQ)).toBe(first);
    expect(minter.count).toBe(1);
    clock.t = T0 + TOKEN_LIFETIME_MS - 20_000;
    expect(await cache.getToken(REQ)).toBe(first);
    expect(minter.count).toBe(2);
  });

  it('concurrent callers share one mint (single flight)', async () => {
    const { minter, cache } = setup();
    minter.manual = true;
    const all = Array.from({ length: 20 }, () => cache.getToken(REQ));
    await flush();
    expect(minter.count).toBe(1);
    minter.pending[0]?.resolve({ value: 'shared', expiresAt: T0 + TOKEN_LIFETIME_MS });
    expect(await Promise.all(all)).toEqual(Array(20).fill('shared'));
    expect(minter.count).toBe(1);
  });

  it('a failing mint rejects every waiter; the next call retries', async () => {
    const { minter, cache } = setup();
    minter.manual = true;
    const waiters = [cache.getToken(REQ), cache.getToken(REQ), cache.getToken(REQ)].map((p) =>
      p.then(
        () => 'resolved',
        (e: unknown) => e,
      ),
    );
    const boom = new ProxyError(ErrorCode.Credentials, 'no credentials');
    minter.pending[0]?.reject(boom);
    for (const w of waiters) expect(await w).toBe(boom);
    expect(minter.count).toBe(1);
    minter.manual = false;
    await expect(cache.getToken(REQ)).resolves.toMatch(/^tok-2-/);
    expect(minter.count).toBe(2);
  });

  it('a mint that throws something other than ProxyError still rejects with a CREDENTIALS ProxyError', async () => {
    const { minter, cache } = setup();
    minter.failWith = new Error('socket hang up');
    const err = await cache.getToken(REQ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxyError);
    expect((err as ProxyError).code).toBe(ErrorCode.Credentials);
    expect((err as ProxyError).message).toContain('socket hang up');
  });

  it('invalidate() forces a new mint (and asks the minter to refresh credentials)', async () => {
    const { minter, cache } = setup();
    const first = await cache.getToken(REQ);
    cache.invalidate(REQ);
    expect(cache.expiresAt(REQ)).toBeUndefined();
    const second = await cache.getToken(REQ);
    expect(second).not.toBe(first);
    expect(minter.count).toBe(2);
    expect(minter.calls[1]?.opts?.forceRefresh).toBe(true);
    // Invalidating an unknown key is harmless.
    expect(() => cache.invalidate({ ...REQ, user: 'nobody' })).not.toThrow();
    await cache.getToken(REQ);
    expect(minter.count).toBe(2);
  });

  it('keys tokens by (host, port, user, region)', async () => {
    const { minter, cache } = setup();
    const reqs: TokenRequest[] = [
      REQ,
      { ...REQ, host: 'other.abc.us-east-1.rds.amazonaws.com' },
      { ...REQ, port: 5433 },
      { ...REQ, user: 'bob' },
      { ...REQ, region: 'us-west-2' },
    ];
    const tokens = await Promise.all(reqs.map((r) => cache.getToken(r)));
    expect(new Set(tokens).size).toBe(5);
    expect(minter.count).toBe(5);
    expect(minter.calls.map((c) => c.req)).toEqual(reqs);
    // Each key is then cached on its own; invalidating one leaves the others.
    cache.invalidate(reqs[3] as TokenRequest);
    const again = await Promise.all(reqs.map((r) => cache.getToken({ ...r })));
    expect(minter.count).toBe(6);
    expect(again.filter((t, i) => t === tokens[i])).toHaveLength(4);
  });

  it('keys do not collide when fields contain separators', async () => {
    const { minter, cache } = setup();
    await cache.getToken({ host: 'a', port: 1, user: 'b:c', region: 'r' });
    await cache.getToken({ host: 'a:1', port: 1, user: 'b', region: 'c:r' });
    expect(minter.count).toBe(2);
  });
});

describe('IamTokenMinter', () => {
  const creds = (over: Partial<AwsCredentialIdentity> = {}): AwsCredentialIdentity => ({
    accessKeyId: 'AKIDEXAMPLE',
    secretAccessKey: SECRET_ACCESS_KEY,
    ...over,
  });

  it('signs a token for host:port and the user, carrying the session token', async () => {
    const clock = new FakeClock();
    const minter = new IamTokenMinter(async () => creds({ sessionToken: SESSION_TOKEN }), clock);
    const t = await minter.mint(REQ);
    expect(t.value.startsWith(`${REQ.host}:${REQ.port}/?Action=connect&DBUser=alice`)).toBe(true);
    const q = new URLSearchParams(t.value.slice(t.value.indexOf('?') + 1));
    expect(q.get('X-Amz-Security-Token')).toBe(SESSION_TOKEN);
    expect(q.get('X-Amz-Credential')).toMatch(/^AKIDEXAMPLE\/\d{8}\/us-east-1\/rds-db\/aws4_request$/);
    expect(q.get('X-Amz-Expires')).toBe('900');
    expect(q.get('X-Amz-Signature')).toMatch(/^[0-9a-f]{64}$/);
    expect(t.value).not.toContain(SECRET_ACCESS_KEY);
    expect(t.value).not.toContain(encodeURIComponent(SECRET_ACCESS_KEY));
    expect(t.expiresAt).toBe(T0 + TOKEN_LIFETIME_MS);
  });

  it('omits X-Amz-Security-Token for long-term keys and escapes the user', async () => {
    const minter = new IamTokenMinter(async () => creds(), new FakeClock());
    const t = await minter.mint({ ...REQ, user: 'app user&x=1' });
    expect(t.value).not.toContain('X-Amz-Security-Token');
    const q = new URLSearchParams(t.value.slice(t.value.indexOf('?') + 1));
    expect(q.get('DBUser')).toBe('app user&x=1');
    expect(q.get('Action')).toBe('connect');
  });

  it('a token dies with credentials expiring in 2 minutes', async () => {
    const clock = new FakeClock();
    const minter = new IamTokenMinter(
      async () => creds({ expiration: new Date(clock.now() + 120_000) }),
      clock,
    );
    expect((await minter.mint(REQ)).expiresAt).toBe(T0 + 120_000);
    const late = new IamTokenMinter(
      async () => creds({ expiration: new Date(clock.now() + 3_600_000) }),
      clock,
    );
    expect((await late.mint(REQ)).expiresAt).toBe(T0 + TOKEN_LIFETIME_MS);
  });

  it('in a TokenCache, short-lived credentials cause a re-mint after (expiry - margin)', async () => {
    const clock = new FakeClock();
    let provided = 0;
    const minter = new IamTokenMinter(async () => {
      provided++;
      return creds({ sessionToken: `session-${provided}`, expiration: new Date(clock.now() + 120_000) });
    }, clock);
    const cache = new TokenCache(minter, clock, { timers: inertTimers() });
    const a = await cache.getToken(REQ);
    expect(cache.expiresAt(REQ)).toBe(T0 + 120_000);
    clock.advance(59_999); // still more than the 60 s margin left (inside refresh-ahead: background mint)
    expect(await cache.getToken(REQ)).toBe(a);
    await flush();
    expect(provided).toBe(2);
    clock.t = T0 + 60_000 + 120_000; // the refreshed token is now within its margin too
    const c = await cache.getToken(REQ);
    expect(c).toContain('session-3');
    expect(provided).toBe(3);
  });

  it('a provider that throws yields a CREDENTIALS ProxyError naming the cause without secrets', async () => {
    const leakedUrl =
      'https://sts.amazonaws.com/?Action=AssumeRoleWithWebIdentity&X-Amz-Security-Token=' +
      `${encodeURIComponent(SESSION_TOKEN)}&X-Amz-Signature=deadbeefcafe`;
    const providerError = new Error(
      `Could not load credentials from any providers: request to ${leakedUrl} failed`,
    );
    providerError.name = 'CredentialsProviderError';
    const minter = new IamTokenMinter(async () => {
      throw providerError;
    }, new FakeClock());
    const err = await minter.mint(REQ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxyError);
    const pe = err as ProxyError;
    expect(pe.code).toBe(ErrorCode.Credentials);
    expect(pe.message).toContain('Could not load credentials from any providers');
    for (const secret of [
      SESSION_TOKEN,
      encodeURIComponent(SESSION_TOKEN),
      'deadbeefcafe',
      'X-Amz-Signature=',
    ]) {
      expect(pe.message).not.toContain(secret);
      expect(pe.hint ?? '').not.toContain(secret);
    }
    expect(pe.hint).toMatch(/doctor/);
    expect(pe.cause).toBe(providerError);
  });

  it('a provider that rejects with a non-Error still yields CREDENTIALS', async () => {
    const minter = new IamTokenMinter(() => Promise.reject('plain string failure'), new FakeClock());
    const err = await minter.mint(REQ).catch((e: unknown) => e);
    expect((err as ProxyError).code).toBe(ErrorCode.Credentials);
    expect((err as ProxyError).message).toContain('plain string failure');
  });

  it('TokenCache passes a provider failure through as CREDENTIALS and retries next time', async () => {
    const clock = new FakeClock();
    let fail = true;
    const minter = new IamTokenMinter(async () => {
      if (fail) throw new Error('IMDS timed out');
      return creds();
    }, clock);
    const cache = new TokenCache(minter, clock, { timers: inertTimers() });
    const err = await cache.getToken(REQ).catch((e: unknown) => e);
    expect((err as ProxyError).code).toBe(ErrorCode.Credentials);
    expect((err as ProxyError).message).toContain('IMDS timed out');
    fail = false;
    expect(await cache.getToken(REQ)).toMatch(
      /^db\.abc\.us-east-1\.rds\.amazonaws\.com:5432\/\?Action=connect&DBUser=/,
    );
  });
});

describe('StaticPasswordSource', () => {
  it('re-reads the password on every login (rotation without restart)', async () => {
    let pw = 'first';
    let reads = 0;
    const src = new StaticPasswordSource(() => {
      reads++;
      return pw;
    });
    expect(await src.getToken()).toBe('first');
    pw = 'rotated';
    expect(await src.getToken()).toBe('rotated');
    expect(reads).toBe(2);
    expect(() => src.invalidate()).not.toThrow();
    expect(await src.getToken()).toBe('rotated');
  });

  it('maps a read failure to CREDENTIALS', async () => {
    const cause = new Error('environment variable DB_PW is not set or empty');
    const src = new StaticPasswordSource(() => {
      throw cause;
    });
    const err = await src.getToken().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxyError);
    expect((err as ProxyError).code).toBe(ErrorCode.Credentials);
    expect((err as ProxyError).message).toContain('DB_PW is not set');
    expect((err as ProxyError).cause).toBe(cause);
  });
});
