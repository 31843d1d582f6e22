import type { Duplex } from 'node:stream';
import { BufferLimitError, PeerClosedError, type PeerSide } from '../errors';
import { onAbort } from '../abort';

export { BufferLimitError, PeerClosedError, type PeerSide };

/**
 * Bytes pushed in by a producer and read out in exact counts by one consumer: the handshake
 * readers (over a socket, see SocketReader) and the MySQL command gate's feeds share it. Holds
 * at most `limit` unread bytes; past that the queue fails with BufferLimitError. Only one read
 * may be pending at a time.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private size = 0;
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;

  constructor(private readonly limit: number) {}

  /** Bytes received and not yet consumed. */
  get available(): number {
    return this.size;
  }

  /** True once the queue has failed (what is buffered can still be read). */
  get closed(): boolean {
    return this.failure !== undefined;
  }

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.size += b.length;
    if (this.size > this.limit) this.fail(new BufferLimitError(this.limit));
    this.wake();
  }

  /** Reads that cannot be satisfied from what is buffered reject with `err` (the first one wins). */
  fail(err: Error): void {
    if (!this.failure) this.failure = err;
    this.wake();
  }

  /** First byte available without consuming it, waiting for one if needed. */
  async peekByte(): Promise<number> {
    if (this.size < 1) await this.waitFor(1);
    return (this.chunks[0] as Buffer)[0] as number;
  }

  /** Peeks `n` bytes without consuming them. */
  async peek(n: number): Promise<Buffer> {
    if (this.size < n) await this.waitFor(n);
    this.coalesce();
    return (this.chunks[0] as Buffer).subarray(0, n);
  }

  /** Resolves with exactly `n` bytes. */
  async read(n: number): Promise<Buffer> {
    // Bytes already here are returned without another turn of the microtask queue.
    if (this.size < n) await this.waitFor(n);
    this.coalesce();
    const head = this.chunks[0] as Buffer;
    const out = head.subarray(0, n);
    const rest = head.subarray(n);
    this.size -= n;
    if (rest.length > 0) this.chunks[0] = rest;
    else this.chunks.shift();
    return out;
  }

  /** Everything not yet read, removed from the queue. */
  drain(): Buffer {
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    this.chunks = [];
    this.size = 0;
    return all;
  }

  private coalesce(): void {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private async waitFor(n: number): Promise<void> {
    while (this.size < n) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }
}

/**
 * A ByteQueue fed by a socket, for handshake phases. On `detach()` it returns whatever was read
 * but not consumed, so the splice (or a TLS upgrade) starts with nothing lost. A read fails with
 * PeerClosedError when the peer ends or errors first, and with the signal's reason when the
 * handshake is aborted.
 */
export class SocketReader extends ByteQueue {
  private readonly onData = (chunk: Buffer): void => this.push(chunk);
  private readonly onEnd = (): void => this.fail(new PeerClosedError(this.side));
  private readonly onError = (err: Error): void => this.fail(new PeerClosedError(this.side, err));
  private readonly stopWatching: () => void;

  /**
   * @param socket read from until detach(); the caller keeps ownership of the socket.
   * @param maxBuffered bytes held unread before the peer is treated as hostile.
   * @param side who the peer is, for errors when it goes away.
   * @param signal the handshake's; aborting it fails pending and later reads with its reason.
   */
  constructor(
    readonly socket: Duplex,
    maxBuffered = 1 << 20,
    private readonly side: PeerSide = 'client',
    signal?: AbortSignal,
  ) {
    super(maxBuffered);
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
    this.stopWatching = onAbort(signal, (reason) => this.fail(asError(reason)));
  }

  /**
   * Stops reading: removes the listeners, pauses the socket and returns the unconsumed bytes.
   * Errors on the socket are ignored until the caller attaches its own handler (it must).
   */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    this.socket.on('error', ignore);
    this.stopWatching();
    this.socket.pause();
    return this.drain();
  }
}

function ignore(): void {}

function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}
