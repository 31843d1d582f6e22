import type net from 'node:net';
import type tls from 'node:tls';
import type { Listener } from '../config/schema';
import type { TokenSource } from '../credentials/tokens';
import type { Dialer, UpstreamTarget } from '../net/dial';
import type { Duplex } from 'node:stream';
import type { ConnectionLogger } from '../log';
import type { ProxyError } from '../errors';
import { endWith } from './handshake';

/** Handshake phase durations in milliseconds, logged at login and fed to metrics. */
export interface PhaseTimings {
  /** Local handshake: TLS upgrade, startup packet, local auth. */
  downstreamMs?: number;
  upstreamConnectMs?: number;
  upstreamTlsMs?: number;
  /** From the first login message to the server's final "ready". */
  upstreamLoginMs?: number;
  /** Token retrieval as seen by the session (0 when cached and ready). */
  tokenMs?: number;
}

/** Who the session is, once the client's startup is known. No secrets. */
export interface SessionInfo {
  user?: string;
  database?: string;
  upstreamUser?: string;
  applicationName?: string;
  clientTls?: boolean;
  tlsCipher?: string;
  /** The client got a pre-warmed upstream session (listeners[].prewarm), not a fresh login. */
  prewarmed?: boolean;
  /** The endpoint name logged in to (upstream.host). */
  upstreamHost?: string;
  /** host:port actually dialled: the upstream socket's peer address ([v6]:port for IPv6). */
  upstreamAddress?: string;
  /**
   * The server's id for this connection, to match pg_stat_activity.pid / RDS logs (Postgres:
   * the BackendKeyData pid) or SHOW PROCESSLIST / CONNECTION_ID() (MySQL: the greeting's thread id).
   */
  serverConnectionId?: number;
}

/** Both legs, logged in, ready to splice. Ownership of both sockets passes to the caller. */
export interface HandshakeResult {
  downstream: Duplex;
  upstream: Duplex;
  /** Bytes the client sent that the handshake read but did not consume; go upstream first. */
  downstreamLeftover: Buffer;
  /** Bytes the server sent that the handshake read but did not relay; go downstream first. */
  upstreamLeftover: Buffer;
  /** Called once when the session ends (e.g. forget a cancel key). */
  onClose?: () => void;
}

/** One accepted connection's handshake. */
export interface EngineConnection {
  /** What is known about the client so far; grows as the handshake proceeds. */
  readonly info: SessionInfo;
  readonly timings: PhaseTimings;
  /**
   * Runs the handshake. Resolves with both legs when logged in, or null when the connection was
   * a request that needs no session (a Postgres CancelRequest) and has been fully handled.
   * On failure, or when the session's signal aborts, the engine has sent the protocol's error to
   * the client (if it can still take one) and closed both legs; the rejection is a ProxyError for
   * logging: the signal's reason when it was aborted.
   */
  run(): Promise<HandshakeResult | null>;
}

/** What the Session hands an engine with each accepted socket. */
export interface HandshakeContext {
  log: ConnectionLogger;
  /** Aborted with a ProxyError (deadline, shutdown, client gone): every step of the handshake stops. */
  signal: AbortSignal;
  /**
   * Waits for a login slot (limits.loginsPerSecond). The engine calls it once, right before a
   * fresh upstream login; a client handed a pre-warmed session (or a cancel request) takes none.
   * Rejects with a ProxyError (queue full: TooManyConnections) that the engine sends as usual.
   */
  loginSlot(): Promise<void>;
  /** What the engine's `greet` returned for this client, if it greeted it on accept. */
  greeted?: unknown;
}

/** What every engine needs, resolved once from its listener's config (see app.ts buildEngine). */
export interface EngineOptions {
  listener: Listener;
  dialer: Dialer;
  /** IAM tokens or a static password, per auth.mode. */
  secrets: TokenSource;
  upstreamCa: string[];
  /** Undefined when client.tls is off. */
  secureContext: tls.SecureContext | undefined;
  /** Configured local users with their passwords (client.auth: password). */
  localUsers: { name: string; password: string }[];
}

/** Per-listener engine: turns accepted sockets into handshakes. */
export interface Engine {
  /**
   * Optional, called on accept before the session is set up: writes the engine's first bytes
   * when they need nothing from the client (MySQL with a warm session ready: its greeting), so
   * the client answers while the session is built. Returns what `accept` continues from (as
   * `ctx.greeted`), or undefined when it sent nothing. `accept` follows in the same tick.
   */
  greet?(client: net.Socket): unknown;
  /** Takes ownership of `client` for the duration of the handshake. */
  accept(client: net.Socket, ctx: HandshakeContext): EngineConnection;
  /** Sends a protocol-native error on a socket before any handshake (limits, shutdown) and closes it. */
  reject(client: net.Socket, err: ProxyError): void;
  /** Starts background work (the prewarm pool) once the listener is committed. */
  start?(): void;
  /** Stops background work and closes what it holds (warm upstream sessions). */
  close?(): void;
}

/** An upstream connection verified up to TLS, ready for one login attempt (doctor's check). */
export interface ProbeSession {
  tls: tls.TLSSocket;
  /** The database the login asks for. */
  database: string | undefined;
  /**
   * Logs in with `secret`. Resolves with undefined, or with a note when the server accepted the
   * credentials but not the database (the login itself works). Rejects with a ProxyError.
   */
  login(secret: string): Promise<string | undefined>;
  close(): void;
}

/** Each engine's check of its upstream: dial, TLS, and a login on request. */
export type UpstreamProbe = (
  target: UpstreamTarget,
  user: string,
  database: string | undefined,
) => Promise<ProbeSession>;

/** `host:port` of a connected socket's peer (`[v6]:port` for IPv6); undefined once closed. */
export function peerAddress(s: net.Socket): string | undefined {
  const { remoteAddress: a, remotePort: p } = s;
  if (a === undefined || p === undefined) return undefined;
  return a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`;
}

/**
 * What both engines share: the life of their warm-session pool (listeners[].prewarm), and a
 * refusal before any handshake (limits, shutdown) sent in the protocol's own words.
 */
export abstract class EngineBase implements Engine {
  /** Warm upstream sessions (listeners[].prewarm); undefined when off. */
  abstract readonly warm: { readonly pool: { start(): void; close(): void } } | undefined;

  abstract accept(client: net.Socket, ctx: HandshakeContext): EngineConnection;

  /** The protocol's first-packet error for `err`, sent by reject(). */
  protected abstract refusal(err: ProxyError): Buffer;

  start(): void {
    this.warm?.pool.start();
  }

  close(): void {
    this.warm?.pool.close();
  }

  reject(client: net.Socket, err: ProxyError): void {
    client.on('error', () => undefined);
    endWith(client, this.refusal(err));
  }
}
