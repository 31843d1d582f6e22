/** Connection counting and the login token bucket, with a fake clock (jest's modern fake timers). */
import { ConnectionLimits, LoginGate } from '../../src/proxy/limits';

describe('ConnectionLimits', () => {
  test('per-listener limit first, then the global one; release frees both', () => {
    const l = new ConnectionLimits(3);
    expect(l.tryOpen('a', 2)).toBeUndefined();
    expect(l.tryOpen('a', 2)).toBeUndefined();
    expect(l.tryOpen('a', 2)).toMatchObject({
      limit: 'listener_max_connections',
      message: expect.stringContaining('"a" (maxConnections 2)'),
    });
    expect(l.tryOpen('b', 0)).toBeUndefined();
    expect(l.tryOpen('b', 0)).toMatchObject({
      limit: 'max_connections',
      message: expect.stringContaining('limits.maxConnections 3'),
    });
    expect(l.open()).toBe(3);
    expect(l.open('a')).toBe(2);
    l.release('a');
    expect(l.tryOpen('b', 0)).toBeUndefined();
    expect(l.open('b')).toBe(2);
  });

  test('0 means unlimited; update applies to the next connection', () => {
    const l = new ConnectionLimits(0);
    for (let i = 0; i < 100; i++) expect(l.tryOpen('a', 0)).toBeUndefined();
    l.update(50);
    expect(l.tryOpen('a', 0)?.limit).toBe('max_connections');
  });
});

describe('LoginGate', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  const gate = (loginsPerSecond: number, loginQueue: number, lengths: number[] = []) =>
    new LoginGate(
      { loginsPerSecond, loginQueue },
      () => Date.now(),
      (n) => lengths.push(n),
    );

  test('unlimited (0) grants at once', () => {
    const g = gate(0, 0);
    for (let i = 0; i < 10; i++) expect(g.acquire()?.isGranted).toBe(true);
  });

  test('a burst of one second, then one per 1/rate; a bounded FIFO queue', async () => {
    const lengths: number[] = [];
    const g = gate(2, 2, lengths);
    expect(g.acquire()?.isGranted).toBe(true);
    expect(g.acquire()?.isGranted).toBe(true);
    const q1 = g.acquire();
    const q2 = g.acquire();
    expect(q1?.isGranted).toBe(false);
    expect(q2?.isGranted).toBe(false);
    expect(g.acquire()).toBeUndefined(); // queue full
    expect(g.waiting).toBe(2);
    await jest.advanceTimersByTimeAsync(500);
    expect(q1?.isGranted).toBe(true);
    expect(q2?.isGranted).toBe(false);
    await jest.advanceTimersByTimeAsync(500);
    expect(q2?.isGranted).toBe(true);
    expect(g.waiting).toBe(0);
    expect(lengths).toEqual([1, 2, 1, 0]);
  });

  test('a cancelled waiter leaves the queue; the next one moves up', async () => {
    const g = gate(1, 5);
    expect(g.acquire()?.isGranted).toBe(true);
    const a = g.acquire();
    const b = g.acquire();
    a?.cancel();
    expect(g.waiting).toBe(1);
    await jest.advanceTimersByTimeAsync(1000);
    expect(a?.isGranted).toBe(false);
    expect(b?.isGranted).toBe(true);
  });

  test('loginQueue 0 refuses whenever no token is left', () => {
    const g = gate(1, 0);
    expect(g.acquire()?.isGranted).toBe(true);
    expect(g.acquire()).toBeUndefined();
  });

  test('update to unlimited releases every waiter', async () => {
    const g = gate(1, 5);
    g.acquire();
    const waiting = [g.acquire(), g.acquire(), g.acquire()];
    g.update({ loginsPerSecond: 0, loginQueue: 5 });
    await Promise.all(waiting.map((w) => w?.granted));
    expect(waiting.every((w) => w?.isGranted)).toBe(true);
  });

  test('fractional rates: 0.5/s grants one login every 2 s', async () => {
    const g = gate(0.5, 5);
    expect(g.acquire()?.isGranted).toBe(true);
    const next = g.acquire();
    await jest.advanceTimersByTimeAsync(1500);
    expect(next?.isGranted).toBe(false);
    await jest.advanceTimersByTimeAsync(500);
    expect(next?.isGranted).toBe(true);
  });
});
