import type net from 'node:net';
import { type ConnectionLogger, lazyChild, type Logger } from '../log';
import { asProxyError, closesSilently, ErrorCode, logError, ProxyError } from '../errors';
import { untilAborted } from '../abort';
import type { Engine, HandshakeResult } from './engine';
import type { LoginGate } from './limits';
import type { ConnectionOutcome, ProxyObserver } from './observer';
import { splice } from './splice';

let nextId = 1;

export interface SessionOptions {
  listener: string;
  /** Deadline for the whole handshake, including any wait for a login slot, milliseconds. */
  handshakeTimeoutMs: number;
  /** Close a spliced session after this long with no bytes either way; 0 or absent = never. */
  idleTimeoutMs?: number;
  /** Rate limit on new upstream logins (limits.loginsPerSecond); absent = unlimited. */
  loginGate?: LoginGate;
  observer: ProxyObserver;
  /** What the engine's `greet` returned on accept (HandshakeContext.greeted). */
  greeted?: unknown;
}

/** Outcome of one connection, for logs and the observer. */
export interface SessionResult {
  outcome: ConnectionOutcome;
  errorCode?: ErrorCode;
}

/** Where a session is; shutdown() acts on it. */
export const SessionState = {
  /** Waiting for a login slot (limits.loginsPerSecond). */
  Queued: 'queued',
  /** The engine's handshake is running. */
  Handshaking: 'handshaking',
  /** Logged in; bytes are spliced. */
  Spliced: 'spliced',
  Closed: 'closed',
} as const;
export type SessionState = (typeof SessionState)[keyof typeof SessionState];

/**
 * The path of one connection: handshake (engine; it asks for a login slot right before a fresh
 * upstream login, see loginSlot), then splice. One
 * AbortController covers the connection's life: the handshake deadline, a shutdown and the
 * client going away abort it with their own reason (a ProxyError), which is what the client is
 * told, what is logged and what is counted; after login only a shutdown aborts it, ending the
 * splice. Logs one line when accepted, one when logged in (with phase timings) and one when
 * closed (bytes, duration, reason); the per-connection logger carries connId, listener and
 * remote, plus user and database once known. Owns `client`.
 */
export class Session {
  state: SessionState = SessionState.Handshaking;
  readonly log: ConnectionLogger;
  private readonly started = performance.now();
  private readonly controller = new AbortController();
  /** Set when no login slot was given (queue full, or aborted while queued): the outcome is 'rejected'. */
  private refusedSlot: ProxyError | undefined;

  constructor(
    private readonly client: net.Socket,
    private readonly engine: Engine,
    rootLog: Logger,
    private readonly opts: SessionOptions,
  ) {
    const connId = nextId++;
    this.log = lazyChild(rootLog, () => ({
      connId,
      listener: opts.listener,
      remote: client.remoteAddress ? `${client.remoteAddress}:${client.remotePort}` : 'unix',
    }));
  }

  /**
   * Ends the session for a shutdown: a queued or handshaking client gets the protocol's error
   * for `err` (Postgres 57P01); a spliced session is closed at once (both legs destroyed: there
   * is no message boundary the proxy tracks to inject an error at).
   */
  shutdown(err: ProxyError): void {
    if (this.state !== SessionState.Closed) this.abort(err);
  }

  async run(): Promise<SessionResult> {
    const { client } = this;
    client.setNoDelay(true);
    client.on('error', ignore); // a reset surfaces as 'close'
    this.log.info('accepted');
    const logged = await this.handshake().catch((err: unknown) => {
      this.state = SessionState.Closed;
      throw err;
    });
    if (!('downstream' in logged)) {
      this.state = SessionState.Closed;
      return logged;
    }
    // Not awaited here: this frame (and the handshake's objects it could hold) is released
    // while the session is spliced; only what splice() is given stays alive.
    return this.spliceLegs(logged);
  }

  private abort(reason: ProxyError): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
  }

  /**
   * The engine's `HandshakeContext.loginSlot`: waits for a login slot (limits.loginsPerSecond)
   * right before a fresh upstream login. It is asked for by the engine rather than taken before
   * the handshake so that a client served from the prewarm pool takes no slot (the refill that
   * replaces its session takes one): one login, one slot. Rejects when the queue is full, or
   * with the signal's reason (deadline, shutdown, client gone) while waiting; the engine then
   * tells the client in its protocol, and the connection counts as rejected, as before.
   */
  private async loginSlot(): Promise<void> {
    const { loginGate: gate, observer, listener } = this.opts;
    if (!gate) return;
    const t0 = performance.now();
    const ticket = gate.acquire();
    if (!ticket) {
      observer.limitRejected(listener, 'login_queue');
      const err = new ProxyError(
        ErrorCode.TooManyConnections,
        `too many connections waiting to log in (limits.loginQueue ${gate.queueLimit})`,
        {
          hint: 'new logins are rate limited by limits.loginsPerSecond; shrink the client pools or raise limits.loginsPerSecond / limits.loginQueue',
        },
      );
      this.log.warn({ limit: 'login_queue', err: logError(err) }, 'refused');
      this.refusedSlot = err;
      throw err;
    }
    if (ticket.isGranted) return;
    this.state = SessionState.Queued;
    try {
      await untilAborted(ticket.granted, this.controller.signal);
    } catch (err) {
      ticket.cancel();
      const e = asProxyError(err);
      this.log.info({ ms: elapsed(this.started), err: logError(e) }, 'left the login queue');
      this.refusedSlot = e;
      throw e;
    } finally {
      if (this.state === SessionState.Queued) this.state = SessionState.Handshaking;
    }
    observer.loginWaited(performance.now() - t0);
  }

  private onDeadline(): void {
    const ms = this.opts.handshakeTimeoutMs;
    if (this.state === SessionState.Queued) {
      this.opts.observer.limitRejected(this.opts.listener, 'login_wait');
      this.abort(
        new ProxyError(
          ErrorCode.TooManyConnections,
          `no login slot within ${ms} ms (limits.loginsPerSecond)`,
          {
            hint: 'new logins are rate limited; shrink the client pools or raise limits.loginsPerSecond',
          },
        ),
      );
      return;
    }
    this.abort(
      new ProxyError(ErrorCode.HandshakeTimeout, `handshake not completed within ${ms} ms`, {
        hint: 'the client stalled, or the upstream or credentials provider is slow; see the proxy log',
      }),
    );
  }

  /**
   * The handshake under the session's deadline. Resolves with both legs once logged in, or with
   * the outcome when there is nothing to splice. Everything it made for the handshake (the
   * engine's connection object, the deadline, the close watch) is unreachable once it returns.
   */
  private async handshake(): Promise<HandshakeResult | SessionResult> {
    const { client, opts, log } = this;
    const deadline = setTimeout(() => this.onDeadline(), opts.handshakeTimeoutMs);
    const onClientGone = (): void =>
      this.abort(new ProxyError(ErrorCode.ClientGone, 'client closed the connection during the handshake'));
    client.once('close', onClientGone);
    const conn = this.engine.accept(client, {
      log,
      signal: this.controller.signal,
      loginSlot: () => this.loginSlot(),
      greeted: opts.greeted,
    });
    let result;
    try {
      result = await conn.run();
    } catch (err) {
      const e = asProxyError(err);
      this.identify(conn.info);
      // Refused or left while waiting for a login slot: logged and counted in loginSlot().
      if (this.refusedSlot) return { outcome: 'rejected', errorCode: this.refusedSlot.code };
      // A client that connects and leaves (a TCP health check) is routine, not a warning.
      const level = e.code === ErrorCode.Internal ? 'error' : closesSilently(e) ? 'debug' : 'warn';
      log[level](
        { ...withoutIdentity(conn.info), err: logError(e), ms: elapsed(this.started) },
        'handshake failed',
      );
      opts.observer.handshakeFailed(opts.listener, e);
      return { outcome: 'failed', errorCode: e.code };
    } finally {
      clearTimeout(deadline);
      client.off('close', onClientGone);
    }
    if (!result) {
      log.debug({ ms: elapsed(this.started) }, 'request handled');
      return { outcome: 'handled' };
    }
    this.state = SessionState.Spliced;
    this.identify(conn.info);
    const handshakeMs = elapsed(this.started);
    log.info({ ...withoutIdentity(conn.info), timings: conn.timings, ms: handshakeMs }, 'logged in');
    opts.observer.handshakeCompleted(opts.listener, conn.timings, handshakeMs);
    opts.observer.sessionSpliced(opts.listener, client);
    return result;
  }

  /** Splices both legs until either closes (or a shutdown), then logs and counts the close. */
  private async spliceLegs(legs: HandshakeResult): Promise<SessionResult> {
    const { client, opts, log } = this;
    const { onClose } = legs;
    try {
      // A shutdown that raced the end of the handshake has aborted the signal: the splice ends at once.
      const end = await splice(
        legs.downstream,
        legs.upstream,
        legs.downstreamLeftover,
        legs.upstreamLeftover,
        {
          idleTimeoutMs: opts.idleTimeoutMs ?? 0,
          signal: this.controller.signal,
        },
      );
      onClose?.();
      const durationMs = elapsed(this.started);
      const bytes = { fromClient: client.bytesRead, toClient: client.bytesWritten };
      log.info(
        {
          bytesFromClient: bytes.fromClient,
          bytesToClient: bytes.toClient,
          durationMs,
          reason: end.reason,
          ...(end.detail ? { detail: end.detail } : {}),
        },
        'closed',
      );
      opts.observer.sessionClosed(opts.listener, end.reason, bytes, durationMs, client);
      return { outcome: 'spliced' };
    } finally {
      this.state = SessionState.Closed;
    }
  }

  /** Adds user and database to this connection's log lines once the client named them. */
  private identify(info: { user?: string; database?: string }): void {
    if (info.user === undefined && info.database === undefined) return;
    this.log.setBindings({ user: info.user, database: info.database });
  }
}

function withoutIdentity<T extends { user?: unknown; database?: unknown }>(
  info: T,
): Omit<T, 'user' | 'database'> {
  const { user: _user, database: _database, ...rest } = info;
  return rest;
}

function ignore(): void {}

function elapsed(t0: number): number {
  return Math.round((performance.now() - t0) * 10) / 10;
}
