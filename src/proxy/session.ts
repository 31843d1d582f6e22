import type net from 'node:net';
import type { Logger } from '../log';
import { asProxyError, ErrorCode, ProxyError } from '../errors';
import { metrics, type ConnectionOutcome } from '../admin/metrics';
import type { Engine, EngineConnection } from './engine';
import type { LoginGate, LoginTicket } from './limits';
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
}

/** Outcome of one connection, for logs and metrics. */
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
 * The path of one connection: (a login slot), handshake (engine), then splice. The handshake has
 * a deadline; on expiry the engine sends its protocol's error. Logs one line when accepted, one
 * when logged in (with phase timings) and one when closed (bytes, duration, reason); the
 * per-connection logger carries connId, listener and remote, plus user and database once known.
 * Owns `client`.
 */
export class Session {
  state: SessionState = SessionState.Queued;
  readonly log: Logger;
  private readonly started = performance.now();
  private conn: EngineConnection | undefined;
  private ticket: LoginTicket | undefined;
  /** Why the proxy itself ended the handshake (deadline, shutdown); wins over what run() reports. */
  private abortedWith: ProxyError | undefined;
  private readonly stopSplice = new AbortController();

  constructor(
    private readonly client: net.Socket,
    private readonly engine: Engine,
    rootLog: Logger,
    private readonly opts: SessionOptions,
  ) {
    this.log = rootLog.child({
      connId: nextId++,
      listener: opts.listener,
      remote: client.remoteAddress ? `${client.remoteAddress}:${client.remotePort}` : 'unix',
    });
  }

  /**
   * Ends the session for a shutdown: a queued or handshaking client gets the protocol's error
   * (Postgres 57P01); a spliced session is closed at once (both legs destroyed: there is no
   * message boundary the proxy tracks to inject an error at).
   */
  shutdown(err: ProxyError): void {
    switch (this.state) {
      case SessionState.Queued:
        this.abortedWith ??= err;
        this.ticket?.cancel();
        this.state = SessionState.Closed;
        this.engine.reject(this.client, err);
        return;
      case SessionState.Handshaking:
        this.abortedWith ??= err;
        this.conn?.abort(err);
        // If the handshake completes anyway (abort came too late), the splice ends at once.
        this.stopSplice.abort();
        return;
      case SessionState.Spliced:
        this.stopSplice.abort();
        return;
      case SessionState.Closed:
        return;
      default: {
        const never: never = this.state;
        throw new Error(`unknown session state ${String(never)}`);
      }
    }
  }

  async run(): Promise<SessionResult> {
    const { client, opts } = this;
    client.setNoDelay(true);
    this.log.info('accepted');
    const deadline = setTimeout(() => this.onDeadline(), opts.handshakeTimeoutMs);
    try {
      if (!(await this.waitForLoginSlot())) {
        return { outcome: 'rejected', errorCode: this.abortedWith?.code ?? ErrorCode.TooManyConnections };
      }
      return await this.handshakeAndSplice(deadline);
    } finally {
      clearTimeout(deadline);
      this.state = SessionState.Closed;
    }
  }

  /** True when the handshake may start; false when the client was refused or left meanwhile. */
  private async waitForLoginSlot(): Promise<boolean> {
    const gate = this.opts.loginGate;
    if (!gate) return true;
    const t0 = performance.now();
    const ticket = gate.acquire();
    if (!ticket) {
      metrics.limitRejected(this.opts.listener, 'login_queue');
      const err = new ProxyError(
        ErrorCode.TooManyConnections,
        `too many connections waiting to log in (limits.loginQueue ${gate.queueLimit})`,
        {
          hint: 'new logins are rate limited by limits.loginsPerSecond; shrink the client pools or raise limits.loginsPerSecond / limits.loginQueue',
        },
      );
      this.log.warn({ code: err.code, limit: 'login_queue' }, `refused: ${err.message}`);
      this.state = SessionState.Closed;
      this.engine.reject(this.client, err);
      return false;
    }
    if (!ticket.isGranted) {
      this.ticket = ticket;
      const gone = (): void => {
        ticket.cancel();
        this.state = SessionState.Closed;
      };
      this.client.on('error', () => undefined);
      this.client.once('close', gone);
      await Promise.race([ticket.granted, new Promise<void>((r) => this.client.once('close', r))]);
      this.client.off('close', gone);
      this.ticket = undefined;
      if (!ticket.isGranted || this.state !== SessionState.Queued) {
        this.log.info(
          { ms: elapsed(this.started), reason: this.abortedWith?.message ?? 'client closed' },
          'left the login queue',
        );
        return false;
      }
      metrics.loginWaited(performance.now() - t0);
    }
    return true;
  }

  private onDeadline(): void {
    const ms = this.opts.handshakeTimeoutMs;
    if (this.state === SessionState.Queued) {
      metrics.limitRejected(this.opts.listener, 'login_wait');
      this.shutdown(
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
    const err = new ProxyError(ErrorCode.HandshakeTimeout, `handshake not completed within ${ms} ms`, {
      hint: 'the client stalled, or the upstream or credentials provider is slow; see the proxy log',
    });
    this.abortedWith ??= err;
    this.conn?.abort(err);
  }

  private async handshakeAndSplice(deadline: NodeJS.Timeout): Promise<SessionResult> {
    const { client, opts, log } = this;
    this.state = SessionState.Handshaking;
    const conn = (this.conn = this.engine.accept(client, log));
    let result;
    try {
      result = await conn.run();
    } catch (err) {
      const e = this.abortedWith ?? asProxyError(err);
      this.identify();
      // A client that connects and leaves (a TCP health check) is routine, not a warning.
      const level =
        e.code === ErrorCode.Internal ? 'error' : e.code === ErrorCode.ClientGone ? 'debug' : 'warn';
      log[level](
        {
          ...withoutIdentity(conn.info),
          code: e.code,
          err: e.code === ErrorCode.Internal ? e.cause : undefined,
          ms: elapsed(this.started),
        },
        `handshake failed: ${e.message}`,
      );
      metrics.handshakeFailed(opts.listener, e);
      return { outcome: 'failed', errorCode: e.code };
    } finally {
      clearTimeout(deadline);
    }
    if (!result) {
      log.debug({ ms: elapsed(this.started) }, 'request handled');
      return { outcome: 'handled' };
    }
    this.state = SessionState.Spliced;
    this.identify();
    const handshakeMs = elapsed(this.started);
    log.info({ ...withoutIdentity(conn.info), timings: conn.timings, ms: handshakeMs }, 'logged in');
    metrics.handshakeCompleted(opts.listener, conn.timings, handshakeMs);
    const { downstream, upstream } = result;
    const end = await splice(downstream, upstream, result.downstreamLeftover, result.upstreamLeftover, {
      idleTimeoutMs: opts.idleTimeoutMs ?? 0,
      signal: this.stopSplice.signal,
    });
    result.onClose?.();
    const durationMs = elapsed(this.started);
    const bytes = { fromClient: client.bytesRead, toClient: client.bytesWritten };
    log.info(
      { bytesFromClient: bytes.fromClient, bytesToClient: bytes.toClient, durationMs, reason: end.reason },
      'closed',
    );
    metrics.sessionClosed(opts.listener, end.kind, bytes, durationMs);
    return { outcome: 'spliced' };
  }

  /** Adds user and database to this connection's log lines once the client named them. */
  private identify(): void {
    const info = this.conn?.info;
    if (!info || (info.user === undefined && info.database === undefined)) return;
    this.log.setBindings({ user: info.user, database: info.database });
  }
}

/** Runs one connection to its end (see Session). */
export function runSession(
  client: net.Socket,
  engine: Engine,
  rootLog: Logger,
  opts: SessionOptions,
): Promise<SessionResult> {
  return new Session(client, engine, rootLog, opts).run();
}

function withoutIdentity<T extends { user?: unknown; database?: unknown }>(
  info: T,
): Omit<T, 'user' | 'database'> {
  const { user: _user, database: _database, ...rest } = info;
  return rest;
}

function elapsed(t0: number): number {
  return Math.round((performance.now() - t0) * 10) / 10;
}
