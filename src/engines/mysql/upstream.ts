/**
 * The upstream leg: dial, read the server's greeting, SSLRequest and verify-full TLS, then log
 * in with HandshakeResponse41 and follow the server's auth exchange (AuthSwitchRequest,
 * AuthMoreData) until OK or ERR. The token is produced only after TLS is verified.
 * https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase.html
 */
import type net from 'node:net';
import type tls from 'node:tls';
import { upstreamTls, type UpstreamTarget } from '../../net/dial';
import { BufferLimitError, PeerClosedError, SocketReader } from '../../net/reader';
import { ErrorCode, ProxyError } from '../../errors';
import type { PhaseTimings } from '../../proxy/engine';
import { elapsedMs } from '../../proxy/handshake';
import { nativeToken, sha2Token } from './auth';
import {
  AuthPlugin,
  buildHandshakeResponse,
  buildSslRequest,
  Cap,
  ErrNo,
  type Greeting,
  type HandshakeResponse,
  Header,
  MalformedPacket,
  MAX_HANDSHAKE_PACKET,
  type Packet,
  PacketTooLarge,
  packet,
  parseAuthSwitch,
  parseErr,
  parseGreeting,
  readPacket,
  Sha2Status,
  switchScramble,
} from './wire';

export type { UpstreamTarget };

/** Capabilities the upstream login needs whatever the client negotiated. */
export const UPSTREAM_REQUIRED_CAPS = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.SSL;

/**
 * The HandshakeResponse41 sent upstream: the client's capabilities (so the command phase is
 * framed the same on both legs) plus what the login needs, its MariaDB extended capabilities,
 * charset, max packet size and attributes; the mapped user and database.
 */
export function upstreamHandshakeResponse(
  client: HandshakeResponse,
  server: Greeting,
  user: string,
  database: string | undefined,
): HandshakeResponse {
  let caps =
    (client.capabilities & ~(Cap.ZSTD_COMPRESSION_ALGORITHM | Cap.MULTI_FACTOR_AUTHENTICATION)) |
    UPSTREAM_REQUIRED_CAPS;
  if (server.capabilities & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA) caps |= Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA;
  else caps &= ~Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA;
  if (database) caps |= Cap.CONNECT_WITH_DB;
  else caps &= ~Cap.CONNECT_WITH_DB;
  if ((server.capabilities & Cap.CONNECT_ATTRS) === 0) caps &= ~Cap.CONNECT_ATTRS;
  return {
    capabilities: caps >>> 0,
    mariadbCapabilities: client.mariadbCapabilities,
    maxPacketSize: client.maxPacketSize,
    charset: client.charset,
    user,
    authData: Buffer.alloc(0),
    authPlugin: AuthPlugin.CLEAR,
    ...(database ? { database } : {}),
    ...(client.attributes ? { attributes: client.attributes } : {}),
  };
}

/** Packet I/O with sequence ids, over a socket or the command-phase gate. */
export interface PacketIO {
  read(): Promise<Packet>;
  write(seq: number, payload: Buffer): void;
}

/** The server side of the handshake: a socket (plain, then TLS) and a reader over it. */
export class ServerLeg implements PacketIO {
  socket: net.Socket | tls.TLSSocket;
  reader: SocketReader;

  constructor(
    readonly raw: net.Socket,
    private readonly host: string,
    /** The handshake's: aborting it fails pending reads with its reason. */
    private readonly signal?: AbortSignal,
  ) {
    this.socket = raw;
    this.reader = new SocketReader(raw, MAX_HANDSHAKE_PACKET * 2, 'server', signal);
  }

  async read(): Promise<Packet> {
    try {
      return await readPacket(this.reader);
    } catch (err) {
      if (err instanceof PacketTooLarge || err instanceof BufferLimitError) {
        throw new ProxyError(
          ErrorCode.UpstreamProtocol,
          `upstream ${this.host} sent an oversized handshake packet: ${err.message}`,
        );
      }
      if (err instanceof PeerClosedError) {
        throw new ProxyError(
          ErrorCode.UpstreamUnreachable,
          `upstream ${this.host} closed the connection during the handshake`,
          {
            cause: err,
            hint: 'the server may limit connections or require a different client configuration; see its error log',
          },
        );
      }
      throw err;
    }
  }

  write(seq: number, payload: Buffer): void {
    this.socket.write(packet(seq, payload));
  }

  /** Switches to the verified TLS socket; the old reader must already be detached. */
  useTls(s: tls.TLSSocket): void {
    this.socket = s;
    this.reader = new SocketReader(s, MAX_HANDSHAKE_PACKET * 2, 'server', this.signal);
  }

  /** Stops reading and closes both the TLS and the raw socket. */
  destroy(): void {
    this.reader.detach();
    this.socket.destroy();
    this.raw.destroy();
  }
}

/** Upstream connected and greeted, not yet TLS. */
export interface OpenUpstream {
  leg: ServerLeg;
  greeting: Greeting;
}

/**
 * Dials and reads the server's greeting. A server ERR instead of a greeting (too many
 * connections, host blocked) is raised with the server's errno and message. The greeting must
 * offer 4.1 auth with plugins and TLS: IAM authentication is refused without TLS. Aborting
 * `signal` at any step closes the connection and rejects with the signal's reason.
 */
export async function openUpstream(
  t: UpstreamTarget,
  timings?: PhaseTimings,
  signal?: AbortSignal,
): Promise<OpenUpstream> {
  const t0 = performance.now();
  const raw = await t.dialer.dial(t.dial, signal);
  if (timings) timings.upstreamConnectMs = elapsedMs(t0);
  const host = t.dial.host;
  const leg = new ServerLeg(raw, host, signal);
  try {
    const first = await leg.read();
    if (first.payload[0] === Header.ERR) {
      const e = safeParseErr(first.payload);
      throw new ProxyError(
        e.errno === ErrNo.CON_COUNT ? ErrorCode.TooManyConnections : ErrorCode.UpstreamUnreachable,
        `upstream ${host} refused the connection: ${e.message}`,
        {
          serverError: {
            errno: e.errno,
            message: e.message,
            ...(e.sqlState ? { sqlState: e.sqlState } : {}),
          },
        },
      );
    }
    let greeting: Greeting;
    try {
      greeting = parseGreeting(first.payload);
    } catch (err) {
      if (!(err instanceof MalformedPacket)) throw err;
      throw new ProxyError(
        ErrorCode.UpstreamProtocol,
        `upstream ${host} sent a ${err.message}; is it a MySQL or MariaDB server?`,
        {
          hint: 'check upstream.host and upstream.port point at MySQL/MariaDB (port 3306 by default)',
        },
      );
    }
    const missing = (['PROTOCOL_41', 'SECURE_CONNECTION', 'PLUGIN_AUTH'] as const).filter(
      (f) => (greeting.capabilities & Cap[f]) === 0,
    );
    if (missing.length > 0) {
      throw new ProxyError(
        ErrorCode.UpstreamProtocol,
        `upstream ${host} (${greeting.serverVersion}) lacks ${missing.map((f) => `CLIENT_${f}`).join(', ')}; the proxy needs MySQL 5.6+ or MariaDB 10+`,
      );
    }
    if ((greeting.capabilities & Cap.SSL) === 0) {
      throw new ProxyError(
        ErrorCode.UpstreamTls,
        `upstream ${host} (${greeting.serverVersion}) does not offer TLS (no CLIENT_SSL in its greeting); IAM authentication requires TLS, so the proxy will not log in`,
        {
          hint: 'enable TLS on the server (RDS always has it); check that upstream.host/port point at the database and not at a plain-text proxy',
        },
      );
    }
    return { leg, greeting };
  } catch (err) {
    leg.destroy();
    throw err;
  }
}

/**
 * SSLRequest (the first 32 bytes of `response`, which the server keeps as the session's
 * capabilities) and verify-full TLS. MySQL sends no answer to an SSLRequest; any byte from the
 * server before TLS is refused. On failure the connection is closed.
 */
export async function startTls(
  up: OpenUpstream,
  response: HandshakeResponse,
  t: UpstreamTarget,
  timings?: PhaseTimings,
  signal?: AbortSignal,
): Promise<tls.TLSSocket> {
  const t0 = performance.now();
  const { leg } = up;
  leg.write(
    1,
    buildSslRequest(
      response.capabilities,
      response.mariadbCapabilities,
      response.maxPacketSize,
      response.charset,
    ),
  );
  if (leg.reader.available > 0 || leg.reader.closed) {
    leg.destroy();
    throw new ProxyError(
      ErrorCode.UpstreamProtocol,
      `upstream ${t.dial.host} sent data after its greeting instead of waiting for TLS`,
    );
  }
  leg.reader.detach();
  let s: tls.TLSSocket;
  try {
    s = await upstreamTls(leg.raw, t.tls, signal);
  } catch (err) {
    leg.destroy();
    throw err;
  }
  leg.useTls(s);
  if (timings) timings.upstreamTlsMs = elapsedMs(t0);
  return s;
}

/** How to answer the server's authentication requests. */
export interface Credentials {
  mode: 'iam' | 'password';
  /** The token or password; awaited only when the server asks (always after TLS). */
  secret: () => Promise<string>;
  /** Endpoint name, for messages. */
  host: string;
}

/**
 * What the first auth response (HandshakeResponse41 or COM_CHANGE_USER) carries for `greeting`
 * under `creds`. A token is 0.3-4 KB: it fits only as length-encoded data (`tokenFits`, by
 * default the greeting's CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA; COM_CHANGE_USER carries at most
 * 255 bytes). When it does not fit, nothing is sent and the server's AuthSwitchRequest to
 * mysql_clear_password is answered with it instead. In auth.mode password the response is the
 * password's scramble for the server's plugin.
 */
export async function firstAuth(
  greeting: Greeting,
  creds: Credentials,
  tokenFits = (greeting.capabilities & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA) !== 0,
): Promise<{ plugin: string; data: Buffer }> {
  if (creds.mode === 'iam') {
    if (!tokenFits) return { plugin: AuthPlugin.NATIVE, data: Buffer.alloc(0) };
    return { plugin: AuthPlugin.CLEAR, data: clear(await creds.secret()) };
  }
  const secret = await creds.secret();
  if (greeting.authPlugin === AuthPlugin.CACHING_SHA2)
    return { plugin: AuthPlugin.CACHING_SHA2, data: sha2Token(secret, greeting.scramble) };
  return { plugin: AuthPlugin.NATIVE, data: nativeToken(secret, greeting.scramble) };
}

/**
 * Sends HandshakeResponse41 (sequence 2, after the SSLRequest) and follows the exchange.
 * Resolves with the server's OK payload, to be relayed to the client.
 */
export async function login(
  up: OpenUpstream,
  response: HandshakeResponse,
  creds: Credentials,
  timings?: PhaseTimings,
): Promise<Buffer> {
  const t0 = performance.now();
  const first = await firstAuth(up.greeting, creds);
  up.leg.write(2, buildHandshakeResponse({ ...response, authPlugin: first.plugin, authData: first.data }));
  const ok = await authExchange(up.leg, first.plugin, creds);
  if (timings) timings.upstreamLoginMs = elapsedMs(t0);
  return ok;
}

/**
 * Follows the server's side of authentication after a response was sent, until OK (resolved
 * with its payload) or ERR (ProxyError UpstreamAuth carrying the server's errno, SQLSTATE and
 * message). Used for the login and for COM_CHANGE_USER.
 */
export async function authExchange(io: PacketIO, plugin: string, creds: Credentials): Promise<Buffer> {
  for (let round = 0; round < 8; round++) {
    const p = await io.read();
    const head = p.payload[0];
    switch (head) {
      case Header.OK:
        return p.payload;
      case Header.ERR: {
        const e = safeParseErr(p.payload);
        throw new ProxyError(ErrorCode.UpstreamAuth, e.message, {
          serverError: {
            errno: e.errno,
            message: e.message,
            ...(e.sqlState ? { sqlState: e.sqlState } : {}),
          },
        });
      }
      case Header.AUTH_SWITCH: {
        if (p.payload.length === 1) {
          throw new ProxyError(
            ErrorCode.UpstreamProtocol,
            `upstream ${creds.host} asked for pre-4.1 (old_password) authentication, which the proxy does not support`,
          );
        }
        let sw;
        try {
          sw = parseAuthSwitch(p.payload);
        } catch {
          throw new ProxyError(
            ErrorCode.UpstreamProtocol,
            `upstream ${creds.host} sent a malformed AuthSwitchRequest`,
          );
        }
        plugin = sw.plugin;
        io.write(p.seq + 1, await answer(plugin, switchScramble(sw.data), creds));
        break;
      }
      case Header.AUTH_MORE_DATA: {
        const status = p.payload[1];
        if (
          plugin === AuthPlugin.CACHING_SHA2 &&
          p.payload.length === 2 &&
          status === Sha2Status.FAST_AUTH_SUCCESS
        )
          break;
        if (
          plugin === AuthPlugin.CACHING_SHA2 &&
          p.payload.length === 2 &&
          status === Sha2Status.PERFORM_FULL_AUTHENTICATION
        ) {
          io.write(p.seq + 1, clear(await creds.secret())); // over verified TLS, as the plugin allows
          break;
        }
        throw new ProxyError(
          ErrorCode.UpstreamProtocol,
          `upstream ${creds.host} sent AuthMoreData (0x01) for ${plugin || 'the first response'}, which the proxy cannot answer`,
          {
            hint: 'the database user must authenticate with mysql_clear_password (RDS IAM, MariaDB PAM with pam_use_cleartext_plugin)',
          },
        );
      }
      case Header.AUTH_NEXT_FACTOR:
        throw new ProxyError(
          ErrorCode.UpstreamProtocol,
          `upstream ${creds.host} asked for a second authentication factor, which the proxy does not support`,
        );
      default:
        throw new ProxyError(
          ErrorCode.UpstreamProtocol,
          `unexpected packet 0x${(head ?? 0).toString(16).padStart(2, '0')} from upstream ${creds.host} during authentication`,
        );
    }
  }
  throw new ProxyError(
    ErrorCode.UpstreamProtocol,
    `upstream ${creds.host} kept switching authentication methods`,
  );
}

/** The answer to an AuthSwitchRequest for `plugin`. */
async function answer(plugin: string, scramble: Buffer, creds: Credentials): Promise<Buffer> {
  switch (plugin) {
    case AuthPlugin.CLEAR:
      return clear(await creds.secret());
    case AuthPlugin.NATIVE:
    case AuthPlugin.CACHING_SHA2: {
      if (creds.mode === 'iam') {
        throw new ProxyError(
          ErrorCode.UpstreamAuth,
          `upstream ${creds.host} asked for ${plugin}, so the database user is not set up for IAM authentication`,
          {
            hint:
              "create it with IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS' (MariaDB: IDENTIFIED VIA pam with pam_use_cleartext_plugin), " +
              'or use auth.mode: password',
          },
        );
      }
      const secret = await creds.secret();
      return plugin === AuthPlugin.NATIVE ? nativeToken(secret, scramble) : sha2Token(secret, scramble);
    }
    case AuthPlugin.DIALOG:
      throw new ProxyError(
        ErrorCode.UpstreamProtocol,
        `upstream ${creds.host} asked for the PAM dialog plugin; the proxy answers only mysql_clear_password`,
        { hint: 'set pam_use_cleartext_plugin=ON on MariaDB' },
      );
    default:
      throw new ProxyError(
        ErrorCode.UpstreamProtocol,
        `upstream ${creds.host} asked for authentication plugin "${plugin}", which the proxy does not support (it answers mysql_clear_password for IAM, and mysql_native_password / caching_sha2_password for auth.mode: password)`,
      );
  }
}

function clear(secret: string): Buffer {
  return Buffer.from(secret + '\0', 'utf8');
}

function safeParseErr(payload: Buffer): { errno: number; sqlState?: string; message: string } {
  try {
    return parseErr(payload);
  } catch {
    return { errno: ErrNo.HANDSHAKE, message: 'malformed ERR packet from upstream' };
  }
}
