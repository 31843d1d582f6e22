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
import { type TokenRequest, tokenRequestFor } from '../../credentials/tokens';
import { refusedLoginHint } from '../../credentials/hints';
import { ErrorCode, ProxyError } from '../../errors';
import { upstreamTargetFor } from '../../net/dial';
import {
  EngineBase,
  type EngineOptions,
  type HandshakeContext,
  type HandshakeResult,
} from '../../proxy/engine';
import { peerAddress, type UpstreamProbe } from '../../proxy/engine';
import { EngineHandshake, elapsedMs, endWith } from '../../proxy/handshake';
import { Slots } from '../../proxy/limits';
import type { PrewarmMiss } from '../../proxy/observer';
import type { WarmKey } from '../../proxy/prewarm';
import { LocalUsers, makeScramble } from './auth';
import { MyPrewarm, type MyPrewarmDeps, type MyProfile, Reservation, type WarmMy } from './warm';
import { CommandPhase } from './changeUser';
import {
  authenticateClient,
  checkNameLengths,
  ClientLeg,
  ClientState,
  clientGreeting,
  readClientResponse,
} from './downstream';
import {
  type Credentials,
  login,
  type OpenUpstream,
  openUpstream,
  startTls,
  type UpstreamTarget,
  upstreamHandshakeResponse,
} from './upstream';
import {
  buildErr,
  Cap,
  ErrNo,
  type ErrFields,
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
  // Not raised by this engine (the client speaks second); completes the table.
  [ErrorCode.ClientUnframed]: { errno: ErrNo.HANDSHAKE, sqlState: '08S01' },
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
export interface MysqlEngineOptions extends EngineOptions {
  /** Login gate, metrics and log for the warm-session pool (used when listeners[].prewarm is set). */
  prewarm?: MyPrewarmDeps;
}

/** The MySQL engine for one listener. */
export class MysqlEngine extends EngineBase {
  readonly target: UpstreamTarget;
  /** Set when client.auth is password. */
  readonly users: LocalUsers | undefined;
  /** Handshakes holding an upstream connection until their client answers the greeting. */
  readonly pending: Slots;

  constructor(readonly options: MysqlEngineOptions) {
    super();
    const l = options.listener;
    this.target = upstreamTargetFor(l, options.dialer, options.upstreamCa);
    this.users = l.client.auth === 'password' ? new LocalUsers(options.localUsers) : undefined;
    this.pending = new Slots(l.maxPendingHandshakes);
    if (l.auth.mode === 'dsql') {
      throw new ProxyError(
        ErrorCode.Config,
        `listener ${l.name}: auth.mode dsql is for Aurora DSQL, which speaks PostgreSQL only; use iam for MySQL`,
      );
    }
    this.warm =
      l.prewarm && options.prewarm
        ? new MyPrewarm(
            l,
            this.target,
            options.secrets,
            (s) => this.credentials(s),
            options.secureContext !== undefined,
            options.prewarm,
          )
        : undefined;
  }

  readonly warm: MyPrewarm | undefined;

  /**
   * With a warm session ready (listeners[].prewarm) and a pending-handshake slot free now:
   * reserves the session and writes its greeting before anything else is set up for the
   * connection, since the client can only answer after it. Otherwise the handshake greets as
   * usual, waiting for a slot first.
   */
  greet(client: net.Socket): Reservation | undefined {
    if (!this.warm) return undefined;
    const release = this.pending.tryAcquire();
    if (!release) return undefined;
    const r = this.warm.reserve((w) => client.write(w.hello.packet), release);
    if (!r) release();
    return r;
  }

  accept(client: net.Socket, ctx: HandshakeContext): MysqlHandshake {
    return new MysqlHandshake(this, client, ctx);
  }

  protected refusal(err: ProxyError): Buffer {
    return packet(0, buildErr(this.errorFor(err)));
  }

  /**
   * The ERR fields a client sees for `err`: the server's own errno, SQLSTATE and message when
   * it sent them (plus the login hint for a refused login), else the code's entry in
   * MYSQL_ERRORS with the proxy's message and hint. The login hint names `user` (the upstream
   * user). C clients keep 511 bytes of a message, so the cause comes first.
   */
  errorFor(err: ProxyError, user?: string): ErrFields {
    const own = MYSQL_ERRORS[err.code];
    const se = err.serverError;
    if (se?.errno !== undefined) {
      const message =
        err.code === ErrorCode.UpstreamAuth
          ? `${se.message} [rds-iam-proxy: ${refusedLoginHint(this.options.listener, user)}]`
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
    return tokenRequestFor(this.options.listener, user);
  }

  /** How the upstream login answers the server, with `secret` called only when it asks. */
  credentials(secret: () => Promise<string>): Credentials {
    // dsql is refused in the constructor: the mode is iam or password.
    const mode = this.options.listener.auth.mode === 'password' ? 'password' : 'iam';
    return { mode, host: this.target.dial.host, secret };
  }
}

/** A logged-in upstream and what the login settled. */
interface UpstreamLogin {
  up: OpenUpstream;
  response: HandshakeResponse;
  socket: tls.TLSSocket;
  /** The server's OK, relayed to the client. */
  ok: Buffer;
  /** Bytes read past the OK (a warm session's COM_INIT_DB); else the leg's reader holds them. */
  leftover?: Buffer;
  /** Set when the login is a warm session's (listeners[].prewarm); noted after the OK is sent. */
  warm?: { session: WarmMy; key: WarmKey<MyProfile>; reserved: boolean };
}

/** One client's handshake; see the module comment for the order of steps. */
class MysqlHandshake extends EngineHandshake {
  private readonly leg: ClientLeg;
  private readonly loginSlot: () => Promise<void>;
  /** The warm session whose greeting MysqlEngine.greet sent on accept. */
  private readonly reserved: Reservation | undefined;
  /** The client's HandshakeResponse, once read. */
  private response: HandshakeResponse | undefined;

  constructor(
    private readonly engine: MysqlEngine,
    client: net.Socket,
    ctx: HandshakeContext,
  ) {
    super(client, ctx);
    this.leg = new ClientLeg(client, ctx.signal);
    this.loginSlot = ctx.loginSlot;
    this.reserved = ctx.greeted instanceof Reservation ? ctx.greeted : undefined;
    if (this.reserved) {
      this.own(this.reserved.session.up.leg);
      // A handshake that fails before its client answers gives the slot back with the session.
      this.own({ destroy: this.reserved.release });
      this.leg.greeted();
    }
  }

  protected async handshake(): Promise<HandshakeResult> {
    const e = this.engine;
    const l = e.options.listener;
    const t0 = performance.now();
    // A warm session (listeners[].prewarm) was reserved and its greeting sent on accept, with a
    // pending slot (see greet). Only a fresh login takes a login slot (limits.loginsPerSecond),
    // before dialing so that a queued client holds no server connection.
    const warm = this.reserved;
    let up: OpenUpstream | undefined;
    let response: HandshakeResponse;
    let scramble: Buffer;
    if (warm) {
      scramble = warm.session.hello.scramble;
      try {
        response = await this.readClient(scramble);
      } finally {
        warm.release();
      }
    } else {
      await this.loginSlot();
      // An idle local socket must not hold a server connection each (max_connections): only
      // maxPendingHandshakes wait for their client's answer at once, for greetingTimeoutMs.
      const release = await this.engine.pending.acquire(this.signal);
      try {
        up = await this.openUpstream();
        scramble = makeScramble();
        this.leg.greet(clientGreeting(up.greeting, scramble, e.options.secureContext !== undefined));
        response = await this.readClient(scramble);
      } finally {
        release();
      }
    }
    const upstreamUser = l.upstream.user ?? response.user;
    this.info.upstreamUser = upstreamUser;
    const database = l.upstream.database ?? response.database;
    let login = warm ? await this.takeWarm(warm.session, warm.key, response, database) : undefined;
    if (!login) {
      if (!warm) e.warm?.missed(response.user);
      else {
        await this.loginSlot();
        up = await this.openUpstream();
      }
      login = await this.loginUpstream(up as OpenUpstream, response, upstreamUser, database);
    }
    if (this.leg.reader.closed)
      throw new ProxyError(ErrorCode.ClientGone, 'client went away during the upstream login');
    this.leg.send(login.ok);
    // After the OK: the client waits for nothing the pool does, nor for what is only logged.
    this.describeClient();
    if (login.warm) this.noteWarm(login.warm.session, login.warm.key, login.warm.reserved);
    e.warm?.learn(response);

    const compressed = (login.response.capabilities & Cap.COMPRESS) !== 0;
    const phase = new CommandPhase(
      e,
      {
        clientCaps: response.capabilities,
        upstreamCaps: login.response.capabilities,
        clientScramble: scramble,
        serverGreeting: login.up.greeting,
        charset: response.charset,
        secureClient: this.secureClient(),
        compressed,
      },
      this.info,
      this.log,
    );
    const upstreamLeftover = login.leftover ?? login.up.leg.reader.detach();
    this.log.debug({ ms: elapsedMs(t0), compressed }, 'mysql handshake complete');
    return {
      downstream: this.leg.socket,
      upstream: phase.gate(login.socket),
      downstreamLeftover: this.leg.reader.detach(),
      upstreamLeftover,
    };
  }

  /**
   * A warm session as this client's login, with its database selected: the reserved one if it
   * fits, else a ready one of the client's own key (the reserved one was the most recently used
   * key's; it is closed, since its greeting was this client's). Undefined when none fits or
   * COM_INIT_DB failed, and the caller logs in afresh.
   */
  private async takeWarm(
    reserved: WarmMy,
    reservedKey: WarmKey<MyProfile>,
    response: HandshakeResponse,
    database: string | undefined,
  ): Promise<UpstreamLogin | undefined> {
    const warm = this.engine.warm as MyPrewarm;
    let w = reserved;
    let key = reservedKey;
    let initDb: string | undefined;
    const fit = warm.fit(reserved, reservedKey, response, database);
    if ('miss' in fit) {
      this.dropWarm(reserved, reservedKey, 'greeted', `the client does not fit it (${fit.miss})`);
      const other = warm.take(response, database);
      if (!other) return undefined;
      this.own(other.session.up.leg);
      ({ session: w, key, initDb } = other);
    } else initDb = fit.initDb;
    let handed: { ok: Buffer; leftover: Buffer };
    try {
      handed = await warm.handOut(w, initDb, this.signal);
    } catch (err) {
      if (this.signal.aborted) throw err;
      this.dropWarm(w, key, 'apply_failed', err instanceof Error ? err.message : String(err), 'apply_failed');
      return undefined;
    }
    return {
      up: w.up,
      response: w.response,
      socket: w.socket,
      ok: handed.ok,
      leftover: handed.leftover,
      warm: { session: w, key, reserved: w === reserved },
    };
  }

  /** Ends the pool's watch on the session, counts the hand-out of a reserved one (`take` counted its own) and describes it for the log. */
  private noteWarm(w: WarmMy, key: WarmKey<MyProfile>, reserved: boolean): void {
    this.engine.warm?.claim(w);
    if (reserved) this.engine.warm?.handedOut(key);
    this.info.prewarmed = true;
    this.info.tlsCipher = w.socket.getCipher()?.name;
    this.info.upstreamHost = this.engine.target.dial.host;
    this.info.upstreamAddress = peerAddress(w.socket);
    this.info.serverConnectionId = w.up.greeting.connectionId;
  }

  /** Closes a warm session this client cannot use, counting `miss` if given. */
  private dropWarm(
    w: WarmMy,
    key: WarmKey<MyProfile>,
    why: 'greeted' | 'apply_failed',
    reason: string,
    miss?: PrewarmMiss,
  ): void {
    this.disown(w.up.leg);
    this.engine.warm?.spoilt(w, key, why, miss);
    this.log.info(
      { reason, serverConnectionId: w.up.greeting.connectionId },
      why === 'greeted' ? 'reserved warm session not used' : 'warm session not used; logging in afresh',
    );
  }

  /** Dials and reads the server's greeting (first: the client must see the real server). */
  private async openUpstream(): Promise<OpenUpstream> {
    const up = await openUpstream(this.engine.target, this.timings, this.signal);
    this.own(up.leg);
    return up;
  }

  /**
   * After the greeting (the server's mirrored one with the proxy's `scramble`): reads the
   * client's HandshakeResponse41 (after local TLS if asked) and checks its local password.
   */
  private async readClient(scramble: Buffer): Promise<HandshakeResponse> {
    const e = this.engine;
    const t0 = performance.now();
    const secureContext = e.options.secureContext;
    const ms = e.options.listener.greetingTimeoutMs;
    // A race with a timer, not a second AbortController: an abort listener on a fresh signal is
    // costly on the hand-out path (src/abort.ts); the read left behind ends with the handshake.
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new ProxyError(
              ErrorCode.HandshakeTimeout,
              `the client did not answer the greeting within ${ms} ms`,
              {
                hint: 'greetingTimeoutMs bounds how long an idle client holds an upstream connection',
              },
            ),
          ),
        ms,
      );
    });
    let response: HandshakeResponse;
    try {
      response = await Promise.race([readClientResponse(this.leg, secureContext), late]);
    } finally {
      clearTimeout(timer);
    }
    checkNameLengths(response.user, response.database);
    this.response = response;
    this.info.user = response.user;
    this.info.database = response.database;
    this.info.clientTls = this.leg.tls;
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
    if (e.users) await authenticateClient(this.leg, response, e.users, scramble, this.secureClient());
    this.leg.state = ClientState.Waiting;
    this.timings.downstreamMs = elapsedMs(t0);
    return response;
  }

  /**
   * SSLRequest, verify-full TLS and the login with the token. A refused cached token is retried
   * once on a fresh upstream connection (the server closes one that failed a login).
   */
  private async loginUpstream(
    opened: OpenUpstream,
    client: HandshakeResponse,
    user: string,
    database: string | undefined,
  ): Promise<UpstreamLogin> {
    const e = this.engine;
    let next: OpenUpstream | undefined = opened;
    return this.withLease(e.options.secrets, e.tokenRequest(user), async (lease) => {
      const up = next ?? (await this.openUpstream());
      next = undefined;
      const response = upstreamHandshakeResponse(client, up.greeting, user, database);
      try {
        const socket = await startTls(up, response, e.target, this.timings, this.signal);
        this.info.tlsCipher = socket.getCipher()?.name;
        this.info.upstreamHost = e.target.dial.host;
        this.info.upstreamAddress = peerAddress(socket);
        const ok = await login(up, response, e.credentials(this.secretOf(lease)), this.timings);
        this.info.serverConnectionId = up.greeting.connectionId;
        return { up, response, socket, ok };
      } catch (err) {
        this.disown(up.leg);
        throw err;
      }
    });
  }

  /**
   * Whether a cleartext password from the client stays private: local TLS or a unix socket
   * (which has no remote address). Asked only where a password is checked (getpeername is a
   * system call the hand-out path does without).
   */
  private secureClient(): boolean {
    return this.leg.tls || this.client.remoteAddress === undefined;
  }

  /** The client's program name (connection attributes) for the log, once its response is read. */
  private describeClient(): void {
    if (!this.response || this.info.applicationName !== undefined) return;
    const attrs = safeAttributes(this.response.attributes);
    this.info.applicationName = attrs.get('program_name') ?? attrs.get('_client_name');
  }

  protected sendError(err: ProxyError): void {
    this.describeClient();
    const leg = this.leg;
    if (leg.state === ClientState.Upgrading) {
      // Mid-TLS-handshake: a plaintext packet would be garbage to the client.
      leg.socket.destroy();
      this.client.destroy();
      return;
    }
    const fields = this.engine.errorFor(err, this.info.upstreamUser);
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

/** utf8mb4_general_ci: the charset a probe login asks for. */
const PROBE_CHARSET = 45;

/** doctor's check of a MySQL upstream: greeting, SSLRequest, TLS, then a plain 4.1 login. */
export const probeUpstream: UpstreamProbe = async (target, user, database) => {
  const up = await openUpstream(target);
  const client: HandshakeResponse = {
    capabilities:
      Cap.LONG_PASSWORD |
      Cap.PROTOCOL_41 |
      Cap.SECURE_CONNECTION |
      Cap.PLUGIN_AUTH |
      Cap.TRANSACTIONS |
      Cap.MULTI_RESULTS,
    mariadbCapabilities: 0,
    maxPacketSize: 16 * 1024 * 1024,
    charset: PROBE_CHARSET,
    user,
    authData: Buffer.alloc(0),
  };
  const response = upstreamHandshakeResponse(client, up.greeting, user, database);
  const s = await startTls(up, response, target);
  return {
    tls: s,
    database,
    async login(secret) {
      const creds: Credentials = { mode: 'iam', secret: async () => secret, host: target.dial.host };
      try {
        await login(up, response, creds);
        return undefined;
      } catch (err) {
        const e = err instanceof ProxyError ? err : undefined;
        if (e?.serverError?.errno !== ErrNo.BAD_DB) throw err;
        return `${e.message} (errno ${ErrNo.BAD_DB})`;
      }
    },
    close: () => up.leg.destroy(),
  };
};
