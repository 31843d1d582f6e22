/**
 * src/abort.ts: the one cancellation mechanism's helpers. Every onAbort of a signal shares one
 * EventTarget listener (cheap on the per-connection path) and behaves as if it had its own.
 */
import { getEventListeners } from 'node:events';
import { onAbort, untilAborted } from '../../src/abort';

describe('onAbort', () => {
  it('shares one listener per signal, calls each pending callback once with the reason', () => {
    const c = new AbortController();
    const calls: string[] = [];
    const stopA = onAbort(c.signal, (r) => calls.push(`a:${String(r)}`));
    const stopB = onAbort(c.signal, (r) => calls.push(`b:${String(r)}`));
    onAbort(c.signal, (r) => calls.push(`c:${String(r)}`));
    expect(getEventListeners(c.signal, 'abort')).toHaveLength(1);
    stopB();
    c.abort('why');
    expect(calls).toEqual(['a:why', 'c:why']);
    stopA(); // after the abort: harmless
    c.abort('again');
    expect(calls).toEqual(['a:why', 'c:why']);
    expect(getEventListeners(c.signal, 'abort')).toHaveLength(0);
  });

  it('calls at once when the signal has already aborted, and a callback may register another', () => {
    const c = new AbortController();
    const calls: string[] = [];
    onAbort(c.signal, () => {
      calls.push('first');
      onAbort(c.signal, () => calls.push('late'));
    });
    c.abort(new Error('x'));
    expect(calls).toEqual(['first', 'late']);
    onAbort(c.signal, (r) => calls.push((r as Error).message));
    expect(calls).toEqual(['first', 'late', 'x']);
  });

  it('keeps a long-lived signal to one listener however many steps come and go', () => {
    const c = new AbortController();
    for (let i = 0; i < 1000; i++) onAbort(c.signal, () => undefined)();
    expect(getEventListeners(c.signal, 'abort')).toHaveLength(1);
    let fired = 0;
    onAbort(c.signal, () => fired++);
    c.abort();
    expect(fired).toBe(1);
  });
});

describe('untilAborted', () => {
  it('settles like the promise, or rejects with the reason when the signal aborts first', async () => {
    const c = new AbortController();
    await expect(untilAborted(Promise.resolve(7), c.signal)).resolves.toBe(7);
    const never = new Promise<number>(() => undefined);
    const p = untilAborted(never, c.signal);
    c.abort(new Error('deadline'));
    await expect(p).rejects.toThrow('deadline');
  });
});
