import net from 'node:net';
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import type { Logger } from '../log';
import { parseListen, type ListenAddress } from '../config/load';
import type { Engine } from './engine';
import { runSession, type SessionResult } from './session';
import { ErrorCode, ProxyError } from '../errors';

/**
 * One bound address feeding one engine. Tracks its live connections so shutdown can drain
 * them. TCP binds default to 127.0.0.1; a unix socket path is replaced if a stale socket
 * file (nobody listening) is in the way.
 */
export class ProxyListener {
  private server: net.Server | undefined;
  private readonly live = new Set<net.Socket>();
  readonly bind: ListenAddress;

  constructor(
    readonly name: string,
    listen: string | number,
    private readonly engine: Engine,
    private readonly log: Logger,
    private readonly handshakeTimeoutMs: number,
    /** Told about every finished connection (metrics). */
    private readonly onResult: (r: SessionResult) => void = () => undefined,
  ) {
    this.bind = parseListen(listen);
  }

  /** Number of connections currently open (handshaking or spliced). */
  get connections(): number {
    return this.live.size;
  }

  /** Resolves once bound; rejects with a ProxyError naming the address on failure. */
  async start(): Promise<void> {
    const server = net.createServer({ noDelay: true, pauseOnConnect: false }, (s) => this.onConnection(s));
    this.server = server;
    if (this.bind.kind === 'unix') await removeStaleSocket(this.bind.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new ProxyError(ErrorCode.Config, `listener ${this.name} cannot listen on ${this.address()}: ${err.code ?? err.message}`, { cause: err })),
      );
      if (this.bind.kind === 'unix') server.listen(this.bind.path, resolve);
      else server.listen({ host: this.bind.host, port: this.bind.port }, resolve);
    });
    server.on('error', (err) => this.log.error({ err }, 'listener error'));
    this.log.info({ listener: this.name, address: this.address() }, 'listening');
  }

  /** The bound address (with the real port when 0 was asked for). */
  address(): string {
    const a = this.server?.address();
    if (a && typeof a === 'object') return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    if (typeof a === 'string') return a;
    return this.bind.kind === 'unix' ? this.bind.path : `${this.bind.host}:${this.bind.port}`;
  }

  /** The bound TCP port (0 for unix sockets). */
  port(): number {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  /** Stops accepting; existing connections continue. */
  async stopAccepting(): Promise<void> {
    const s = this.server;
    if (!s) return;
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  /** Closes every open connection with the engine's shutdown error, or destroys it if spliced. */
  closeAll(): void {
    for (const s of this.live) s.destroy();
  }

  private onConnection(socket: net.Socket): void {
    this.live.add(socket);
    socket.once('close', () => this.live.delete(socket));
    runSession(socket, this.engine, this.log, { listener: this.name, handshakeTimeoutMs: this.handshakeTimeoutMs }).then(
      (r) => this.onResult(r),
      (err: unknown) => {
        // runSession handles its own failures; this is a bug, logged and contained.
        this.log.error({ err }, 'session crashed');
        socket.destroy();
      },
    );
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
