import type net from 'node:net';
import type tls from 'node:tls';
import type { Listener } from '../config/schema';
import type { TokenSource } from '../credentials/tokens';
import type { Dialer } from '../net/dial';
import type { Duplex } from 'node:stream';
import type { Logger } from '../log';
import type { ProxyError } from '../errors';

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
   * On failure the engine has already sent the protocol's error to the client and closed both
   * legs; the rejection (a ProxyError) is for logging.
   */
  run(): Promise<HandshakeResult | null>;
  /** Sends the protocol's error for `err` (if the client can still take one) and closes both legs. Idempotent. */
  abort(err: ProxyError): void;
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
  /** Takes ownership of `client` for the duration of the handshake. */
  accept(client: net.Socket, log: Logger): EngineConnection;
  /** Sends a protocol-native error on a socket before any handshake (limits, shutdown) and closes it. */
  reject(client: net.Socket, err: ProxyError): void;
}
