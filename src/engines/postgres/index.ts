import type net from 'node:net';
import type { Duplex } from 'node:stream';
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
import { type TokenRequest, tokenRequestFor } from '../../credentials/tokens';
import { refusedLoginHint } from '../../credentials/hints';
import { authenticateClient, LocalUsers, readClientStartup } from './downstream';
import { connectTls, login, sendCancel, type UpstreamSession, type UpstreamTarget } from './upstream';
import { errorResponse, fatal, Field } from './wire';

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
  [ErrorCode.TooManyConnections]: '53300', // too_many_connections
  [ErrorCode.Shutdown]: '57P01', // admin_shutdown
  [ErrorCode.Config]: '08001',
  [ErrorCode.Internal]: 'XX000', // internal_error
};

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
}

/** The Postgres engine for one listener. */
export class PostgresEngine implements Engine {
  readonly target: UpstreamTarget;
  readonly users: LocalUsers;

  constructor(readonly o: PostgresEngineOptions) {
    const l = o.listener;
    this.target = upstreamTargetFor(l, o.dialer, o.upstreamCa);
    this.users = new LocalUsers(o.localUsers);
  }

  accept(client: net.Socket, log: Logger): EngineConnection {
    return new PostgresConnection(this, client, log);
  }

  reject(client: net.Socket, err: ProxyError): void {
    client.on('error', () => undefined);
    endWith(client, this.errorFor(err));
  }

  /** The ErrorResponse a client sees for `err`: the server's own fields when it sent them, plus our hint. */
  errorFor(err: ProxyError): Buffer {
    if (err.serverError?.fields) {
      const fields = new Map(err.serverError.fields);
      if (err.code === ErrorCode.UpstreamAuth) {
        const hint = `rds-iam-proxy ${refusedLoginHint(this.o.listener)}`;
        const own = fields.get(Field.Hint);
        fields.set(Field.Hint, own ? `${own}\n${hint}` : hint);
      }
      return errorResponse(fields);
    }
    const message =
      err.code === ErrorCode.Internal ? 'internal error in rds-iam-proxy; see its log' : err.message;
    return fatal(SQLSTATE[err.code], `rds-iam-proxy: ${message}`, err.hint);
  }

  tokenRequest(user: string): TokenRequest {
    return tokenRequestFor(this.o.listener, user);
  }
}

class PostgresConnection implements EngineConnection {
  readonly info: SessionInfo = {};
  readonly timings: PhaseTimings = {};
  private down: Duplex;
  private up: Duplex | undefined;
  private finished = false;

  constructor(
    private readonly engine: PostgresEngine,
    private readonly client: net.Socket,
    private readonly log: Logger,
  ) {
    this.down = client;
    client.on('error', () => undefined); // errors surface as read failures
  }

  async run(): Promise<HandshakeResult | null> {
    try {
      return await this.handshake();
    } catch (err) {
      const e = asProxyError(err);
      this.abort(e);
      throw e;
    }
  }

  private async handshake(): Promise<HandshakeResult | null> {
    const e = this.engine;
    const l = e.o.listener;
    const t0 = performance.now();
    const start = await readClientStartup(this.client, e.o.secureContext, (s) => (this.down = s));
    if (start.kind === 'cancel') {
      await this.cancel(start.pid, start.key);
      return null;
    }
    const params = new Map(start.params);
    const user = params.get('user');
    this.info.user = user;
    this.info.database = params.get('database') ?? user;
    this.info.applicationName = params.get('application_name');
    this.info.clientTls = start.tls;
    if (!user) throw new ProxyError(ErrorCode.ClientProtocol, 'no user name in the startup packet');
    if (l.client.auth === 'password') await authenticateClient(start, e.users, l.client.passwordMethod);
    this.timings.downstreamMs = Math.round((performance.now() - t0) * 100) / 100;

    const upstreamUser = l.upstream.user ?? user;
    this.info.upstreamUser = upstreamUser;
    const mapped = start.params.map(([k, v]): [string, string] => [
      k,
      k === 'user' ? upstreamUser : k === 'database' && l.upstream.database ? l.upstream.database : v,
    ]);
    if (l.upstream.database && !params.has('database')) mapped.push(['database', l.upstream.database]);
    const session = await this.loginUpstream(start.version, mapped, upstreamUser);
    const tlsSocket = session.socket;
    if (start.reader.closed)
      throw new ProxyError(ErrorCode.ClientProtocol, 'client went away during the upstream login');
    this.down.write(session.relay.length === 1 ? (session.relay[0] as Buffer) : Buffer.concat(session.relay));
    const forget = session.backendKey
      ? e.o.cancels.add(session.backendKey.pid, session.backendKey.key, e.target)
      : undefined;
    this.finished = true;
    return {
      downstream: this.down,
      upstream: tlsSocket,
      downstreamLeftover: start.reader.detach(),
      upstreamLeftover: session.leftover,
      ...(forget ? { onClose: forget } : {}),
    };
  }

  /**
   * Connects and logs in upstream. If the server refuses a token that came from the cache (its
   * credentials may have been revoked or rotated), refreshes credentials, mints a new token and
   * tries once more before the client hears anything.
   */
  private async loginUpstream(
    version: number,
    params: [string, string][],
    user: string,
  ): Promise<UpstreamSession> {
    const e = this.engine;
    const req = e.tokenRequest(user);
    for (let attempt = 1; ; attempt++) {
      const started = Date.now();
      const secret = e.o.secrets.getToken(req);
      secret.catch(() => undefined); // awaited after TLS; a failure then is reported there
      const tlsSocket = await connectTls(e.target, this.timings);
      this.up = tlsSocket;
      if (this.finished) throw new ProxyError(ErrorCode.HandshakeTimeout, 'aborted');
      this.info.tlsCipher = tlsSocket.getCipher()?.name;
      try {
        return await login(tlsSocket, { version, params, user, secret }, this.timings);
      } catch (err) {
        const minted = e.o.secrets.mintedAt?.(req);
        const cached = minted !== undefined && minted < started;
        if (attempt > 1 || !cached || !(err instanceof ProxyError) || err.code !== ErrorCode.UpstreamAuth)
          throw err;
        e.o.secrets.invalidate(req);
        this.log.info(
          { sqlState: err.serverError?.sqlState },
          'upstream refused a cached token; retrying once with fresh credentials',
        );
      }
    }
  }

  private async cancel(pid: number, key: Buffer): Promise<void> {
    this.finished = true;
    this.client.destroy(); // the server never answers a cancel; neither do we
    const target = this.engine.o.cancels.get(pid, key);
    if (!target) {
      this.log.info({ pid }, 'cancel request for an unknown session ignored');
      return;
    }
    try {
      await sendCancel(target, pid, key);
      this.log.info({ pid }, 'cancel request forwarded');
    } catch (err) {
      this.log.warn({ pid, err: asProxyError(err).message }, 'cancel request could not be forwarded');
    }
  }

  abort(err: ProxyError): void {
    if (this.finished) return;
    this.finished = true;
    this.up?.destroy();
    if (err.code === ErrorCode.UpstreamAuth && err.serverError && this.info.upstreamUser) {
      this.engine.o.secrets.invalidate(this.engine.tokenRequest(this.info.upstreamUser));
    }
    endWith(this.down, this.engine.errorFor(err));
  }
}

/** Writes a last message and closes; destroys if the peer does not read it within a second. */
function endWith(s: Duplex, last: Buffer): void {
  if (s.destroyed || !s.writable) {
    s.destroy();
    return;
  }
  s.end(last);
  setTimeout(() => s.destroy(), 1000).unref();
}
