/**
 * What the connection path reports as it runs. The listener and the session are told about
 * events through a ProxyObserver that app.ts injects (the Prometheus metrics in admin/metrics.ts);
 * proxy/ itself knows nothing of metrics, and unit tests use the no-op one.
 */
import type { ProxyError } from '../errors';
import type { PhaseTimings } from './engine';

/** How a connection ended. */
export type ConnectionOutcome =
  /** Logged in upstream and spliced until one side closed. */
  | 'spliced'
  /** A request that needed no session (a Postgres CancelRequest). */
  | 'handled'
  /** The handshake failed (the client got the protocol's error). */
  | 'failed'
  /** Refused by a limit (the client got 53300 / 1040) or shut down before its handshake began. */
  | 'rejected';

/** Which limit refused a connection. */
export type LimitName =
  /** listeners[].maxConnections */
  | 'listener_max_connections'
  /** limits.maxConnections */
  | 'max_connections'
  /** limits.loginQueue was full */
  | 'login_queue'
  /** The handshake deadline passed while waiting for a login slot (limits.loginsPerSecond). */
  | 'login_wait';

/** Why a spliced session ended; also the `reason` of the "closed" log line. */
export type CloseReason =
  'client_closed' | 'server_closed' | 'client_error' | 'server_error' | 'idle_timeout' | 'shutdown';

/** Events of the connection path, named for what happened. */
export interface ProxyObserver {
  /** A connection was accepted (and not refused by a connection limit). */
  connectionOpened(listener: string): void;
  /** A connection accepted with connectionOpened has ended. */
  connectionClosed(listener: string, outcome: ConnectionOutcome): void;
  /** A connection was refused on arrival by a connection limit (never counted as open). */
  connectionRefused(listener: string, limit: LimitName): void;
  /** An accepted connection was refused by the login rate limit (it then ends 'rejected'). */
  limitRejected(listener: string, limit: LimitName): void;
  /** A connection got its login slot after waiting `ms` milliseconds. */
  loginWaited(ms: number): void;
  /** Logged in upstream; timings and the total in milliseconds. */
  handshakeCompleted(listener: string, timings: PhaseTimings, totalMs: number): void;
  /** The handshake failed with `err`. */
  handshakeFailed(listener: string, err: ProxyError): void;
  /** A spliced session ended; bytes are the client socket's totals. */
  sessionClosed(
    listener: string,
    reason: CloseReason,
    bytes: { fromClient: number; toClient: number },
    durationMs: number,
  ): void;
}

/** Observes nothing: the default where no metrics are wanted. */
export const noopObserver: ProxyObserver = {
  connectionOpened: () => undefined,
  connectionClosed: () => undefined,
  connectionRefused: () => undefined,
  limitRejected: () => undefined,
  loginWaited: () => undefined,
  handshakeCompleted: () => undefined,
  handshakeFailed: () => undefined,
  sessionClosed: () => undefined,
};
