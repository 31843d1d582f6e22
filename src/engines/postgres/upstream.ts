import type tls from 'node:tls';
import { upstreamTls, type UpstreamTarget } from '../../net/dial';
import { PG_ALPN } from './downstream';
import { SocketReader } from '../../net/reader';
import { ErrorCode, ProxyError, ScramError } from '../../errors';
import type { PhaseTimings } from '../../proxy/engine';
import { elapsedMs } from '../../proxy/handshake';
import { onAbort } from '../../abort';
import { ScramClient, SCRAM_MECHANISM, md5Response } from './scram';
import {
  Backend,
  buildCancel,
  buildStartup,
  Field,
  MAX_HANDSHAKE_MESSAGE,
  parseAuth,
  parseBackendKey,
  parseErrorFields,
  passwordMessage,
  readMessage,
  saslInitial,
  saslResponse,
  sslRequest,
} from './wire';

export type { UpstreamTarget };

/** A logged-in upstream, stopped right after its first ReadyForQuery. */
export interface UpstreamSession {
  /** Verified TLS socket; the caller owns it. */
  socket: tls.TLSSocket;
  /** Frames to relay verbatim: NegotiateProtocolVersion, AuthenticationOk .. ReadyForQuery. */
  relay: Buffer[];
  /** Bytes read after ReadyForQuery (normally none). */
  leftover: Buffer;
  backendKey?: { pid: number; key: Buffer };
}

/** Byte 'S' / 'N' answers to SSLRequest. */
const SSL_YES = 0x53;
const SSL_NO = 0x4e;

/**
 * Dials, then SSLRequest and verify-full TLS. Exactly one answer byte is read; a server that
 * says anything but 'S', or sends more bytes before TLS, is refused (CVE-2021-23222 class).
 * Resolves with the verified TLS socket (owning the raw one). Aborting `signal` at any step
 * destroys the socket and rejects with the signal's reason.
 */
export async function connectTls(
  t: UpstreamTarget,
  timings?: PhaseTimings,
  signal?: AbortSignal,
): Promise<tls.TLSSocket> {
  let t0 = performance.now();
  const raw = await t.dialer.dial(t.dial, signal);
  if (timings) timings.upstreamConnectMs = elapsedMs(t0);
  t0 = performance.now();
  if (t.negotiation === 'direct') {
    // PostgreSQL 17+ `sslnegotiation=direct` and Aurora's express gateway: no SSLRequest; the
    // ClientHello is the first byte, with SNI = host and ALPN postgresql, which the server must accept.
    const s = await upstreamTls(raw, { ...t.tls, alpn: [PG_ALPN] }, signal).catch((err: unknown) => {
      // Only a handshake the server broke off; a certificate rejection keeps its own words.
      if (!(err instanceof ProxyError) || err.code !== ErrorCode.UpstreamTls || err.cause === undefined)
        throw err;
      throw new ProxyError(
        ErrorCode.UpstreamTls,
        `direct TLS with upstream ${t.dial.host} failed: ${err.message}`,
        {
          cause: err,
          hint: 'upstream.tls.negotiation: direct needs PostgreSQL 17+ or an Aurora PostgreSQL express endpoint; use negotiation: postgres for older servers and RDS',
        },
      );
    });
    if (s.alpnProtocol !== PG_ALPN) {
      s.destroy();
      throw new ProxyError(
        ErrorCode.UpstreamTls,
        `upstream ${t.dial.host} did not accept ALPN "${PG_ALPN}" for direct TLS`,
        {
          hint: 'use upstream.tls.negotiation: postgres unless the server is PostgreSQL 17+ or an Aurora PostgreSQL express endpoint',
        },
      );
    }
    if (timings) timings.upstreamTlsMs = elapsedMs(t0);
    return s;
  }
  const reader = new SocketReader(raw, 64, 'server', signal);
  try {
    raw.write(sslRequest());
    const answer = (await reader.read(1))[0];
    if (answer !== SSL_YES) {
      throw new ProxyError(
        ErrorCode.UpstreamTls,
        answer === SSL_NO
          ? `upstream ${t.dial.host} refused TLS (answered 'N' to SSLRequest); IAM authentication requires TLS`
          : `upstream ${t.dial.host} answered SSLRequest with byte 0x${(answer ?? 0).toString(16)}; is it a PostgreSQL server?`,
        {
          hint: 'enable ssl on the server (RDS always has it), and check upstream.host/port point at PostgreSQL',
        },
      );
    }
    if (reader.available > 0) {
      throw new ProxyError(
        ErrorCode.UpstreamProtocol,
        `upstream ${t.dial.host} sent unencrypted data after its TLS answer; refusing the connection`,
      );
    }
  } catch (err) {
    raw.destroy();
    if (err instanceof ProxyError || signal?.aborted) throw err;
    throw new ProxyError(
      ErrorCode.UpstreamUnreachable,
      `upstream ${t.dial.host} closed the connection before TLS: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  reader.detach();
  const s = await upstreamTls(raw, t.tls, signal);
  if (timings) timings.upstreamTlsMs = elapsedMs(t0);
  return s;
}

export interface LoginOptions {
  version: number;
  /** Startup parameters, already mapped (user, database), in the client's order. */
  params: [string, string][];
  user: string;
  /** The secret (token or password); called only when the server asks, after TLS is verified. */
  secret: () => Promise<string>;
}

/**
 * Logs in over an already-verified TLS socket: sends the startup message, answers cleartext,
 * MD5 or SCRAM-SHA-256 with the secret, and collects what must be relayed to the client.
 * A server ErrorResponse becomes ProxyError(UpstreamAuth) carrying the server's fields. On
 * failure the socket is destroyed.
 */
export async function login(
  socket: tls.TLSSocket,
  o: LoginOptions,
  timings?: PhaseTimings,
  signal?: AbortSignal,
): Promise<UpstreamSession> {
  const t0 = performance.now();
  const reader = new SocketReader(socket, MAX_HANDSHAKE_MESSAGE * 2, 'server', signal);
  const relay: Buffer[] = [];
  let backendKey: UpstreamSession['backendKey'];
  let authenticated = false;
  let scram: ScramClient | undefined;
  const getSecret = o.secret;
  try {
    socket.write(buildStartup(o.version, o.params));
    for (;;) {
      const msg = await readMessage(reader, MAX_HANDSHAKE_MESSAGE, ErrorCode.UpstreamProtocol);
      switch (msg.type) {
        case Backend.Authentication: {
          const auth = parseAuth(msg.raw);
          switch (auth.name) {
            case 'authenticationOk':
              authenticated = true;
              relay.push(msg.raw);
              break;
            case 'authenticationCleartextPassword':
              socket.write(passwordMessage(await getSecret()));
              break;
            case 'authenticationMD5Password':
              socket.write(passwordMessage(md5Response(o.user, await getSecret(), auth.salt)));
              break;
            case 'authenticationSASL':
              if (!auth.mechanisms.includes(SCRAM_MECHANISM)) {
                throw new ProxyError(
                  ErrorCode.UpstreamProtocol,
                  `upstream offers SASL mechanisms ${auth.mechanisms.join(', ')}; only ${SCRAM_MECHANISM} is supported`,
                );
              }
              scram = new ScramClient(await getSecret());
              socket.write(saslInitial(SCRAM_MECHANISM, scram.first()));
              break;
            case 'authenticationSASLContinue':
              if (!scram) throw new ProxyError(ErrorCode.UpstreamProtocol, 'SASLContinue without SASL');
              socket.write(saslResponse(scram.final(auth.data)));
              break;
            case 'authenticationSASLFinal':
              if (!scram) throw new ProxyError(ErrorCode.UpstreamProtocol, 'SASLFinal without SASL');
              scram.verifyFinal(auth.data);
              break;
            case 'other':
              throw new ProxyError(
                ErrorCode.UpstreamProtocol,
                `upstream asked for authentication method ${auth.code}, which the proxy does not support (it answers cleartext, MD5 and SCRAM-SHA-256)`,
                { hint: 'the database user must use IAM (rds_iam) or password authentication' },
              );
          }
          break;
        }
        case Backend.ErrorResponse: {
          const fields = parseErrorFields(msg.body);
          const sqlState = fields.get(Field.Code);
          throw new ProxyError(
            authenticated ? ErrorCode.UpstreamProtocol : ErrorCode.UpstreamAuth,
            fields.get(Field.Message) ?? 'upstream error',
            {
              serverError: {
                message: fields.get(Field.Message) ?? '',
                fields,
                ...(sqlState ? { sqlState } : {}),
              },
            },
          );
        }
        case Backend.BackendKeyData:
          backendKey = parseBackendKey(msg.body);
          relay.push(msg.raw);
          break;
        case Backend.ParameterStatus:
        case Backend.NoticeResponse:
        case Backend.NegotiateProtocolVersion:
          relay.push(msg.raw);
          break;
        case Backend.ReadyForQuery:
          if (!authenticated)
            throw new ProxyError(
              ErrorCode.UpstreamProtocol,
              'upstream sent ReadyForQuery before AuthenticationOk',
            );
          relay.push(msg.raw);
          if (timings) timings.upstreamLoginMs = elapsedMs(t0);
          return { socket, relay, leftover: reader.detach(), ...(backendKey ? { backendKey } : {}) };
        default:
          throw new ProxyError(
            ErrorCode.UpstreamProtocol,
            `unexpected message '${String.fromCharCode(msg.type)}' from upstream during login`,
          );
      }
    }
  } catch (err) {
    reader.detach();
    socket.destroy();
    if (err instanceof ProxyError || signal?.aborted) throw err;
    if (err instanceof ScramError) {
      throw new ProxyError(ErrorCode.UpstreamAuth, `upstream SCRAM exchange failed: ${err.message}`, {
        cause: err,
      });
    }
    throw new ProxyError(
      ErrorCode.UpstreamUnreachable,
      `upstream closed the connection during login: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/**
 * Forwards a CancelRequest over verified TLS (SSLRequest first), as the server expects, and
 * waits for the server to close. Best effort; aborting `signal` gives up.
 */
export async function sendCancel(
  t: UpstreamTarget,
  pid: number,
  key: Buffer,
  signal?: AbortSignal,
): Promise<void> {
  const s = await connectTls(t, undefined, signal);
  const stopWatching = onAbort(signal, () => s.destroy());
  await new Promise<void>((resolve) => {
    s.on('error', () => resolve());
    s.on('close', () => resolve());
    s.end(buildCancel(pid, key));
  });
  stopWatching();
}
