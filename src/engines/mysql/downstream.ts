/**
 * The downstream leg: the proxy plays the server. It sends the mirrored greeting, takes an
 * SSLRequest and upgrades to local TLS, reads HandshakeResponse41 and, for client.auth:
 * password, checks the client's password against its own scramble. The client is then left
 * waiting for the OK, which comes from the upstream once it accepted the login.
 * https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase.html
 */
import type net from 'node:net';
import type tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { acceptTls } from '../../net/localTls';
import { BufferLimitError, PeerClosedError, SocketReader } from '../../net/reader';
import { ErrorCode, ProxyError } from '../../errors';
import { LOCAL_PLUGINS, type LocalUsers, makeScramble } from './auth';
import {
  AuthPlugin,
  buildAuthMoreData,
  buildAuthSwitch,
  buildGreeting,
  Cap,
  ErrNo,
  type Greeting,
  type HandshakeResponse,
  isSslRequest,
  MalformedPacket,
  MAX_HANDSHAKE_PACKET,
  type Packet,
  PacketTooLarge,
  packet,
  parseHandshakeResponse,
  peekClientCapabilities,
  readPacket,
  Sha2Status,
} from './wire';

/** Handshake states of the client leg, for error delivery (`abort`) and logs. */
export const ClientState = {
  /** Nothing sent yet: an error goes out as the first packet (sequence 0). */
  Connected: 'connected',
  /** Greeting sent; reading the client's packets. */
  Greeted: 'greeted',
  /** TLS handshake in progress: nothing may be written in plain text. */
  Upgrading: 'upgrading',
  /** The client waits for the outcome of the login. */
  Waiting: 'waiting',
} as const;
export type ClientState = (typeof ClientState)[keyof typeof ClientState];

/** The client side of the handshake with its current socket, reader and next sequence id. */
export class ClientLeg {
  socket: Duplex;
  reader: SocketReader;
  /** Sequence id of the next packet the proxy sends. */
  nextSeq = 0;
  state: ClientState = ClientState.Connected;
  tls = false;
  /** False until the client's first packet shows CLIENT_PROTOCOL_41 (errors then carry no SQLSTATE marker). */
  speaks41: boolean | undefined;

  constructor(
    readonly raw: net.Socket,
    /** The handshake's: aborting it fails pending reads with its reason. */
    readonly signal?: AbortSignal,
  ) {
    this.socket = raw;
    this.reader = new SocketReader(raw, MAX_HANDSHAKE_PACKET * 2, 'client', signal);
  }

  send(payload: Buffer): void {
    this.socket.write(packet(this.nextSeq, payload));
    this.nextSeq = (this.nextSeq + 1) & 0xff;
  }

  /** Sends the greeting (sequence 0). */
  greet(greeting: Greeting): void {
    this.raw.write(greetingPacket(greeting));
    this.greeted();
  }

  /**
   * Marks the greeting sent: by `greet`, or on the raw socket before this leg existed (a warm
   * session's, by MysqlEngine.greet on accept).
   */
  greeted(): void {
    this.nextSeq = 1;
    this.state = ClientState.Greeted;
  }

  async read(): Promise<Packet> {
    let p: Packet;
    try {
      p = await readPacket(this.reader);
    } catch (err) {
      if (err instanceof PacketTooLarge || err instanceof BufferLimitError) {
        throw new ProxyError(
          ErrorCode.ClientProtocol,
          `client sent an oversized handshake packet: ${err.message}`,
          {
            serverError: {
              errno: ErrNo.NET_PACKET_TOO_LARGE,
              sqlState: '08S01',
              message: `rds-iam-proxy: ${err.message}`,
            },
          },
        );
      }
      if (err instanceof PeerClosedError)
        throw new ProxyError(ErrorCode.ClientProtocol, 'client closed the connection during the handshake');
      throw err;
    }
    this.nextSeq = (p.seq + 1) & 0xff;
    return p;
  }
}

/** The greeting the client sees: the server's, with the proxy's scramble and capabilities. */
export function clientGreeting(server: Greeting, scramble: Buffer, clientTls: boolean): Greeting {
  return {
    ...server,
    scramble,
    capabilities: presentedCapabilities(server.capabilities, clientTls),
    authPlugin: AuthPlugin.NATIVE,
  };
}

/**
 * Capabilities offered to clients: the server's, minus what the proxy cannot carry through a
 * byte splice or does not implement, with CLIENT_SSL only when local TLS is on.
 *  - ZSTD_COMPRESSION_ALGORITHM: stripped (the proxy reads COM_CHANGE_USER inside compressed
 *    packets and Node 20's zlib has no zstd). zlib CLIENT_COMPRESS is kept.
 *  - MULTI_FACTOR_AUTHENTICATION: stripped (the upstream login is single-factor).
 *  - SSL: set iff client.tls is not off; the upstream leg always uses TLS regardless.
 *  - PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH, PLUGIN_AUTH_LENENC_CLIENT_DATA: set (local auth).
 */
export function presentedCapabilities(serverCaps: number, clientTls: boolean): number {
  let caps = serverCaps & ~(Cap.ZSTD_COMPRESSION_ALGORITHM | Cap.MULTI_FACTOR_AUTHENTICATION | Cap.SSL);
  caps |= Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA;
  if (clientTls) caps |= Cap.SSL;
  return caps >>> 0;
}

/** The greeting packet (sequence 0) for `greeting`, as `ClientLeg.greet` sends it. */
export function greetingPacket(greeting: Greeting): Buffer {
  return packet(0, buildGreeting(greeting));
}

/**
 * After the greeting: handles an SSLRequest with a TLS upgrade, and reads the
 * HandshakeResponse41. Pre-4.1 clients are refused with ER_NOT_SUPPORTED_AUTH_MODE.
 */
export async function readClientResponse(
  leg: ClientLeg,
  secureContext: tls.SecureContext | undefined,
): Promise<HandshakeResponse> {
  let p = await leg.read();
  const first = p.payload;
  const caps = asClientError(() => peekClientCapabilities(first));
  leg.speaks41 = (caps & Cap.PROTOCOL_41) !== 0;
  if (!leg.speaks41) {
    throw new ProxyError(
      ErrorCode.ClientProtocol,
      'client uses the pre-4.1 protocol (no CLIENT_PROTOCOL_41); the proxy needs a 4.1+ client',
      {
        serverError: {
          errno: ErrNo.NOT_SUPPORTED_AUTH_MODE,
          message:
            'rds-iam-proxy: Client does not support authentication protocol requested by server; consider upgrading MySQL client',
        },
      },
    );
  }
  if (isSslRequest(p.payload)) {
    if (!secureContext) {
      throw new ProxyError(
        ErrorCode.ClientProtocol,
        'client asked for TLS (SSLRequest) but the proxy did not offer it (client.tls: off)',
      );
    }
    leg.state = ClientState.Upgrading;
    // The ClientHello follows the SSLRequest without waiting for an answer: hand over what was read.
    const s = await acceptTls(leg.raw, secureContext, leg.reader.detach(), undefined, leg.signal);
    leg.socket = s;
    leg.reader = new SocketReader(s, MAX_HANDSHAKE_PACKET * 2, 'client', leg.signal);
    leg.tls = true;
    leg.state = ClientState.Greeted;
    p = await leg.read();
  }
  const payload = p.payload;
  return asClientError(() => parseHandshakeResponse(payload));
}

/** Runs a parser on a client packet; a MalformedPacket becomes ClientProtocol (ERR 1043). */
function asClientError<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof MalformedPacket)
      throw new ProxyError(ErrorCode.ClientProtocol, `client sent a ${err.message}`);
    throw err;
  }
}

/** The client side of a local password check: at login (the ClientLeg) or in COM_CHANGE_USER. */
export interface LocalAuthIO {
  /** Sends a packet to the client with the next sequence id. */
  send(payload: Buffer): void;
  /** The payload of the client's next packet. */
  read(): Promise<Buffer>;
}

/** What the client offered for a local password check. */
export interface LocalAuthAttempt {
  user: string;
  /** The plugin the client answered with; absent means mysql_native_password. */
  plugin: string | undefined;
  authData: Buffer;
  /** The client's capabilities (an AuthSwitchRequest needs CLIENT_PLUGIN_AUTH). */
  capabilities: number;
}

/**
 * Checks a local client's password (client.auth: password), at login and for COM_CHANGE_USER.
 * Accepts mysql_native_password and caching_sha2_password (fast path) against `scramble`, and
 * mysql_clear_password over TLS or a unix socket (`secure`); any other plugin is switched to
 * mysql_native_password with a fresh scramble. Failure is ER_ACCESS_DENIED_ERROR (1045).
 */
export async function verifyLocalPassword(
  io: LocalAuthIO,
  a: LocalAuthAttempt,
  users: LocalUsers,
  scramble: Buffer,
  secure: boolean,
): Promise<void> {
  let plugin = a.plugin ?? AuthPlugin.NATIVE;
  let data = a.authData;
  let challenge = scramble;
  if (!LOCAL_PLUGINS.includes(plugin) || (plugin === AuthPlugin.CLEAR && !secure)) {
    if ((a.capabilities & Cap.PLUGIN_AUTH) === 0) throw accessDenied(a.user, data.length > 0);
    challenge = makeScramble();
    io.send(buildAuthSwitch(AuthPlugin.NATIVE, Buffer.concat([challenge, Buffer.from([0])])));
    data = await io.read();
    plugin = AuthPlugin.NATIVE;
  }
  if (!users.verify(a.user, plugin, data, challenge, secure)) throw accessDenied(a.user, data.length > 0);
  if (plugin === AuthPlugin.CACHING_SHA2)
    io.send(buildAuthMoreData(Buffer.from([Sha2Status.FAST_AUTH_SUCCESS])));
}

/** The login's local password check over the client leg. */
export function authenticateClient(
  leg: ClientLeg,
  r: HandshakeResponse,
  users: LocalUsers,
  scramble: Buffer,
  secure: boolean,
): Promise<void> {
  const io: LocalAuthIO = { send: (p) => leg.send(p), read: async () => (await leg.read()).payload };
  const attempt = { user: r.user, plugin: r.authPlugin, authData: r.authData, capabilities: r.capabilities };
  return verifyLocalPassword(io, attempt, users, scramble, secure);
}

/** MariaDB user names are at most 80 characters; database names 64 (NAME_CHAR_LEN). */
const MAX_USER_CHARS = 80;
const MAX_DATABASE_CHARS = 64;

/**
 * Refuses user and database names longer than the server allows, with the server's own errors
 * (1470, 1102): the proxy keys its token cache and log lines on them.
 */
export function checkNameLengths(user: string, database: string | undefined): void {
  if ([...user].length > MAX_USER_CHARS) {
    const message = `String '${[...user].slice(0, 16).join('')}...' is too long for user name (should be no longer than ${MAX_USER_CHARS})`;
    throw new ProxyError(ErrorCode.ClientProtocol, message, {
      serverError: { errno: ErrNo.WRONG_STRING_LENGTH, sqlState: 'HY000', message },
    });
  }
  if (database !== undefined && [...database].length > MAX_DATABASE_CHARS) {
    const message = `Incorrect database name '${[...database].slice(0, 16).join('')}...' (longer than ${MAX_DATABASE_CHARS} characters)`;
    throw new ProxyError(ErrorCode.ClientProtocol, message, {
      serverError: { errno: ErrNo.WRONG_DB_NAME, sqlState: '42000', message },
    });
  }
}

/** ER_ACCESS_DENIED_ERROR as the server words it, naming the proxy's user list. */
export function accessDenied(user: string, usingPassword: boolean): ProxyError {
  const message = `Access denied for user '${user}'@'localhost' (using password: ${usingPassword ? 'YES' : 'NO'})`;
  return new ProxyError(ErrorCode.ClientAuth, message, {
    serverError: {
      errno: ErrNo.ACCESS_DENIED,
      sqlState: '28000',
      message: `${message}; rds-iam-proxy checks client.users`,
    },
  });
}
