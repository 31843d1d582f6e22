import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { CloseReason } from './observer';
import { onAbort } from '../abort';

/** How a spliced session ended. */
export interface SpliceEnd {
  /** Why, in the metrics' vocabulary (the `reason` label of sessions_closed_total and of the "closed" line). */
  reason: CloseReason;
  /** The socket error code (client_error, server_error) or the idle limit (`300 ms`). */
  detail?: string;
}

export interface SpliceOptions {
  /** Close both legs after this long with no bytes either way, milliseconds; 0 or absent = never. */
  idleTimeoutMs?: number;
  /** Aborting it closes both legs at once (shutdown deadline); the end's kind is 'shutdown'. */
  signal?: AbortSignal;
}

/**
 * Moves bytes both ways until either side closes, then closes the other. Leftovers from the
 * handshake are written first so nothing read ahead is lost. Backpressure as pipe() does it: a
 * write that returns false pauses the reader until the writer drains, so a slow reader pauses
 * the fast writer instead of buffering in the proxy. Ownership of both sockets passes here;
 * both are destroyed when the promise resolves.
 *
 * This is the hot path: the splice itself adds no work per chunk beyond pipe()'s (an engine's
 * `upstream` Duplex may: the MySQL CommandGate scans client bytes for COM_CHANGE_USER). The idle
 * timeout is the sockets' own inactivity timer (socket.setTimeout, re-armed by libuv-level
 * activity, not by JS per chunk). Not pipe() itself: it leaves nine closures and three once()
 * wrappers per direction on the sockets, about 2 KB of heap per idle connection; this keeps
 * two listeners per direction (data, end) and a drain listener once one was needed.
 */
export function splice(
  downstream: Duplex,
  upstream: Duplex,
  downstreamLeftover: Buffer,
  upstreamLeftover: Buffer,
  opts: SpliceOptions = {},
): Promise<SpliceEnd> {
  return new Promise((resolve) => {
    let ended = false;
    const finish = (reason: CloseReason, detail?: string): void => {
      if (ended) return;
      ended = true;
      stopWatching();
      downstream.destroy();
      upstream.destroy();
      resolve(detail === undefined ? { reason } : { reason, detail });
    };
    let stopWatching = (): void => undefined;
    downstream.on('error', (err: NodeJS.ErrnoException) => finish('client_error', err.code ?? err.message));
    upstream.on('error', (err: NodeJS.ErrnoException) => finish('server_error', err.code ?? err.message));
    downstream.on('close', () => finish('client_closed'));
    upstream.on('close', () => finish('server_closed'));
    if (downstream.destroyed) return finish('client_closed');
    if (upstream.destroyed) return finish('server_closed');
    // At once if the signal has already aborted (a shutdown that raced the end of the handshake).
    stopWatching = onAbort(opts.signal, () => finish('shutdown'));
    if (ended) return;
    const idleMs = opts.idleTimeoutMs ?? 0;
    if (idleMs > 0) {
      // Every byte read on one leg is written on the other, so either leg's timer firing means
      // both have been quiet for idleMs.
      const onIdle = (): void => finish('idle_timeout', `${idleMs} ms`);
      for (const s of [downstream, upstream]) if (isSocket(s)) s.setTimeout(idleMs, onIdle);
    }
    if (upstreamLeftover.length > 0) downstream.write(upstreamLeftover);
    if (downstreamLeftover.length > 0) upstream.write(downstreamLeftover);
    forward(downstream, upstream);
    forward(upstream, downstream);
  });
}

/**
 * One direction: each chunk read from `from` is written to `to`; a full `to` pauses `from` until
 * it drains; the end of `from` ends `to` (a half-close is passed on, as pipe() does).
 */
function forward(from: Duplex, to: Duplex): void {
  let onDrain: (() => void) | undefined;
  from.on('data', (chunk: Buffer) => {
    if (to.write(chunk)) return;
    from.pause();
    if (!onDrain) {
      onDrain = () => from.resume();
      to.on('drain', onDrain);
    }
  });
  from.on('end', () => to.end());
  // The handshake paused the socket (SocketReader.detach); 'data' alone does not resume it.
  from.resume();
}

function isSocket(s: Duplex): s is net.Socket {
  return typeof (s as Partial<net.Socket>).setTimeout === 'function';
}
