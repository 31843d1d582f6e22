/**
 * The login skeleton both engines run in. An engine writes only its wire steps (`handshake`)
 * and how its protocol words an error (`sendError`); the skeleton owns the rest:
 *  - cancellation: the Session's signal is observed by every step (dial, TLS, reads, the
 *    token); when it aborts, the upstream sockets are destroyed and the reason is what fails;
 *  - ending a failed handshake: the upstream released, the client told in its protocol, closed;
 *  - the secret: a lease per attempt, forgotten when the server refuses it, and one retry when
 *    the refused secret came from the cache (revoked or rotated credentials).
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { onAbort, untilAborted } from '../abort';
import type { TokenLease, TokenRequest, TokenSource } from '../credentials/tokens';
import { asProxyError, closesSilently, ErrorCode, ProxyError } from '../errors';
import type { ConnectionLogger } from '../log';
import type {
  EngineConnection,
  HandshakeContext,
  HandshakeResult,
  PhaseTimings,
  SessionInfo,
} from './engine';

/** An upstream socket, or an engine's wrapper around one. */
interface Destroyable {
  destroy(): void;
}

export abstract class EngineHandshake implements EngineConnection {
  readonly info: SessionInfo = {};
  readonly timings: PhaseTimings = {};
  protected readonly log: ConnectionLogger;
  protected readonly signal: AbortSignal;
  /** Upstream connections opened and not yet handed to the caller: destroyed if the handshake fails. */
  private readonly upstreams = new Set<Destroyable>();

  constructor(
    protected readonly client: net.Socket,
    ctx: HandshakeContext,
  ) {
    this.log = ctx.log;
    this.signal = ctx.signal;
    client.on('error', () => undefined); // errors surface as read failures
  }

  async run(): Promise<HandshakeResult | null> {
    const stopWatching = onAbort(this.signal, () => this.releaseUpstreams());
    try {
      this.signal.throwIfAborted();
      const result = await this.handshake();
      this.upstreams.clear(); // they belong to the caller now
      return result;
    } catch (err) {
      const e = asProxyError(this.signal.aborted ? this.signal.reason : err);
      this.releaseUpstreams();
      if (closesSilently(e)) this.client.destroy();
      else this.sendError(e);
      throw e;
    } finally {
      stopWatching();
    }
  }

  /** The engine's wire steps, from the first client byte to both legs logged in. */
  protected abstract handshake(): Promise<HandshakeResult | null>;

  /** Tells the client about `err` in its protocol if it can still take a message, and closes it. */
  protected abstract sendError(err: ProxyError): void;

  /** Registers an upstream connection so a failed or aborted handshake destroys it. Returns it. */
  protected own<T extends Destroyable>(upstream: T): T {
    this.upstreams.add(upstream);
    return upstream;
  }

  /** Destroys an upstream connection given up on (a failed attempt, before any retry). */
  protected disown(upstream: Destroyable): void {
    this.upstreams.delete(upstream);
    upstream.destroy();
  }

  /**
   * The lease's secret as a thunk for the wire steps, which call it only once the server asks
   * (after TLS is verified). Memoized; the wait is `tokenMs`; rejects with the signal's reason
   * if the handshake is aborted first.
   */
  protected secretOf(lease: TokenLease): () => Promise<string> {
    let p: Promise<string> | undefined;
    return () =>
      (p ??= (async () => {
        const t0 = performance.now();
        try {
          return await untilAborted(lease.secret, this.signal);
        } finally {
          this.timings.tokenMs = elapsedMs(t0);
        }
      })());
  }

  /** See loginWithLease; logs the retry on this connection's logger. */
  protected withLease<T>(
    secrets: TokenSource,
    req: TokenRequest,
    attempt: (lease: TokenLease) => Promise<T>,
  ): Promise<T> {
    return loginWithLease(secrets, req, this.log, attempt);
  }

  private releaseUpstreams(): void {
    for (const s of this.upstreams) s.destroy();
    this.upstreams.clear();
  }
}

/**
 * Runs an upstream login `attempt` with a lease on the secret for `req`. A secret the server
 * refused is forgotten; when it came from the cache, the attempt runs once more with a fresh
 * one (`retry`, default true), before the client hears anything.
 */
export async function loginWithLease<T>(
  secrets: TokenSource,
  req: TokenRequest,
  log: ConnectionLogger,
  attempt: (lease: TokenLease) => Promise<T>,
  retry = true,
): Promise<T> {
  for (let n = 1; ; n++) {
    const lease = secrets.lease(req);
    try {
      return await attempt(lease);
    } catch (err) {
      if (!isRefusal(err)) throw err;
      lease.refused();
      if (!retry || n > 1 || !lease.cached) throw err;
      const { sqlState, errno } = err.serverError ?? {};
      log.info({ sqlState, errno }, 'upstream refused a cached token; retrying once with fresh credentials');
    }
  }
}

/** The server itself refused the login (it sent its error), as opposed to a broken exchange. */
function isRefusal(err: unknown): err is ProxyError {
  return err instanceof ProxyError && err.code === ErrorCode.UpstreamAuth && err.serverError !== undefined;
}

/** Writes a last message and closes; destroys if the peer does not read it within a second. */
export function endWith(s: Duplex, last: Buffer): void {
  if (s.destroyed || !s.writable) {
    s.destroy();
    return;
  }
  s.end(last);
  setTimeout(() => s.destroy(), 1000).unref();
}

/** Milliseconds since `t0` (a performance.now() value), to 0.01 ms. */
export function elapsedMs(t0: number): number {
  return Math.round((performance.now() - t0) * 100) / 100;
}
