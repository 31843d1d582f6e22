/**
 * The engine-independent warm-session pool (src/proxy/prewarm.ts) with a fake backend: maximum
 * age, the life check, one client per session, bounded learned keys, backoff, stale profiles.
 */
import pino from 'pino';
import {
  PrewarmPool,
  type PrewarmBackend,
  type PrewarmSettings,
  REFILL_AFTER_HANDOUT_MS,
} from '../../src/proxy/prewarm';
import type { PrewarmObserver } from '../../src/proxy/observer';

interface Fake {
  id: number;
  user: string;
  profile: string;
  dead: boolean;
  closed: boolean;
  onDeath?: () => void;
}

/** A backend whose logins succeed at once unless `failing` names the user. */
function fakeBackend() {
  const opened: Fake[] = [];
  const failing = new Set<string>();
  let next = 1;
  const backend: PrewarmBackend<Fake, string> = {
    open: (key) =>
      failing.has(key.user)
        ? Promise.reject(new Error(`login refused for ${key.user}`))
        : Promise.resolve(
            (() => {
              const f: Fake = {
                id: next++,
                user: key.user,
                profile: key.profile,
                dead: false,
                closed: false,
              };
              opened.push(f);
              return f;
            })(),
          ),
    watch: (s, onDeath) => {
      s.onDeath = onDeath;
      return () => delete s.onDeath;
    },
    alive: (s) => !s.dead && !s.closed,
    close: (s) => void (s.closed = true),
  };
  return { backend, opened, failing };
}

function recorder() {
  const discards: string[] = [];
  const misses: string[] = [];
  /** The ready counts the gauge would read at a scrape, while the pool is registered. */
  const gauge: { read?: (() => Map<string, number>) | undefined } = {};
  const observer: PrewarmObserver = {
    prewarmPool: (_l, ready) => {
      gauge.read = ready;
      return () => (gauge.read = undefined);
    },
    prewarmHandedOut: () => undefined,
    prewarmMissed: (_l, _k, reason) => void misses.push(reason),
    prewarmDiscarded: (_l, _k, reason) => void discards.push(reason),
    prewarmLoginFailed: () => undefined,
  };
  return { observer, discards, misses, gauge };
}

const settings = (o: Partial<PrewarmSettings> = {}): PrewarmSettings => ({
  size: 2,
  keys: [{ user: 'alice', database: 'appdb' }],
  learn: 0,
  maxAgeSeconds: 60,
  ...o,
});

function pool(s: PrewarmSettings) {
  const b = fakeBackend();
  const r = recorder();
  const p = new PrewarmPool<Fake, string>({
    listener: 'l',
    settings: s,
    backend: b.backend,
    observer: r.observer,
    log: pino({ level: 'silent' }),
    defaultDatabase: (u) => u,
    initialProfile: 'p0',
  });
  return { p, ...b, ...r };
}

/** Lets the pool's promise chains (refills) run. */
const settle = async (): Promise<void> => {
  for (let i = 0; i < 10; i++) await Promise.resolve();
};

/** Lets the refills a hand-out or a learn scheduled start and run. */
const afterHandOut = async (): Promise<void> => {
  jest.advanceTimersByTime(REFILL_AFTER_HANDOUT_MS);
  await settle();
};

const any = (): { ok: true } => ({ ok: true });

beforeEach(() => jest.useFakeTimers());
afterEach(() => jest.useRealTimers());

test('fills each key to size; a session goes to one client only and is replaced', async () => {
  const { p, opened } = pool(settings());
  p.start();
  await settle();
  expect(p.readyCount('alice', 'appdb')).toBe(2);
  const a = p.take('alice', 'appdb', any);
  const b = p.take('alice', 'appdb', any);
  expect(a?.session.id).not.toBe(b?.session.id);
  expect(p.take('bob', 'bob', any)).toBeUndefined();
  await afterHandOut();
  expect(p.readyCount('alice', 'appdb')).toBe(2);
  expect(opened).toHaveLength(4);
  const handed = new Set([a?.session.id, b?.session.id]);
  const c = p.take('alice', 'appdb', any);
  expect(handed.has(c?.session.id)).toBe(false);
  p.close();
});

test('the replacement of a handed-out session starts only after the hand-out (REFILL_AFTER_HANDOUT_MS)', async () => {
  const { p, opened } = pool(settings({ size: 1 }));
  p.start();
  await settle();
  expect(p.take('alice', 'appdb', any)?.session).toBe(opened[0]);
  await settle();
  jest.advanceTimersByTime(REFILL_AFTER_HANDOUT_MS - 1);
  await settle();
  expect(opened).toHaveLength(1);
  jest.advanceTimersByTime(1);
  await settle();
  expect(opened).toHaveLength(2);
  expect(p.readyCount('alice', 'appdb')).toBe(1);
  p.close();
});

test('a session the server closed is never handed out; one that died idle is replaced', async () => {
  const { p, opened, discards } = pool(settings({ size: 1 }));
  p.start();
  await settle();
  const first = opened[0] as Fake;
  first.dead = true; // found dead at hand-out (no event seen)
  expect(p.take('alice', 'appdb', any)).toBeUndefined();
  expect(discards).toEqual(['dead']);
  await settle();
  const second = opened[1] as Fake;
  second.onDeath?.(); // the server sent something or closed it while idle
  expect(discards).toEqual(['dead', 'closed']);
  expect(second.closed).toBe(true);
  await settle();
  expect(p.take('alice', 'appdb', any)?.session).toBe(opened[2]);
  p.close();
});

test('a session unused for maxAgeSeconds is closed and replaced', async () => {
  const { p, opened, discards } = pool(settings({ size: 1, maxAgeSeconds: 5 }));
  p.start();
  await settle();
  jest.advanceTimersByTime(4_999);
  expect(discards).toEqual([]);
  jest.advanceTimersByTime(1);
  expect(discards).toEqual(['max_age']);
  expect(opened[0]?.closed).toBe(true);
  await settle();
  expect(p.take('alice', 'appdb', any)?.session).toBe(opened[1]);
  p.close();
});

test('a fit that misses leaves the session ready and counts the reason', async () => {
  const { p, misses } = pool(settings({ size: 1 }));
  p.start();
  await settle();
  expect(p.take('alice', 'appdb', () => ({ miss: 'startup' as const }))).toBeUndefined();
  expect(misses).toEqual(['startup']);
  expect(p.readyCount('alice', 'appdb')).toBe(1);
  p.close();
});

test('learned keys are bounded: the least recently used is dropped with its sessions', async () => {
  const { p, discards } = pool(settings({ keys: [], learn: 2, size: 1 }));
  p.start();
  p.learn('a', 'a', 'p');
  p.learn('b', 'b', 'p');
  await afterHandOut();
  p.learn('a', 'a', 'p'); // a is now the most recently used
  p.learn('c', 'c', 'p');
  await afterHandOut();
  expect(p.knownKeys().map((k) => k.user)).toEqual(['a', 'c']);
  expect(discards).toEqual(['evicted']);
  expect(p.readyCount('b', 'b')).toBe(0);
  p.close();
});

test('failed logins back off exponentially; a learned key is forgotten after 5 in a row', async () => {
  const { p, failing, opened } = pool(settings({ keys: [], learn: 1, size: 1 }));
  failing.add('x');
  let tries = 0;
  const open = p['o'].backend.open;
  p['o'].backend.open = (key, signal) => {
    tries++;
    return open(key, signal);
  };
  p.start();
  p.learn('x', 'x', 'p');
  await afterHandOut();
  expect(tries).toBe(1);
  for (const [wait, total] of [
    [999, 1],
    [1, 2],
    [2_000, 3],
    [4_000, 4],
    [8_000, 5],
  ] as const) {
    jest.advanceTimersByTime(wait);
    await settle();
    expect(tries).toBe(total);
  }
  expect(p.knownKeys()).toEqual([]);
  jest.advanceTimersByTime(120_000);
  await settle();
  expect(tries).toBe(5);
  expect(opened).toHaveLength(0);
  p.close();
});

test('a new profile replaces ready sessions it makes stale, and logins opened with the old one', async () => {
  const { p, opened, discards } = pool(settings({ size: 2 }));
  p.start();
  await settle();
  const stale = (s: Fake): boolean => s.profile !== 'p1';
  p.learn('alice', 'appdb', 'p1', stale);
  expect(discards).toEqual(['stale', 'stale']);
  await afterHandOut();
  expect(opened.slice(2).map((s) => s.profile)).toEqual(['p1', 'p1']);
  expect(p.take('alice', 'appdb', any)?.session.profile).toBe('p1');
  p.close();
});

test('reserve takes a session before the key is known, hands it to `first` at once and counts nothing', async () => {
  const { p, misses } = pool(settings({ size: 1 }));
  p.start();
  await settle();
  const firsts: number[] = [];
  const r = p.reserve((s) => firsts.push(s.id));
  expect(r?.key.user).toBe('alice');
  expect(firsts).toEqual([r?.session.id]);
  expect(p.reserve(() => undefined)).toBeUndefined();
  expect(firsts).toHaveLength(1);
  expect(misses).toEqual([]);
  await settle();
  expect(p.reserve(() => undefined)?.session.id).not.toBe(r?.session.id);
  p.close();
});

test('close closes ready sessions and stops refilling', async () => {
  const { p, opened, discards } = pool(settings({ size: 2 }));
  p.start();
  await settle();
  p.close();
  expect(opened.every((s) => s.closed)).toBe(true);
  expect(discards).toEqual(['shutdown', 'shutdown']);
  await settle();
  expect(opened).toHaveLength(2);
});

test('the ready gauge reads the pool at scrape time, per key label, until the pool closes', async () => {
  const { p, gauge } = pool(settings({ size: 2 }));
  expect(gauge.read).toBeUndefined();
  p.start();
  await settle();
  expect(gauge.read?.()).toEqual(new Map([['alice/appdb', 2]]));
  p.take('alice', 'appdb', () => ({}));
  // Read as it is now: nothing is reported on the hand-out path.
  expect(gauge.read?.()).toEqual(new Map([['alice/appdb', 1]]));
  p.close();
  expect(gauge.read).toBeUndefined();
});

test('a session handed out keeps its idle watch until claimed, and is never closed by the pool meanwhile', async () => {
  const { p, discards } = pool(settings({ size: 1, maxAgeSeconds: 5 }));
  p.start();
  await settle();
  const t = p.take('alice', 'appdb', () => ({}));
  const s = t?.session as Fake;
  expect(s.onDeath).toBeDefined(); // still watched: a server byte or close marks it dead
  jest.advanceTimersByTime(6_000); // past the maximum age while its client logs in
  expect(s.closed).toBe(false);
  expect(discards).toEqual([]);
  p.claim(s);
  expect(s.onDeath).toBeUndefined();
  p.claim(s); // idempotent
  p.close();
  expect(s.closed).toBe(false); // the client's now
});

test('a handed-out session the server closes before the claim is forgotten, not counted as a discard', async () => {
  const { p, discards } = pool(settings({ size: 1 }));
  p.start();
  await settle();
  const s = p.reserve(() => undefined)?.session as Fake;
  s.dead = true;
  s.onDeath?.();
  expect(discards).toEqual([]);
  expect(s.closed).toBe(false); // the engine finds it dead and closes it
  p.close();
});

test('spoilt claims the session before closing it', async () => {
  const { p, discards } = pool(settings({ size: 1 }));
  p.start();
  await settle();
  const s = p.take('alice', 'appdb', () => ({}))?.session as Fake;
  p.spoilt('alice', 'appdb', s, 'apply_failed');
  expect(s.onDeath).toBeUndefined();
  expect(s.closed).toBe(true);
  expect(discards).toEqual(['apply_failed']);
  p.close();
});
