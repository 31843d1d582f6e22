import type { Duplex } from 'node:stream';

/** How a spliced session ended. */
export interface SpliceEnd {
  /** 'client closed', 'server closed', or the first socket error seen. */
  reason: string;
}

/**
 * Moves bytes both ways until either side closes, then closes the other. Leftovers from the
 * handshake are written first so nothing read ahead is lost. pipe() gives backpressure: a slow
 * reader pauses the fast writer instead of buffering in the proxy. Ownership of both sockets
 * passes here; both are destroyed when the promise resolves.
 */
export function splice(
  downstream: Duplex,
  upstream: Duplex,
  downstreamLeftover: Buffer,
  upstreamLeftover: Buffer,
): Promise<SpliceEnd> {
  return new Promise((resolve) => {
    let reason: string | undefined;
    const finish = (why: string): void => {
      if (reason !== undefined) return;
      reason = why;
      downstream.destroy();
      upstream.destroy();
      resolve({ reason });
    };
    downstream.on('error', (err: NodeJS.ErrnoException) => finish(`client error: ${err.code ?? err.message}`));
    upstream.on('error', (err: NodeJS.ErrnoException) => finish(`server error: ${err.code ?? err.message}`));
    downstream.on('close', () => finish('client closed'));
    upstream.on('close', () => finish('server closed'));
    if (downstream.destroyed) return finish('client closed');
    if (upstream.destroyed) return finish('server closed');
    if (upstreamLeftover.length > 0) downstream.write(upstreamLeftover);
    if (downstreamLeftover.length > 0) upstream.write(downstreamLeftover);
    downstream.pipe(upstream);
    upstream.pipe(downstream);
  });
}
