import net from 'node:net';
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { setSocketPermissions } from '../net/files';
import type { Logger } from '../log';
import { parseListen, type ListenAddress } from '../config/load';
import type { Engine } from './engine';
import { Session, type SessionResult } from './session';
import { ConnectionLimits, type LoginGate } from './limits';
import { noopObserver, type ProxyObserver } from './observer';
import { ErrorCode, logError, ProxyError } from '../errors';

/** Per-listener settings from the config. */
export interface ListenerSettings {
  /** Deadline for a client's whole handshake, milliseconds. */
  handshakeTimeoutMs: number;
  /** Close spliced sessions idle this long, milliseconds; 0 = never. */
  idleTimeoutMs?: number;
  /** Open connections this listener accepts; 0 = unlimited. */
  maxConnections?: number;
  /** Unix sockets: octal mode string, default '0777'. */
  socketMode?: string;
  /** Unix sockets: group name or gid given to the socket. */
  socketGroup?: string | number;
}

/** Limits shared by all listeners (the `limits` section); absent = unlimited. */
export interface SharedLimits {
  connections?: ConnectionLimits;
  logins?: LoginGate;
}

/**
 * One bound address feeding one engine. Tracks its live connections so shutdown can drain
 * them and a reload can leave them running. TCP binds default to 127.0.0.1; a unix socket path is
 * replaced if a stale socket file (nobody listening) is in the way, and gets the listener's
 * socketMode and socketGroup (default 0777, like PostgreSQL's). Connection limits are checked
 * on accept; a refused client gets the engine's "too many connections" error.
 */
export class ProxyListener {
  private server: net.Server | undefined;
  private readonly live = new Map<net.Socket, Session>();
  private readonly idleWaiters: (() => void)[] = [];
  private readonly onServerError = (err: Error): void =>
    this.log.error({ err, listener: this.name }, 'listener error');
  private readonly onServerConnection = (s: net.Socket): void => this.onConnection(s);
  private readonly connectionLimits: ConnectionLimits;
  readonly bind: ListenAddress;

  constructor(
    readonly name: string,
    listen: string | number,
    private readonly engine: Engine,
    private readonly log: Logger,
    private readonly settings: ListenerSettings,
    private readonly shared: SharedLimits = {},
    private readonly observer: ProxyObserver = noopObserver,
  ) {
    this.bind = parseListen(listen);
    this.connectionLimits = shared.connections ?? new ConnectionLimits();
  }

  /** Number of connections currently open (queued, handshaking or spliced). */
  get connections(): number {
    return this.live.size;
  }

  /** True while this listener accepts connections. */
  get listening(): boolean {
    return this.server?.listening ?? false;
  }

  /** Resolves once bound; rejects with a ProxyError naming the address on failure. */
  async start(): Promise<void> {
    const server = net.createServer({ noDelay: true, pauseOnConnect: false });
    if (this.bind.kind === 'unix') await removeStaleSocket(this.bind.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new ProxyError(
            ErrorCode.Config,
            `listener ${this.name} cannot listen on ${this.address()}: ${err.code ?? err.message}`,
            { cause: err },
          ),
        ),
      );
      if (this.bind.kind === 'unix') server.listen(this.bind.path, resolve);
      else server.listen({ host: this.bind.host, port: this.bind.port }, resolve);
    });
    server.removeAllListeners('error');
    // socketMode (default 0777, like PostgreSQL's unix_socket_permissions) and socketGroup,
    // whatever the umask: they decide which local users may connect (README "Unix sockets").
    if (this.bind.kind === 'unix') {
      try {
        setSocketPermissions(this.bind.path, this.settings.socketMode ?? '0777', this.settings.socketGroup);
      } catch (err) {
        server.close();
        throw err;
      }
    }
    this.attach(server);
    this.log.info({ listener: this.name, address: this.address() }, 'listening');
  }

  /**
   * Takes over `old`'s bound socket (a reload that changed this listener but not its address):
   * new connections come here from now on, with no moment where the address is unbound, while
   * `old` keeps the sessions it already carries.
   */
  adopt(old: ProxyListener): void {
    const server = old.server;
    if (!server) throw new Error(`listener ${old.name} has no bound socket to hand over`);
    old.detach();
    this.attach(server);
    this.log.info({ listener: this.name, address: this.address() }, 'listening (taken over on reload)');
  }

  /** The bound address (with the real port when 0 was asked for). */
  address(): string {
    const a = this.server?.address();
    if (a && typeof a === 'object')
      return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    if (typeof a === 'string') return a;
    return this.bind.kind === 'unix' ? this.bind.path : `${this.bind.host}:${this.bind.port}`;
  }

  /** The bound TCP port (0 for unix sockets). */
  port(): number {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  /**
   * Stops accepting (the listening socket is closed now; a unix socket file is removed); existing
   * connections continue. Resolves at once, not when they end (see whenIdle).
   */
  async stopAccepting(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.detach();
    await new Promise<void>((resolve) => {
      s.close();
      setImmediate(resolve);
    });
  }

  /** Resolves when no connection is open. */
  whenIdle(): Promise<void> {
    if (this.live.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Ends every open connection for a shutdown: queued and handshaking clients get `err` in their
   * protocol (Postgres 57P01); spliced sessions are closed.
   */
  closeAll(err: ProxyError = new ProxyError(ErrorCode.Shutdown, 'the proxy is shutting down')): void {
    for (const session of this.live.values()) session.shutdown(err);
  }

  private attach(server: net.Server): void {
    server.on('connection', this.onServerConnection);
    server.on('error', this.onServerError);
    this.server = server;
  }

  private detach(): void {
    this.server?.off('connection', this.onServerConnection);
    this.server?.off('error', this.onServerError);
    this.server = undefined;
  }

  private onConnection(socket: net.Socket): void {
    const refusal = this.connectionLimits.tryOpen(this.name, this.settings.maxConnections ?? 0);
    if (refusal) {
      this.observer.connectionRefused(this.name, refusal.limit);
      const err = new ProxyError(ErrorCode.TooManyConnections, refusal.message, { hint: refusal.hint });
      this.log.warn(
        {
          listener: this.name,
          remote: socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix',
          limit: refusal.limit,
          err: logError(err),
        },
        'refused',
      );
      this.engine.reject(socket, err);
      return;
    }
    const greeted = this.engine.greet?.(socket);
    this.observer.connectionOpened(this.name);
    const session = new Session(socket, this.engine, this.log, {
      greeted,
      listener: this.name,
      handshakeTimeoutMs: this.settings.handshakeTimeoutMs,
      idleTimeoutMs: this.settings.idleTimeoutMs ?? 0,
      ...(this.shared.logins ? { loginGate: this.shared.logins } : {}),
      observer: this.observer,
    });
    this.live.set(socket, session);
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    const done = session.run().catch((err: unknown): SessionResult => {
      // Session handles its own failures; this is a bug, logged and contained.
      this.log.error({ err }, 'session crashed');
      return { outcome: 'failed', errorCode: ErrorCode.Internal };
    });
    void done.then(async (result) => {
      // The session is over; the client socket may still be delivering a last error message
      // (engines destroy it within a second). Count the connection until it is gone.
      if (!socket.destroyed) {
        const t = setTimeout(() => socket.destroy(), 2000);
        await closed;
        clearTimeout(t);
      }
      this.live.delete(socket);
      this.connectionLimits.release(this.name);
      this.observer.connectionClosed(this.name, result.outcome);
      if (this.live.size === 0) this.idleWaiters.splice(0).forEach((w) => w());
    });
  }
}

async function removeStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) {
    throw new ProxyError(ErrorCode.Config, `${path} exists and is not a socket; refusing to replace it`);
  }
  const inUse = await new Promise<boolean>((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (inUse) throw new ProxyError(ErrorCode.Config, `${path} is in use by another process`);
  unlinkSync(path);
}
