import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { asProxyError, ErrorCode, logError, ProxyError } from '../../errors';
import { upstreamTargetFor } from '../../net/dial';
import {
  EngineBase,
  type EngineOptions,
  type HandshakeContext,
  type HandshakeResult,
} from '../../proxy/engine';
import { peerAddress, type UpstreamProbe } from '../../proxy/engine';
import { EngineHandshake, endWith } from '../../proxy/handshake';
import type { TokenLease } from '../../credentials/tokens';
import { type TokenRequest, tokenRequestFor } from '../../credentials/tokens';
import { refusedLoginHint } from '../../credentials/hints';
import { authenticateClient, LocalUsers, readClientStartup } from './downstream';
import { connectTls, login, sendCancel, type UpstreamSession, type UpstreamTarget } from './upstream';
import { errorResponse, fatal, Field, PROTOCOL_3_0 } from './wire';
import { PgPrewarm, type PgPrewarmDeps } from './warm';

/** SQLSTATE for each proxy error code (https://www.postgresql.org/docs/current/errcodes-appendix.html). */
export const SQLSTATE: Record<ErrorCode, string> = {
  [ErrorCode.UpstreamUnreachable]: '08001', // sqlclient_unable_to_establish_sqlconnection
  [ErrorCode.UpstreamTls]: '08001',
  [ErrorCode.UpstreamAuth]: '28000', // invalid_authorization_specification (server's own code wins)
  [ErrorCode.UpstreamProtocol]: '08P01', // protocol_violation
  [ErrorCode.Credentials]: '28000',
  [ErrorCode.ClientAuth]: '28P01', // invalid_password
  [ErrorCode.ClientProtocol]: '08P01',
  [ErrorCode.HandshakeTimeout]: '08006', // connection_failure
  [ErrorCode.ClientGone]: '08006', // never sent: the client is gone
  [ErrorCode.ClientUnframed]: '08P01', // never sent: the server closes silently too
  [ErrorCode.TooManyConnections]: '53300', // too_many_connections
  [ErrorCode.Shutdown]: '57P01', // admin_shutdown
  [ErrorCode.Config]: '08001',
  [ErrorCode.Internal]: 'XX000', // internal_error
};

/** PostgreSQL identifiers are at most NAMEDATALEN - 1 = 63 bytes. */
const MAX_NAME_BYTES = 63;

/**
 * Refuses a user or database name longer than PostgreSQL allows (42622 name_too_long): the
 * server would only truncate it, and the proxy keys its token cache and log lines on it.
 */
function checkNameLength(what: 'user' | 'database', name: string): void {
  const bytes = Buffer.byteLength(name);
  if (bytes <= MAX_NAME_BYTES) return;
  const message = `${what} name is ${bytes} bytes; PostgreSQL names are at most ${MAX_NAME_BYTES} bytes (NAMEDATALEN)`;
  throw new ProxyError(ErrorCode.ClientProtocol, message, {
    serverError: { sqlState: '42622', message },
  });
}

/** Live sessions' cancel keys -> the upstream that issued them. Shared by all Postgres listeners. */
export class CancelRegistry {
  private readonly keys = new Map<string, UpstreamTarget>();
  add(pid: number, key: Buffer, target: UpstreamTarget): () => void {
    const k = `${pid}:${key.toString('hex')}`;
    this.keys.set(k, target);
    return () => this.keys.delete(k);
  }
  get(pid: number, key: Buffer): UpstreamTarget | undefined {
    return this.keys.get(`${pid}:${key.toString('hex')}`);
  }
  get size(): number {
    return this.keys.size;
  }
}

/** A Postgres listener's options: the common ones plus the process-wide cancel registry. */
export interface PostgresEngineOptions extends EngineOptions {
  cancels: CancelRegistry;
  /** Login gate, metrics and log for the warm-session pool (used when listeners[].prewarm is set). */
  prewarm?: PgPrewarmDeps;
}

/** The Postgres engine for one listener. */
export class PostgresEngine extends EngineBase {
  readonly target: UpstreamTarget;
  readonly users: LocalUsers;

  constructor(readonly options: PostgresEngineOptions) {
    super();
    this.target = upstreamTargetFor(options.listener, options.dialer, options.upstreamCa);
    this.users = new LocalUsers(options.localUsers);
    this.warm =
      options.listener.prewarm && options.prewarm
        ? new PgPrewarm(options.listener, this.target, options.secrets, options.prewarm)
        : undefined;
  }

  readonly warm: PgPrewarm | undefined;

  accept(client: net.Socket, ctx: HandshakeContext): PostgresHandshake {
    return new PostgresHandshake(this, client, ctx);
  }

  protected refusal(err: ProxyError): Buffer {
    return this.errorFor(err);
  }

  /**
   * The ErrorResponse a client sees for `err`: the server's own fields when it sent them, plus
   * our hint naming `user` (the upstream user) for a refused login.
   */
  errorFor(err: ProxyError, user?: string): Buffer {
    if (err.serverError?.fields) {
      const fields = new Map(err.serverError.fields);
      if (err.code === ErrorCode.UpstreamAuth) {
        const hint = `rds-iam-proxy ${refusedLoginHint(this.options.listener, user)}`;
        const own = fields.get(Field.Hint);
        fields.set(Field.Hint, own ? `${own}\n${hint}` : hint);
      }
      return errorResponse(fields);
    }
    const message =
      err.code === ErrorCode.Internal ? 'internal error in rds-iam-proxy; see its log' : err.message;
    return fatal(err.serverError?.sqlState ?? SQLSTATE[err.code], `rds-iam-proxy: ${message}`, err.hint);
  }

  tokenRequest(user: string): TokenRequest {
    return tokenRequestFor(this.options.listener, user);
  }
}

/**
 * One client's handshake, top to bottom: the client's first packets (TLS, startup or cancel),
 * the local password check, then the upstream login (connectTls + login, retried once on a
 * refused cached token), and the server's AuthenticationOk .. ReadyForQuery relayed verbatim.
 */
class PostgresHandshake extends EngineHandshake {
  /** The client socket errors go to: the TLS one once the client upgraded. */
  private down: Duplex;
  /** Set when the session is a warm one: ends the pool's watch on it (after the relay is written). */
  private claimWarm: (() => void) | undefined;
  private readonly loginSlot: () => Promise<void>;

  constructor(
    private readonly engine: PostgresEngine,
    client: net.Socket,
    ctx: HandshakeContext,
  ) {
    super(client, ctx);
    this.down = client;
    this.loginSlot = ctx.loginSlot;
  }

  protected async handshake(): Promise<HandshakeResult | null> {
    const e = this.engine;
    const l = e.options.listener;
    const t0 = performance.now();
    const start = await readClientStartup(
      this.client,
      e.options.secureContext,
      (s) => (this.down = s),
      this.signal,
    );
    if (start.kind === 'cancel') {
      await this.cancel(start.pid, start.key);
      return null;
    }
    const params = new Map(start.params);
    const user = params.get('user');
    if (!user) throw new ProxyError(ErrorCode.ClientProtocol, 'no user name in the startup packet');
    const database = params.get('database') ?? user;
    checkNameLength('user', user);
    checkNameLength('database', database);
    this.info.user = user;
    this.info.database = database;
    this.info.applicationName = params.get('application_name')?.slice(0, MAX_NAME_BYTES);
    this.info.clientTls = start.tls;
    if (l.client.auth === 'password') await authenticateClient(start, e.users, l.client.passwordMethod);
    this.timings.downstreamMs = Math.round((performance.now() - t0) * 100) / 100;

    const upstreamUser = l.upstream.user ?? user;
    this.info.upstreamUser = upstreamUser;
    const mapped = start.params.map(([k, v]): [string, string] => [
      k,
      k === 'user' ? upstreamUser : k === 'database' && l.upstream.database ? l.upstream.database : v,
    ]);
    if (l.upstream.database && !params.has('database')) mapped.push(['database', l.upstream.database]);
    let session = await this.takeWarm(user, params.get('database') ?? user, start.version, start.params);
    if (!session) {
      await this.loginSlot(); // only a fresh login takes a slot (limits.loginsPerSecond)
      session = await this.withLease(e.options.secrets, e.tokenRequest(upstreamUser), (lease) =>
        this.loginUpstream(start.version, mapped, upstreamUser, lease),
      );
    }
    if (start.reader.closed)
      throw new ProxyError(ErrorCode.ClientGone, 'client went away during the upstream login');
    this.down.write(session.relay.length === 1 ? (session.relay[0] as Buffer) : Buffer.concat(session.relay));
    // After ReadyForQuery: the client waits for nothing the pool does, nor for what is only logged.
    this.info.serverConnectionId = session.backendKey?.pid;
    if (this.info.prewarmed) {
      this.claimWarm?.();
      this.info.tlsCipher = session.socket.getCipher()?.name;
      this.info.upstreamHost = e.target.dial.host;
      this.info.upstreamAddress = peerAddress(session.socket);
    }
    e.warm?.learn(user, params.get('database') ?? user, start.version, start.params);
    const forget = session.backendKey
      ? e.options.cancels.add(session.backendKey.pid, session.backendKey.key, e.target)
      : undefined;
    return {
      downstream: this.down,
      upstream: session.socket,
      downstreamLeftover: start.reader.detach(),
      upstreamLeftover: session.leftover,
      ...(forget ? { onClose: forget } : {}),
    };
  }

  /** A pre-warmed upstream session with this client's settings applied (listeners[].prewarm), or undefined. */
  private async takeWarm(
    user: string,
    database: string,
    version: number,
    params: [string, string][],
  ): Promise<UpstreamSession | undefined> {
    const own = (s: Parameters<typeof this.own>[0]): void => void this.own(s);
    const w = await this.engine.warm?.take(user, database, version, params, this.signal, own, this.log);
    if (!w) return undefined;
    this.info.prewarmed = true;
    this.claimWarm = w.claim;
    return w;
  }

  /** One upstream login: dial, SSLRequest, verify-full TLS, then the startup and auth exchange. */
  private async loginUpstream(
    version: number,
    params: [string, string][],
    user: string,
    lease: TokenLease,
  ): Promise<UpstreamSession> {
    const tlsSocket = this.own(await connectTls(this.engine.target, this.timings, this.signal));
    this.info.tlsCipher = tlsSocket.getCipher()?.name;
    this.info.upstreamHost = this.engine.target.dial.host;
    this.info.upstreamAddress = peerAddress(tlsSocket);
    try {
      return await login(
        tlsSocket,
        { version, params, user, secret: this.secretOf(lease) },
        this.timings,
        this.signal,
      );
    } catch (err) {
      this.disown(tlsSocket);
      throw err;
    }
  }

  /**
   * The server never answers a cancel, and neither do we: the client is closed at once. The
   * forward is bounded by its own deadline, not the session's, since the client has gone.
   */
  private async cancel(pid: number, key: Buffer): Promise<void> {
    this.client.destroy();
    const target = this.engine.options.cancels.get(pid, key);
    if (!target) {
      this.log.info({ backendPid: pid }, 'cancel request for an unknown session ignored');
      return;
    }
    try {
      await sendCancel(target, pid, key, AbortSignal.timeout(2 * target.dial.connectTimeoutMs));
      this.log.info({ backendPid: pid }, 'cancel request forwarded');
    } catch (err) {
      this.log.warn({ backendPid: pid, err: logError(err) }, 'cancel request could not be forwarded');
    }
  }

  protected sendError(err: ProxyError): void {
    endWith(this.down, this.engine.errorFor(err, this.info.upstreamUser));
  }
}

/** SQLSTATE invalid_catalog_name: the login worked, the database does not exist. */
const UNKNOWN_DATABASE = '3D000';

/** doctor's check of a Postgres upstream: connectTls, then a protocol 3.0 login. */
export const probeUpstream: UpstreamProbe = async (target, user, database) => {
  const s = await connectTls(target);
  const db = database ?? 'postgres';
  return {
    tls: s,
    database: db,
    async login(secret) {
      const params: [string, string][] = [
        ['user', user],
        ['database', db],
      ];
      try {
        await login(s, { version: PROTOCOL_3_0, params, user, secret: () => Promise.resolve(secret) });
        return undefined;
      } catch (err) {
        const e = asProxyError(err);
        if (e.serverError?.sqlState !== UNKNOWN_DATABASE) throw e;
        return `${e.message} (SQLSTATE ${UNKNOWN_DATABASE})`;
      }
    },
    close: () => s.destroy(),
  };
};
