/**
 * The MySQL / MariaDB engine. One connection, top to bottom:
 *
 *   dial upstream, read its greeting           (first: the client must see the real server)
 *   greet the client                           server's version, connection id, capabilities, charset,
 *                                              status, MariaDB extended capabilities; the proxy's scramble;
 *                                              CLIENT_SSL iff client.tls is on; zstd and MFA stripped
 *   client: SSLRequest -> local TLS, HandshakeResponse41, local password (client.auth: password)
 *   upstream: SSLRequest -> verify-full TLS, HandshakeResponse41 with the client's capabilities,
 *             charset, max packet, database and attributes, the mapped user and the IAM token
 *             (mysql_clear_password, length-encoded), answering AuthSwitchRequest if asked
 *   relay the server's OK with the client's sequence id, then splice through CommandGate
 *
 * The upstream HandshakeResponse carries the client's capabilities (plus what the login needs),
 * so both legs frame the command phase identically and bytes pass unchanged, compressed or not.
 * Any failure before the splice reaches the client as an ERR packet (see MYSQL_ERRORS).
 */
import type net from 'node:net';
import type tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { type TokenRequest, tokenRequestFor } from '../../credentials/tokens';
import { refusedLoginHint } from '../../credentials/hints';
import { asProxyError, ErrorCode, ProxyError } from '../../errors';
import type { Logger } from '../../log';
import { upstreamTargetFor } from '../../net/dial';
import type {
  Engine,
  EngineConnection,
  EngineOptions,
  HandshakeResult,
  PhaseTimings,
  SessionInfo,
} from '../../proxy/engine';
import { LocalUsers, makeScramble } from './auth';
import { handleChangeUser } from './changeUser';
import { authenticateClient, ClientLeg, ClientState, clientGreeting, readClientResponse } from './downstream';
import { CommandGate } from './gate';
import {
  type Credentials,
  login,
  openUpstream,
  startTls,
  UPSTREAM_REQUIRED_CAPS,
  type ServerLeg,
  type UpstreamTarget,
} from './upstream';
import {
  AuthPlugin,
  buildErr,
  Cap,
  ErrNo,
  type ErrFields,
  type Greeting,
  type HandshakeResponse,
  packet,
  parseAttributes,
} from './wire';

/**
 * The ERR each proxy error code becomes: a server error number (clients refuse 2xxx client
 * codes from a server as a malformed packet) and its SQLSTATE.
 * https://dev.mysql.com/doc/mysql-errors/8.0/en/server-error-reference.html
 */
export const MYSQL_ERRORS: Record<ErrorCode, { errno: number; sqlState: string }> = {
  // ER_CONNECT_TO_FOREIGN_DATA_SOURCE, with the connection-failure class of client error 2003 "Can't connect".
  [ErrorCode.UpstreamUnreachable]: { errno: ErrNo.CONNECT_TO_FOREIGN_DATA_SOURCE, sqlState: '08S01' },
  // The same for a TLS failure (client error 2026 "SSL connection error" cannot be sent by a server).
  [ErrorCode.UpstreamTls]: { errno: ErrNo.CONNECT_TO_FOREIGN_DATA_SOURCE, sqlState: '08S01' },
  // ER_ACCESS_DENIED_ERROR; the server's own errno and SQLSTATE win when it sent them.
  [ErrorCode.UpstreamAuth]: { errno: ErrNo.ACCESS_DENIED, sqlState: '28000' },
  // ER_HANDSHAKE_ERROR "Bad handshake".
  [ErrorCode.UpstreamProtocol]: { errno: ErrNo.HANDSHAKE, sqlState: '08S01' },
  // No token could be signed: the login cannot be attempted.
  [ErrorCode.Credentials]: { errno: ErrNo.ACCESS_DENIED, sqlState: '28000' },
  // Wrong local password (client.auth: password).
  [ErrorCode.ClientAuth]: { errno: ErrNo.ACCESS_DENIED, sqlState: '28000' },
  // Malformed or unsupported client packet: ER_HANDSHAKE_ERROR.
  [ErrorCode.ClientProtocol]: { errno: ErrNo.HANDSHAKE, sqlState: '08S01' },
  // ER_NET_READ_INTERRUPTED "Got timeout reading communication packets".
  [ErrorCode.HandshakeTimeout]: { errno: ErrNo.NET_READ_INTERRUPTED, sqlState: '08S01' },
  // The client is gone; nothing is sent, the entry only completes the table.
  [ErrorCode.ClientGone]: { errno: ErrNo.NET_READ_INTERRUPTED, sqlState: '08S01' },
  // ER_CON_COUNT_ERROR "Too many connections".
  [ErrorCode.TooManyConnections]: { errno: ErrNo.CON_COUNT, sqlState: '08004' },
  // ER_SERVER_SHUTDOWN.
  [ErrorCode.Shutdown]: { errno: ErrNo.SERVER_SHUTDOWN, sqlState: '08S01' },
  // ER_INTERNAL_ERROR for a listener that cannot work as configured.
  [ErrorCode.Config]: { errno: ErrNo.INTERNAL, sqlState: 'HY000' },
  // ER_INTERNAL_ERROR; details only in the proxy log.
  [ErrorCode.Internal]: { errno: ErrNo.INTERNAL, sqlState: 'HY000' },
};

/** A MySQL listener's options. */
export type MysqlEngineOptions = EngineOptions;

/** The MySQL engine for one listener. */
export class MysqlEngine implements Engine {
  readonly target: UpstreamTarget;
  readonly users: LocalUsers | undefined;

  constructor(readonly o: MysqlEngineOptions) {
    const l = o.listener;
    this.target = upstreamTargetFor(l, o.dialer, o.upstreamCa);
    this.users = l.client.auth === 'password' ? new LocalUsers(o.localUsers) : undefined;
    if (l.auth.mode === 'dsql') {
      throw new ProxyError(
        ErrorCode.Config,
        `listener ${l.name}: auth.mode dsql is for Aurora DSQL, which speaks PostgreSQL only; use iam for MySQL`,
      );
    }
  }

  /** iam or password: how the upstream login answers (dsql is refused in the constructor). */
  get mode(): 'iam' | 'password' {
    return this.o.listener.auth.mode === 'password' ? 'password' : 'iam';
  }

  accept(client: net.Socket, log: Logger): EngineConnection {
    return new MysqlConnection(this, client, log);
  }

  reject(client: net.Socket, err: ProxyError): void {
    client.on('error', () => undefined);
    endWith(client, packet(0, buildErr(this.errorFor(err))));
  }

  /**
   * The ERR fields a client sees for `err`: the server's own errno, SQLSTATE and message when
   * it sent them (plus the login hint for a refused login), else the code's entry in
   * MYSQL_ERRORS with the proxy's message and hint. C clients keep 511 bytes of a message, so
   * the cause comes first.
   */
  errorFor(err: ProxyError): ErrFields {
    const own = MYSQL_ERRORS[err.code];
    const se = err.serverError;
    if (se?.errno !== undefined) {
      const message =
        err.code === ErrorCode.UpstreamAuth
          ? `${se.message} [rds-iam-proxy: ${refusedLoginHint(this.o.listener)}]`
          : se.message;
      return { errno: se.errno, sqlState: se.sqlState ?? own.sqlState, message };
    }
    const message =
      err.code === ErrorCode.Internal
        ? 'rds-iam-proxy: internal error; see its log'
        : `rds-iam-proxy: ${err.message}${err.hint ? ` (hint: ${err.hint})` : ''}`;
    return { errno: own.errno, sqlState: own.sqlState, message };
  }

  tokenRequest(user: string): TokenRequest {
    return tokenRequestFor(this.o.listener, user);
  }

  credentials(user: string, secret?: Promise<string>): Credentials {
    const source = this.o.secrets;
    const req = this.tokenRequest(user);
    let p = secret;
    return {
      mode: this.mode,
      host: this.target.dial.host,
      secret: () => (p ??= source.getToken(req)),
    };
  }
}

/**
 * The HandshakeResponse41 sent upstream: the client's capabilities (so the command phase is
 * framed the same on both legs) plus what the login needs, its MariaDB extended capabilities,
 * charset, max packet size and attributes; the mapped user and database.
 */
export function upstreamResponse(
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

class MysqlConnection implements EngineConnection {
  readonly info: SessionInfo = {};
  readonly timings: PhaseTimings = {};
  private readonly leg: ClientLeg;
  private up: ServerLeg | undefined;
  private finished = false;

  constructor(
    private readonly engine: MysqlEngine,
    private readonly client: net.Socket,
    private readonly log: Logger,
  ) {
    client.on('error', () => undefined); // errors surface as read failures
    this.leg = new ClientLeg(client);
  }

  async run(): Promise<HandshakeResult> {
    try {
      return await this.handshake();
    } catch (err) {
      const e = asProxyError(err);
      this.abort(e);
      throw e;
    }
  }

  private async handshake(): Promise<HandshakeResult> {
    const e = this.engine;
    const l = e.o.listener;
    const t0 = performance.now();
    let up = await openUpstream(e.target, this.timings);
    this.up = up.leg;
    this.checkAborted();

    const scramble = makeScramble();
    const t1 = performance.now();
    const response = await readClientResponse(
      this.leg,
      clientGreeting(up.greeting, scramble, e.o.secureContext !== undefined),
      e.o.secureContext,
    );
    const attrs = safeAttributes(response.attributes);
    this.info.user = response.user;
    this.info.database = response.database;
    this.info.clientTls = this.leg.tls;
    this.info.applicationName = attrs.get('program_name') ?? attrs.get('_client_name');
    if (response.capabilities & Cap.ZSTD_COMPRESSION_ALGORITHM) {
      throw new ProxyError(
        ErrorCode.ClientProtocol,
        'client asked for zstd compression, which the proxy did not offer; use zlib compression',
      );
    }
    if (!response.user) {
      throw new ProxyError(
        ErrorCode.ClientAuth,
        'no user name in the handshake response; IAM authentication needs one',
        {
          serverError: {
            errno: ErrNo.ACCESS_DENIED,
            sqlState: '28000',
            message: "rds-iam-proxy: Access denied for user ''@'localhost': a user name is required",
          },
        },
      );
    }
    const secure = this.leg.tls || this.client.remoteAddress === undefined;
    if (e.users) await authenticateClient(this.leg, response, e.users, scramble, secure);
    this.leg.state = ClientState.Waiting;
    this.timings.downstreamMs = ms(t1);

    const upstreamUser = l.upstream.user ?? response.user;
    this.info.upstreamUser = upstreamUser;
    const database = l.upstream.database ?? response.database;
    const req = e.tokenRequest(upstreamUser);
    let upResponse: HandshakeResponse;
    let tlsSocket: tls.TLSSocket;
    let ok: Buffer;
    for (let attempt = 1; ; attempt++) {
      const started = Date.now();
      upResponse = upstreamResponse(response, up.greeting, upstreamUser, database);
      const secret = e.o.secrets.getToken(req);
      secret.catch(() => undefined); // awaited after TLS; a failure then is reported there
      tlsSocket = await startTls(up, upResponse, e.target, this.timings);
      this.checkAborted();
      this.info.tlsCipher = tlsSocket.getCipher()?.name;
      try {
        ok = await login(up, upResponse, e.credentials(upstreamUser, secret), this.timings);
        break;
      } catch (err) {
        // A refused token that came from the cache (revoked or rotated credentials): refresh the
        // credentials, mint anew and log in once more on a fresh upstream connection.
        const minted = e.o.secrets.mintedAt?.(req);
        if (
          attempt > 1 ||
          minted === undefined ||
          minted >= started ||
          !(err instanceof ProxyError) ||
          err.code !== ErrorCode.UpstreamAuth
        )
          throw err;
        e.o.secrets.invalidate(req);
        this.log.info(
          { errno: err.serverError?.errno },
          'upstream refused a cached token; retrying once with fresh credentials',
        );
        up.leg.destroy();
        up = await openUpstream(e.target, this.timings);
        this.up = up.leg;
      }
    }
    if (this.leg.reader.closed)
      throw new ProxyError(ErrorCode.ClientProtocol, 'client went away during the upstream login');
    this.checkAborted();
    this.leg.send(ok);
    this.leg.state = ClientState.Done;
    this.finished = true;

    const compressed = (upResponse.capabilities & Cap.COMPRESS) !== 0;
    const upstreamLeftover = up.leg.reader.detach();
    const gate = new CommandGate(
      tlsSocket,
      compressed,
      (client, server) =>
        handleChangeUser(
          {
            mode: e.mode,
            users: e.users,
            fixedUser: l.upstream.user,
            fixedDatabase: l.upstream.database,
            clientCaps: response.capabilities,
            upstreamCaps: upResponse.capabilities,
            clientScramble: scramble,
            serverGreeting: up.greeting,
            charset: response.charset,
            secureClient: secure,
            credentialsFor: (user) => e.credentials(user),
            invalidate: (user) => e.o.secrets.invalidate(e.tokenRequest(user)),
            errorFor: (err) => e.errorFor(err),
            info: this.info,
            log: this.log,
          },
          client,
          server,
        ),
      (err) => this.log.warn({ err: asProxyError(err).message }, 'command phase: closing the session'),
    );
    this.log.debug({ ms: ms(t0), compressed }, 'mysql handshake complete');
    return {
      downstream: this.leg.socket,
      upstream: gate,
      downstreamLeftover: this.leg.reader.detach(),
      upstreamLeftover,
    };
  }

  /** After each await: if abort() ran meanwhile, release what was opened since and stop. */
  private checkAborted(): void {
    if (!this.finished) return;
    if (this.up) {
      this.up.reader.detach();
      this.up.destroy();
    }
    throw new ProxyError(ErrorCode.HandshakeTimeout, 'aborted');
  }

  abort(err: ProxyError): void {
    if (this.finished) return;
    this.finished = true;
    if (this.up) {
      this.up.reader.detach();
      this.up.destroy();
    }
    if (err.code === ErrorCode.UpstreamAuth && err.serverError && this.info.upstreamUser) {
      this.engine.o.secrets.invalidate(this.engine.tokenRequest(this.info.upstreamUser));
    }
    const leg = this.leg;
    if (leg.state === ClientState.Upgrading) {
      // Mid-TLS-handshake: a plaintext packet would be garbage to the client.
      leg.socket.destroy();
      this.client.destroy();
      return;
    }
    const fields = this.engine.errorFor(err);
    if (leg.speaks41 === false) delete fields.sqlState;
    endWith(leg.socket, packet(leg.nextSeq, buildErr(fields)));
  }
}

function safeAttributes(b: Buffer | undefined): Map<string, string> {
  if (!b) return new Map();
  try {
    return new Map(parseAttributes(b));
  } catch {
    return new Map();
  }
}

/** Writes a last packet and closes; destroys if the peer does not read it within a second. */
function endWith(s: Duplex, last: Buffer): void {
  if (s.destroyed || !s.writable) {
    s.destroy();
    return;
  }
  s.end(last);
  setTimeout(() => s.destroy(), 1000).unref();
}

function ms(t0: number): number {
  return Math.round((performance.now() - t0) * 100) / 100;
}
