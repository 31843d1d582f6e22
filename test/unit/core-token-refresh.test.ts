/**
 * Background refresh: once a key is used, the cache re-mints it on a timer before expiry, so a
 * login never waits on STS or IMDS; failures back off while the valid token keeps serving.
 */
import { TokenCache, type Token, type TokenMinter, type TokenRequest } from '../../src/credentials/tokens';
import { ProxyError, ErrorCode } from '../../src/errors';

const REQ: TokenRequest = {
  host: 'db.x.us-east-1.rds.amazonaws.com',
  port: 5432,
  user: 'alice',
  region: 'us-east-1',
};

function harness(lifetimeMs: number) {
  let now = 1_700_000_000_000;
  const clock = { now: () => now };
  const timers: { fn: () => void; at: number; live: boolean }[] = [];
  const fakeTimers = {
    set: (fn: () => void, ms: number) => {
      const t = { fn, at: now + ms, live: true };
      timers.push(t);
      return t;
    },
    clear: (h: unknown) => void ((h as { live: boolean }).live = false),
  };
  let n = 0;
  let failNext = 0;
  const minter: TokenMinter = {
    async mint(): Promise<Token> {
      if (failNext > 0) {
        failNext--;
        throw new ProxyError(ErrorCode.Credentials, 'STS unreachable');
      }
      n++;
      return { value: `token-${n}`, expiresAt: now + lifetimeMs };
    },
  };
  const cache = new TokenCache(minter, clock, { timers: fakeTimers });
  /** Advances the clock to the next live timer and fires it. */
  const fireNext = async (): Promise<number> => {
    const t = timers.filter((x) => x.live).sort((a, b) => a.at - b.at)[0];
    if (!t) throw new Error('no timer scheduled');
    t.live = false;
    now = Math.max(now, t.at);
    t.fn();
    await new Promise((r) => setImmediate(r));
    return t.at;
  };
  return {
    cache,
    fireNext,
    mints: () => n,
    failNext: (k: number) => (failNext = k),
    now: () => now,
    setNow: (t: number) => (now = t),
  };
}

test('credentials expiring in 2 minutes: the background re-mint happens before the token would be refused', async () => {
  const h = harness(120_000); // token capped at the credentials' 2-minute expiry
  const start = h.now();
  expect(await h.cache.getToken(REQ)).toBe('token-1');
  const firedAt = await h.fireNext();
  // refreshAhead (300 s) exceeds the lifetime, so the refresh falls halfway to (expiry - margin),
  // before the token would stop being handed out — and not at once, which would loop.
  expect(firedAt).toBe(start + 30_000);
  expect(h.mints()).toBe(2);
  expect(await h.cache.getToken(REQ)).toBe('token-2');
  expect(h.mints()).toBe(2); // the login did not wait for a mint, nor start another
  expect(await h.fireNext()).toBe(firedAt + 30_000); // the next refresh is again half a life later
});

test('15-minute tokens are refreshed 5 minutes (minus jitter) before expiry, without a caller', async () => {
  const h = harness(900_000);
  const start = h.now();
  await h.cache.getToken(REQ);
  const firedAt = await h.fireNext();
  expect(firedAt).toBeGreaterThanOrEqual(start + 600_000 - 30_000);
  expect(firedAt).toBeLessThanOrEqual(start + 600_000);
  expect(h.mints()).toBe(2);
});

test('a failed background refresh backs off and retries while the valid token keeps serving', async () => {
  const h = harness(900_000);
  await h.cache.getToken(REQ);
  h.failNext(2);
  const t0 = await h.fireNext(); // scheduled refresh: fails (1)
  expect(await h.cache.getToken(REQ)).toBe('token-1'); // still valid; this caller's retry fails too (2)
  await new Promise((r) => setImmediate(r));
  const t1 = await h.fireNext(); // backoff retry: succeeds
  expect(t1 - t0).toBe(4000); // 1 s * 2^failures
  expect(h.mints()).toBe(2);
  expect(await h.cache.getToken(REQ)).toBe('token-2');
  expect(h.cache.lastError(REQ)).toBeUndefined();
});

test('lastError reports a failure only once no valid token is left', async () => {
  const h = harness(900_000);
  await h.cache.getToken(REQ);
  h.failNext(100);
  await h.fireNext();
  expect(h.cache.lastError(REQ)).toBeUndefined(); // the cached token is still valid
  h.setNow(h.now() + 900_000);
  await expect(h.cache.getToken(REQ)).rejects.toThrow('STS unreachable');
  expect(h.cache.lastError(REQ)?.code).toBe(ErrorCode.Credentials);
});
