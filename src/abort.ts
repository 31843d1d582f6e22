/**
 * The one cancellation mechanism: a Session owns an AbortController per connection and aborts it
 * with the reason (a ProxyError: deadline, shutdown, client gone); every await of the handshake
 * observes the signal and rejects with that reason. These helpers connect a signal to things
 * that predate AbortSignal (sockets, promises).
 */

/**
 * The callbacks of each signal's pending onAbort calls. A signal gets one 'abort' listener,
 * shared by all of them: Node's EventTarget costs tens of microseconds per listener on a path
 * run once per connection with cold caches (docs/PERFORMANCE.md "Idle is slow here"), and a
 * handshake guards several steps.
 */
const waiting = new WeakMap<AbortSignal, Set<() => void>>();

/**
 * Calls `fn` once with the signal's reason when it aborts (at once if it already has).
 * Returns a function that removes the listener; call it when the guarded step is over.
 */
export function onAbort(signal: AbortSignal | undefined, fn: (reason: unknown) => void): () => void {
  if (!signal) return noop;
  if (signal.aborted) {
    fn(signal.reason);
    return noop;
  }
  const fns = waiting.get(signal) ?? listen(signal);
  const listener = (): void => fn(signal.reason);
  fns.add(listener);
  return () => void fns.delete(listener);
}

/** The signal's one 'abort' listener, which calls every callback `onAbort` registered. */
function listen(signal: AbortSignal): Set<() => void> {
  const fns = new Set<() => void>();
  waiting.set(signal, fns);
  const fire = (): void => {
    waiting.delete(signal);
    for (const f of fns) f();
    fns.clear();
  };
  signal.addEventListener('abort', fire, { once: true });
  return fns;
}

/** Settles like `p`, or rejects with the signal's reason if it aborts first. */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    const stop = onAbort(signal, reject);
    p.then(
      (v) => {
        stop();
        resolve(v);
      },
      (err: unknown) => {
        stop();
        reject(err);
      },
    );
  });
}

function noop(): void {}
