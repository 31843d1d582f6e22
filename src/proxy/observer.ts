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
  /**
   * A session was spliced: `client` is its client socket, whose own byte counters metrics read
   * at scrape time (nothing is counted per chunk). sessionClosed ends it.
   */
  sessionSpliced(listener: string, client: ByteCounts): void;
  /** The handshake failed with `err`. */
  handshakeFailed(listener: string, err: ProxyError): void;
  /** A spliced session ended; bytes are the client socket's totals; `client` as given to sessionSpliced. */
  sessionClosed(
    listener: string,
    reason: CloseReason,
    bytes: { fromClient: number; toClient: number },
    durationMs: number,
    client?: ByteCounts,
  ): void;
}

/** A socket's own byte counters (net.Socket bytesRead / bytesWritten). */
export interface ByteCounts {
  readonly bytesRead: number;
  readonly bytesWritten: number;
}

/** Observes nothing: the default where no metrics are wanted. */
export const noopObserver: ProxyObserver = {
  connectionOpened: () => undefined,
  connectionClosed: () => undefined,
  connectionRefused: () => undefined,
  limitRejected: () => undefined,
  loginWaited: () => undefined,
  handshakeCompleted: () => undefined,
  sessionSpliced: () => undefined,
  handshakeFailed: () => undefined,
  sessionClosed: () => undefined,
};

/** Why a client found no warm session (listeners[].prewarm). */
export type PrewarmMiss =
  /** The client's (user, database) is neither configured nor learned. */
  | 'no_key'
  /** No ready session for the key (all handed out or still logging in). */
  | 'empty'
  /** Replication, a startup option that cannot be set after login, or startup parameters the session cannot reach. */
  | 'startup'
  /** Another protocol version than the warm session's. */
  | 'protocol'
  /** MySQL: capability flags or character set differ from the warm session's. */
  | 'capabilities'
  /** The server refused applying the client's parameters (SET / COM_INIT_DB). */
  | 'apply_failed';

/** Why a warm session was closed without being handed out. */
export type PrewarmDiscard =
  /** Older than prewarm.maxAgeSeconds. */
  | 'max_age'
  /** The server closed it, or sent something, while it was idle. */
  | 'closed'
  /** Found dead at hand-out. */
  | 'dead'
  /** Its learned key was dropped (least recently used, or its logins kept failing). */
  | 'evicted'
  /** Applying the client's parameters failed after it was taken. */
  | 'apply_failed'
  /** Its key's clients changed (MySQL capabilities or character set): no client could use it. */
  | 'stale'
  /** MySQL: its greeting went to a client that could not use it (another user or capabilities). */
  | 'greeted'
  /** The listener closed or was replaced. */
  | 'shutdown';

/**
 * Events of the warm-session pool (src/proxy/prewarm.ts). `key` is a label from the
 * configuration (`user/database`) or `learned` for every learned key.
 */
export interface PrewarmObserver {
  /**
   * Registers a pool's ready sessions per key label, read at each scrape (nothing is recorded
   * as sessions come and go). Returns the function that unregisters exactly this registration.
   */
  prewarmPool(listener: string, ready: () => Map<string, number>): () => void;
  /** A warm session went to a client. */
  prewarmHandedOut(listener: string, key: string): void;
  /** A client got a fresh login instead of a warm session. */
  prewarmMissed(listener: string, key: string, reason: PrewarmMiss): void;
  /** A warm session was closed unused. */
  prewarmDiscarded(listener: string, key: string, reason: PrewarmDiscard): void;
  /** A refill login failed (the key backs off). */
  prewarmLoginFailed(listener: string, key: string): void;
}

/** Observes no pool events. */
export const noopPrewarmObserver: PrewarmObserver = {
  prewarmPool: () => () => undefined,
  prewarmHandedOut: () => undefined,
  prewarmMissed: () => undefined,
  prewarmDiscarded: () => undefined,
  prewarmLoginFailed: () => undefined,
};
