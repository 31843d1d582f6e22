/**
 * The proxy's metrics: ONE prom-client registry, served at /metrics by the admin server. The rest
 * of the code never touches prom-client; it calls the intent-named functions of `metrics` below
 * (connectionOpened, handshakeCompleted, ...). Names follow Prometheus conventions: prefix
 * `rds_iam_proxy_`, counters end in `_total`, durations are `_seconds`, timestamps are
 * `_timestamp_seconds` (Unix time). Nothing here runs per spliced chunk: byte counts are read
 * from the client sockets' own counters at scrape time and once more when a session closes; warm
 * sessions ready are read from the pools at scrape time, so a hand-out records only its count.
 *
 * prom-client is loaded on first use, not at start. A process without an admin server can
 * `deferMetrics()` (the CLI does): recording is then a no-op until `enableMetrics()` (the runtime
 * calls it before it starts an admin server), so an idle sidecar never loads prom-client, its
 * default collectors or its event-loop monitor (docs/PERFORMANCE.md). Gauges that describe state
 * (build info, draining, clock skew, credentials expiry) are kept and applied when enabled.
 */
import type * as PromClient from 'prom-client';
import type { PhaseTimings } from '../proxy/engine';
import type {
  ByteCounts,
  CloseReason,
  ConnectionOutcome,
  LimitName,
  PrewarmDiscard,
  PrewarmMiss,
  PrewarmObserver,
  ProxyObserver,
} from '../proxy/observer';
import { ErrorCode, type ProxyError } from '../errors';

const PHASES: ReadonlyArray<readonly [keyof PhaseTimings, string]> = [
  ['downstreamMs', 'downstream'],
  ['tokenMs', 'token'],
  ['upstreamConnectMs', 'upstream_connect'],
  ['upstreamTlsMs', 'upstream_tls'],
  ['upstreamLoginMs', 'upstream_login'],
];

/** Error codes raised while reaching or logging in to the upstream (vs. client-side failures). */
const UPSTREAM_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ErrorCode.UpstreamUnreachable,
  ErrorCode.UpstreamTls,
  ErrorCode.UpstreamAuth,
  ErrorCode.UpstreamProtocol,
  ErrorCode.Credentials,
]);

/** What a token is for, as far as metrics care. Never the token itself. */
export interface TokenTarget {
  host: string;
  port: number;
  user: string;
}

const tokenLabels = (t: TokenTarget): { endpoint: string; user: string } => ({
  endpoint: `${t.host}:${t.port}`,
  user: t.user,
});

/** The server's own code for a failure: SQLSTATE, MySQL errno, or the socket errno of the cause. */
function serverCode(err: ProxyError): string {
  if (err.serverError?.sqlState) return err.serverError.sqlState;
  if (err.serverError?.errno !== undefined) return String(err.serverError.errno);
  const cause = err.cause as NodeJS.ErrnoException | undefined;
  if (cause && typeof cause === 'object' && typeof cause.code === 'string') return cause.code;
  return '';
}

/** Builds the registry and every metric: the only place prom-client is loaded. */
function createBackend() {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const client = require('prom-client') as typeof PromClient;
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry });

  const registers = [registry];

  const connectionsActive = new client.Gauge({
    name: 'rds_iam_proxy_connections_active',
    help: 'Client connections open now (queued, handshaking or spliced), per listener',
    labelNames: ['listener'],
    registers,
  });
  const connectionsTotal = new client.Counter({
    name: 'rds_iam_proxy_connections_total',
    help: 'Client connections that ended, per listener and outcome (spliced, handled, failed, rejected)',
    labelNames: ['listener', 'outcome'],
    registers,
  });
  const handshakeSeconds = new client.Histogram({
    name: 'rds_iam_proxy_handshake_duration_seconds',
    help: 'Duration of each handshake phase of successful logins (downstream, token, upstream_connect, upstream_tls, upstream_login, total)',
    labelNames: ['listener', 'phase'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers,
  });
  const handshakeFailures = new client.Counter({
    name: 'rds_iam_proxy_handshake_failures_total',
    help: 'Handshakes that failed, per listener and proxy error code',
    labelNames: ['listener', 'code'],
    registers,
  });
  const upstreamLoginFailures = new client.Counter({
    name: 'rds_iam_proxy_upstream_login_failures_total',
    help: 'Failures to reach or log in to the upstream, per listener, proxy error code and server code (SQLSTATE, MySQL errno or socket errno)',
    labelNames: ['listener', 'code', 'server_code'],
    registers,
  });
  const sessionSeconds = new client.Histogram({
    name: 'rds_iam_proxy_session_duration_seconds',
    help: 'Lifetime of spliced sessions, from accept to close',
    labelNames: ['listener'],
    buckets: [0.01, 0.1, 1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600],
    registers,
  });
  const sessionsClosed = new client.Counter({
    name: 'rds_iam_proxy_sessions_closed_total',
    help: 'Spliced sessions that ended, per listener and reason (client_closed, server_closed, client_error, server_error, idle_timeout, shutdown)',
    labelNames: ['listener', 'reason'],
    registers,
  });
  /** Spliced sessions still open -> the bytes of each already added to rds_iam_proxy_bytes_total. */
  const openSessions = new Map<ByteCounts, { listener: string; fromClient: number; toClient: number }>();

  /** Adds what a session moved since it was last counted (counters only grow). */
  function countBytes(
    s: { listener: string; fromClient: number; toClient: number },
    fromClient: number,
    toClient: number,
  ): void {
    if (fromClient > s.fromClient) {
      bytesTotal.inc({ listener: s.listener, direction: 'upstream' }, fromClient - s.fromClient);
      s.fromClient = fromClient;
    }
    if (toClient > s.toClient) {
      bytesTotal.inc({ listener: s.listener, direction: 'downstream' }, toClient - s.toClient);
      s.toClient = toClient;
    }
  }

  const bytesTotal: PromClient.Counter = new client.Counter({
    name: 'rds_iam_proxy_bytes_total',
    help: 'Bytes on the client socket of spliced sessions, live (read from the sockets at each scrape): direction upstream = from the client, downstream = to the client',
    labelNames: ['listener', 'direction'],
    registers,
    collect() {
      for (const [socket, s] of openSessions) countBytes(s, socket.bytesRead, socket.bytesWritten);
    },
  });
  const limitRejections = new client.Counter({
    name: 'rds_iam_proxy_limit_rejections_total',
    help: 'Connections refused by a limit with 53300 / 1040, per listener and limit',
    labelNames: ['listener', 'limit'],
    registers,
  });
  const loginQueueLength = new client.Gauge({
    name: 'rds_iam_proxy_login_queue_length',
    help: 'Connections waiting for a login slot (limits.loginsPerSecond)',
    registers,
  });
  const loginWaitSeconds = new client.Histogram({
    name: 'rds_iam_proxy_login_wait_seconds',
    help: 'Time connections waited for a login slot before their handshake started',
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers,
  });
  const tokenMints = new client.Counter({
    name: 'rds_iam_proxy_token_mints_total',
    help: 'IAM auth tokens signed (logins and background refreshes), per endpoint (host:port) and database user',
    labelNames: ['endpoint', 'user'],
    registers,
  });
  const tokenMintFailures = new client.Counter({
    name: 'rds_iam_proxy_token_mint_failures_total',
    help: 'Failed token mints and background refreshes (usually credentials), per endpoint, user and kind (login, refresh)',
    labelNames: ['endpoint', 'user', 'kind'],
    registers,
  });
  const tokenExpiry = new client.Gauge({
    name: 'rds_iam_proxy_token_expiry_timestamp_seconds',
    help: 'When the newest token per endpoint and user stops working (Unix time; capped by the credentials)',
    labelNames: ['endpoint', 'user'],
    registers,
  });
  const credentialsExpiry = new client.Gauge({
    name: 'rds_iam_proxy_credentials_expiry_timestamp_seconds',
    help: 'When the AWS credentials last used for signing expire (Unix time); 0 for credentials that do not expire or before the first mint',
    registers,
  });
  const clockSkew = new client.Gauge({
    name: 'rds_iam_proxy_clock_skew_seconds',
    help: "This host's clock minus AWS's clock, seconds (RDS refuses tokens when it is off by minutes)",
    registers,
  });
  const draining = new client.Gauge({
    name: 'rds_iam_proxy_draining',
    help: '1 while shutting down (SIGTERM, SIGINT, POST /quitquitquit), else 0',
    registers,
  });
  const configReloads = new client.Counter({
    name: 'rds_iam_proxy_config_reloads_total',
    help: 'Configuration reloads (SIGHUP), per result (success, failure)',
    labelNames: ['result'],
    registers,
  });
  const buildInfo = new client.Gauge({
    name: 'rds_iam_proxy_build_info',
    help: 'Always 1; labels carry the proxy and Node.js versions',
    labelNames: ['version', 'node'],
    registers,
  });
  const prewarmReady = new client.Gauge({
    name: 'rds_iam_proxy_prewarm_ready',
    help: 'Warm upstream sessions ready now, per listener and key (user/database from the config, or "learned")',
    labelNames: ['listener', 'key'],
    registers,
    collect() {
      prewarmReady.reset();
      for (const p of warmPools)
        for (const [key, n] of p.ready()) prewarmReady.inc({ listener: p.listener, key }, n);
    },
  });
  const prewarmHandouts = new client.Counter({
    name: 'rds_iam_proxy_prewarm_handouts_total',
    help: 'Warm upstream sessions handed to a client, per listener and key',
    labelNames: ['listener', 'key'],
    registers,
  });
  const prewarmMisses = new client.Counter({
    name: 'rds_iam_proxy_prewarm_misses_total',
    help: 'Clients of a prewarm listener that got a fresh login instead, per listener, key and reason (no_key, empty, startup, protocol, capabilities, apply_failed)',
    labelNames: ['listener', 'key', 'reason'],
    registers,
  });
  const prewarmDiscards = new client.Counter({
    name: 'rds_iam_proxy_prewarm_discards_total',
    help: 'Warm upstream sessions closed unused, per listener, key and reason (max_age, closed, dead, evicted, apply_failed, stale, greeted, shutdown)',
    labelNames: ['listener', 'key', 'reason'],
    registers,
  });
  const prewarmLoginFailures = new client.Counter({
    name: 'rds_iam_proxy_prewarm_login_failures_total',
    help: 'Failed refill logins of the warm-session pool (it backs off), per listener and key',
    labelNames: ['listener', 'key'],
    registers,
  });
  for (const result of ['success', 'failure']) configReloads.inc({ result }, 0);
  draining.set(0);
  loginQueueLength.set(0);

  const recorder = {
    /** A connection was accepted (and not refused by a connection limit). */
    connectionOpened(listener: string): void {
      connectionsActive.inc({ listener });
    },
    /** A connection accepted with connectionOpened has ended. */
    connectionClosed(listener: string, outcome: ConnectionOutcome): void {
      connectionsActive.dec({ listener });
      connectionsTotal.inc({ listener, outcome });
    },
    /** A connection was refused on arrival by a connection limit (never counted as active). */
    connectionRefused(listener: string, limit: LimitName): void {
      limitRejections.inc({ listener, limit });
      connectionsTotal.inc({ listener, outcome: 'rejected' });
    },
    /** An accepted connection was refused by the login rate limit (it then ends with outcome 'rejected'). */
    limitRejected(listener: string, limit: LimitName): void {
      limitRejections.inc({ listener, limit });
    },
    /** Logged in upstream: phase timings in milliseconds (as logged) become seconds. */
    handshakeCompleted(listener: string, timings: PhaseTimings, totalMs: number): void {
      for (const [key, phase] of PHASES) {
        const ms = timings[key];
        if (ms !== undefined) handshakeSeconds.observe({ listener, phase }, ms / 1000);
      }
      handshakeSeconds.observe({ listener, phase: 'total' }, totalMs / 1000);
    },
    /** The handshake failed with `err`; upstream-side failures are also counted by server code. */
    handshakeFailed(listener: string, err: ProxyError): void {
      handshakeFailures.inc({ listener, code: err.code });
      if (UPSTREAM_CODES.has(err.code))
        upstreamLoginFailures.inc({ listener, code: err.code, server_code: serverCode(err) });
    },
    /** A session was spliced: its client socket's counters are read at each scrape until it closes. */
    sessionSpliced(listener: string, socket: ByteCounts): void {
      openSessions.set(socket, { listener, fromClient: 0, toClient: 0 });
    },
    /**
     * A spliced session ended; bytes are the client socket's totals. What scrapes already counted
     * for `socket` (as given to sessionSpliced) is not counted again.
     */
    sessionClosed(
      listener: string,
      reason: CloseReason,
      bytes: { fromClient: number; toClient: number },
      durationMs: number,
      socket?: ByteCounts,
    ): void {
      sessionsClosed.inc({ listener, reason });
      const open = socket ? openSessions.get(socket) : undefined;
      if (socket) openSessions.delete(socket);
      countBytes(open ?? { listener, fromClient: 0, toClient: 0 }, bytes.fromClient, bytes.toClient);
      sessionSeconds.observe({ listener }, durationMs / 1000);
    },
    /** Connections now waiting for a login slot. */
    loginQueue(length: number): void {
      loginQueueLength.set(length);
    },
    /** A connection got its login slot after waiting `ms`. */
    loginWaited(ms: number): void {
      loginWaitSeconds.observe(ms / 1000);
    },
    /** A token was signed; `expiresAt` in ms since the epoch. */
    tokenMinted(target: TokenTarget, expiresAt: number): void {
      const labels = tokenLabels(target);
      tokenMints.inc(labels);
      tokenExpiry.set(labels, expiresAt / 1000);
    },
    /** Signing failed, for a login or a background refresh; usually for want of credentials. */
    tokenMintFailed(target: TokenTarget, background: boolean): void {
      tokenMintFailures.inc({ ...tokenLabels(target), kind: background ? 'refresh' : 'login' });
    },
    /** Shutdown started (true) or not (false). */
    draining(on: boolean): void {
      draining.set(on ? 1 : 0);
    },
    /** A SIGHUP reload was applied (true) or refused (false). */
    configReloaded(ok: boolean): void {
      configReloads.inc({ result: ok ? 'success' : 'failure' });
    },
    /** A warm session went to a client. */
    prewarmHandedOut(listener: string, key: string): void {
      prewarmHandouts.inc({ listener, key });
    },
    /** A client got a fresh login instead of a warm session. */
    prewarmMissed(listener: string, key: string, reason: PrewarmMiss): void {
      prewarmMisses.inc({ listener, key, reason });
    },
    /** A warm session was closed unused. */
    prewarmDiscarded(listener: string, key: string, reason: PrewarmDiscard): void {
      prewarmDiscards.inc({ listener, key, reason });
    },
    /** A refill login failed. */
    prewarmLoginFailed(listener: string, key: string): void {
      prewarmLoginFailures.inc({ listener, key });
    },
    /** Sets rds_iam_proxy_build_info once at start. */
    buildInfo(version: string): void {
      buildInfo.set({ version, node: process.versions.node }, 1);
    },
    clockSkew(seconds: number): void {
      clockSkew.set(seconds);
    },
    credentialsExpiry(expiresAt: number | undefined): void {
      credentialsExpiry.set(expiresAt === undefined ? 0 : expiresAt / 1000);
    },
  } satisfies ProxyObserver & Omit<PrewarmObserver, 'prewarmPool'> & Record<string, unknown>;
  return { registry, recorder };
}

type Backend = ReturnType<typeof createBackend>;
type Recorder = Backend['recorder'];

let backend: Backend | undefined;
let deferred = false;
/** Warm-session pools whose ready counts rds_iam_proxy_prewarm_ready reads at each scrape. */
const warmPools = new Set<{ listener: string; ready: () => Map<string, number> }>();
/** State gauges set while deferred, applied when the backend is built. */
const pending: {
  buildInfo?: string;
  draining?: boolean;
  clockSkew?: number;
  credentialsExpiry?: { at: number | undefined };
} = {};

function load(): Backend {
  if (backend) return backend;
  const b = createBackend();
  backend = b;
  if (pending.buildInfo !== undefined) b.recorder.buildInfo(pending.buildInfo);
  if (pending.draining !== undefined) b.recorder.draining(pending.draining);
  if (pending.clockSkew !== undefined) b.recorder.clockSkew(pending.clockSkew);
  if (pending.credentialsExpiry) b.recorder.credentialsExpiry(pending.credentialsExpiry.at);
  return b;
}

/** The recorder, built on first use; undefined while deferred (the call is then dropped). */
function live(): Recorder | undefined {
  return backend ? backend.recorder : deferred ? undefined : load().recorder;
}

/**
 * No admin server: record nothing and do not load prom-client until `enableMetrics()`. No effect
 * once metrics are live. Counters and histograms start counting when enabled.
 */
export function deferMetrics(): void {
  if (!backend) deferred = true;
}

/** Builds the registry now (before an admin server starts); recording is live from here on. */
export function enableMetrics(): void {
  deferred = false;
  load();
}

/**
 * The one prom-client registry. Reading it builds the metrics (tests and embedders read it
 * directly; the admin server goes through renderMetrics).
 */
export const registry: PromClient.Registry = new Proxy({} as PromClient.Registry, {
  get(_target, key) {
    const r = load().registry;
    const v: unknown = Reflect.get(r, key, r);
    return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(r) : v;
  },
});

/**
 * Intent-named recording functions: the only way the rest of the proxy touches metrics. The
 * connection path's events arrive through the ProxyObserver interface (injected by app.ts).
 */
export const metrics = {
  /** A connection was accepted (and not refused by a connection limit). */
  connectionOpened(listener: string): void {
    live()?.connectionOpened(listener);
  },
  /** A connection accepted with connectionOpened has ended. */
  connectionClosed(listener: string, outcome: ConnectionOutcome): void {
    live()?.connectionClosed(listener, outcome);
  },
  /** A connection was refused on arrival by a connection limit (never counted as active). */
  connectionRefused(listener: string, limit: LimitName): void {
    live()?.connectionRefused(listener, limit);
  },
  /** An accepted connection was refused by the login rate limit (it then ends with outcome 'rejected'). */
  limitRejected(listener: string, limit: LimitName): void {
    live()?.limitRejected(listener, limit);
  },
  /** Logged in upstream: phase timings in milliseconds (as logged) become seconds. */
  handshakeCompleted(listener: string, timings: PhaseTimings, totalMs: number): void {
    live()?.handshakeCompleted(listener, timings, totalMs);
  },
  /** The handshake failed with `err`; upstream-side failures are also counted by server code. */
  handshakeFailed(listener: string, err: ProxyError): void {
    live()?.handshakeFailed(listener, err);
  },
  /** A session was spliced: its client socket's counters are read at each scrape until it closes. */
  sessionSpliced(listener: string, socket: ByteCounts): void {
    live()?.sessionSpliced(listener, socket);
  },
  /**
   * A spliced session ended; bytes are the client socket's totals. What scrapes already counted
   * for `socket` (as given to sessionSpliced) is not counted again.
   */
  sessionClosed(
    listener: string,
    reason: CloseReason,
    bytes: { fromClient: number; toClient: number },
    durationMs: number,
    socket?: ByteCounts,
  ): void {
    live()?.sessionClosed(listener, reason, bytes, durationMs, socket);
  },
  /** Connections now waiting for a login slot. */
  loginQueue(length: number): void {
    live()?.loginQueue(length);
  },
  /** A connection got its login slot after waiting `ms`. */
  loginWaited(ms: number): void {
    live()?.loginWaited(ms);
  },
  /** A token was signed; `expiresAt` in ms since the epoch. */
  tokenMinted(target: TokenTarget, expiresAt: number): void {
    live()?.tokenMinted(target, expiresAt);
  },
  /** Signing failed, for a login or a background refresh; usually for want of credentials. */
  tokenMintFailed(target: TokenTarget, background: boolean): void {
    live()?.tokenMintFailed(target, background);
  },
  /** Shutdown started (true) or not (false). */
  draining(on: boolean): void {
    pending.draining = on;
    live()?.draining(on);
  },
  /** A SIGHUP reload was applied (true) or refused (false). */
  configReloaded(ok: boolean): void {
    live()?.configReloaded(ok);
  },
  /** Registers a pool's ready counts per key label, read at each scrape; returns its unregister. */
  prewarmPool(listener: string, ready: () => Map<string, number>): () => void {
    const entry = { listener, ready };
    warmPools.add(entry);
    return () => void warmPools.delete(entry);
  },
  /** A warm session went to a client. */
  prewarmHandedOut(listener: string, key: string): void {
    live()?.prewarmHandedOut(listener, key);
  },
  /** A client got a fresh login instead of a warm session. */
  prewarmMissed(listener: string, key: string, reason: PrewarmMiss): void {
    live()?.prewarmMissed(listener, key, reason);
  },
  /** A warm session was closed unused. */
  prewarmDiscarded(listener: string, key: string, reason: PrewarmDiscard): void {
    live()?.prewarmDiscarded(listener, key, reason);
  },
  /** A refill login failed. */
  prewarmLoginFailed(listener: string, key: string): void {
    live()?.prewarmLoginFailed(listener, key);
  },
  /** Sets rds_iam_proxy_build_info once at start. */
  buildInfo(version: string): void {
    pending.buildInfo = version;
    live()?.buildInfo(version);
  },
} satisfies ProxyObserver & PrewarmObserver & Record<string, unknown>;

/**
 * Records the host clock's offset from AWS (seconds, positive = this host is ahead). Called with
 * each estimate the credentials code makes (the Date headers of STS / IMDS responses).
 */
export function setClockSkew(seconds: number): void {
  pending.clockSkew = seconds;
  live()?.clockSkew(seconds);
}

/**
 * Records when the AWS credentials used for signing expire (ms since the epoch); undefined (long-term
 * keys) sets 0. Called by the credentials code when it gets credentials.
 */
export function setCredentialsExpiry(expiresAt: number | undefined): void {
  pending.credentialsExpiry = { at: expiresAt };
  live()?.credentialsExpiry(expiresAt);
}

/** The /metrics body in the Prometheus text format (builds the registry if it is not yet). */
export async function renderMetrics(): Promise<{ contentType: string; body: string }> {
  const r = load().registry;
  return { contentType: r.contentType, body: await r.metrics() };
}
