import type { Duplex } from 'node:stream';

/** Thrown by SocketReader when the peer closes or errors before the bytes asked for arrived. */
export class PeerClosedError extends Error {
  constructor(
    /** Which leg went away: the app (client) or the database (server). */
    readonly side: PeerSide,
    cause?: unknown,
  ) {
    super(
      `${side === 'client' ? 'client' : 'upstream'} closed the connection during the handshake`,
      cause === undefined ? undefined : { cause },
    );
    this.name = 'PeerClosedError';
  }
}

export type PeerSide = 'client' | 'server';

/** Thrown when a handshake peer sends more unread bytes than the proxy is willing to hold. */
export class BufferLimitError extends Error {
  constructor(limit: number) {
    super(`peer sent more than ${limit} bytes ahead of the handshake`);
    this.name = 'BufferLimitError';
  }
}

/**
 * Incremental reader over a socket for handshake phases. It buffers what arrives, hands out
 * exact byte counts, and on `detach()` returns whatever was read but not consumed, so the splice
 * (or a TLS upgrade) starts with nothing lost. Only one read may be pending at a time.
 */
export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered > this.maxBuffered) this.fail(new BufferLimitError(this.maxBuffered));
    this.wake();
  };
  private readonly onEnd = (): void => this.fail(new PeerClosedError(this.side));
  private readonly onError = (err: Error): void => this.fail(new PeerClosedError(this.side, err));

  /**
   * @param socket read from until detach(); the caller keeps ownership of the socket.
   * @param maxBuffered bytes held unread before the peer is treated as hostile.
   * @param side who the peer is, for errors when it goes away.
   */
  constructor(
    readonly socket: Duplex,
    private readonly maxBuffered = 1 << 20,
    private readonly side: PeerSide = 'client',
  ) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  /** Bytes received and not yet consumed. */
  get available(): number {
    return this.buffered;
  }

  /** True once the peer closed or errored (what is buffered can still be read). */
  get closed(): boolean {
    return this.failure !== undefined;
  }

  /** First byte available without consuming it, waiting for one if needed. */
  async peekByte(): Promise<number> {
    await this.waitFor(1);
    return (this.chunks[0] as Buffer)[0] as number;
  }

  /** Peeks `n` bytes without consuming them. */
  async peek(n: number): Promise<Buffer> {
    await this.waitFor(n);
    this.coalesce();
    return (this.chunks[0] as Buffer).subarray(0, n);
  }

  /** Resolves with exactly `n` bytes. */
  async read(n: number): Promise<Buffer> {
    await this.waitFor(n);
    this.coalesce();
    const head = this.chunks[0] as Buffer;
    const out = head.subarray(0, n);
    const rest = head.subarray(n);
    this.buffered -= n;
    if (rest.length > 0) this.chunks[0] = rest;
    else this.chunks.shift();
    return out;
  }

  /**
   * Stops reading: removes the listeners, pauses the socket and returns the unconsumed bytes.
   * The socket's error listener stays until the caller attaches its own (it must).
   */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    this.socket.pause();
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  private coalesce(): void {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = err;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private async waitFor(n: number): Promise<void> {
    while (this.buffered < n) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }
}
