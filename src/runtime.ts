/**
 * The running process around the proxy: admin server, signals, drain and reload.
 *
 * SIGTERM / SIGINT / POST /quitquitquit start a drain:
 *   1. keep accepting for shutdown.minDelayMs (apps still starting, endpoints being removed);
 *   2. stop accepting and report not ready (/readyz 503 "draining");
 *   3. let sessions finish for up to shutdown.maxDelayMs;
 *   4. close what is left: clients still in their handshake (or waiting for a login slot) get the
 *      protocol's shutdown error (Postgres 57P01 admin_shutdown); spliced sessions are closed;
 *   5. exit 0 (143 after SIGTERM / quitquitquit with shutdown.exitCode143).
 * A second signal during the drain exits at once.
 *
 * SIGHUP re-reads the config (file, environment, flags) and applies it without dropping sessions:
 * listeners added, removed and changed (see ProxyApp.reload); limits, log level and shutdown
 * settings take effect. An invalid config is logged and the running one kept.
 */
import type { Config } from './config/schema';
import { ConfigError } from './config/load';
import type { Logger } from './log';
import { startProxy, type AppDeps, type ProxyApp } from './app';
import { AdminServer, type ReadinessReport } from './admin/http';
import { enableMetrics, metrics } from './admin/metrics';
import { SystemdNotifier } from './admin/sdnotify';
import { ErrorCode, ExitCode, logError, ProxyError } from './errors';

/** Where the process is in its life. */
export const Phase = {
  Starting: 'starting',
  Running: 'running',
  /** Signalled; still accepting for shutdown.minDelayMs. */
  Stopping: 'stopping',
  /** Not accepting; waiting for sessions (up to shutdown.maxDelayMs). */
  Draining: 'draining',
  Stopped: 'stopped',
} as const;
export type Phase = (typeof Phase)[keyof typeof Phase];

/** How long start() waits for the first readiness check before logging "listening; not ready". */
const READY_CHECK_WAIT_MS = 5_000;
/** How often readiness is re-checked until the proxy is ready (then only /readyz probes check). */
const READY_RECHECK_MS = 10_000;

/** What started a shutdown. */
export type StopReason = 'SIGTERM' | 'SIGINT' | 'quitquitquit';

export interface RuntimeOptions {
  config: Config;
  /** Re-reads file < env < flags for SIGHUP; throws ConfigError when invalid. */
  load?: () => Config;
  log: Logger;
  version: string;
  /** Outside dependencies for the proxy (tests inject credentials); the logger is `log`. */
  deps?: Omit<AppDeps, 'log'>;
}

/** The subset of `process` the runtime listens to (tests pass an EventEmitter). */
export interface SignalSource {
  on(signal: NodeJS.Signals, listener: () => void): unknown;
  off(signal: NodeJS.Signals, listener: () => void): unknown;
}

export class Runtime {
  phase: Phase = Phase.Starting;
  /** Resolves with the exit code once the process should exit. */
  readonly done: Promise<number>;
  private resolveDone!: (code: number) => void;
  private proxy: ProxyApp | undefined;
  private admin: AdminServer | undefined;
  private cfg: Config;
  private readonly log: Logger;
  private stopReason: StopReason | undefined;
  private reloading: Promise<unknown> = Promise.resolve();
  private readonly timers = new Set<NodeJS.Timeout>();
  private systemd: SystemdNotifier | undefined;
  /** "rds-iam-proxy ready" has been logged (once per process). */
  private announcedReady = false;

  constructor(private readonly options: RuntimeOptions) {
    this.cfg = options.config;
    this.log = options.log;
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  /** The running proxy (after start). */
  get app(): ProxyApp {
    if (!this.proxy) throw new Error('runtime not started');
    return this.proxy;
  }

  /** The admin server, when admin.listen is set. */
  get adminServer(): AdminServer | undefined {
    return this.admin;
  }

  /**
   * Starts the listeners, then the admin server. Logs "rds-iam-proxy ready" only when /readyz
   * would say ready; otherwise "listening; not ready" (warn) with each listener's reason, and
   * "rds-iam-proxy ready" later, once a readiness check (a /readyz probe or the re-check every
   * READY_RECHECK_MS) passes.
   */
  async start(): Promise<void> {
    metrics.buildInfo(this.options.version);
    this.proxy = await startProxy(this.cfg, { ...this.options.deps, log: this.log });
    try {
      if (this.cfg.admin.listen !== undefined) {
        enableMetrics();
        this.admin = await AdminServer.start(this.cfg.admin.listen, this.adminHandlers(), this.log);
      }
    } catch (err) {
      await this.proxy.close();
      throw err;
    }
    this.phase = Phase.Running;
    this.notifySystemd('READY=1', 'STATUS=listening');
    const first = await Promise.race([
      this.readiness(),
      new Promise<undefined>((resolve) => this.sleep(READY_CHECK_WAIT_MS).then(() => resolve(undefined))),
    ]);
    if (this.announcedReady || this.phase !== Phase.Running) return;
    const notReady = first
      ? first.listeners.filter((l) => !l.ready)
      : [{ listener: '*', ready: false, reason: 'readiness check still running' }];
    this.log.warn(
      {
        ...this.startupFields(),
        notReady: notReady.map((l) => ({ listener: l.listener, reason: l.reason })),
      },
      'listening; not ready',
    );
    this.recheckReady();
  }

  /** What the start-up line adds to every line's service and version: listener and admin addresses. */
  private startupFields(): Record<string, unknown> {
    return {
      listeners: this.proxy?.listeners.map((l) => ({ name: l.name, address: l.address() })) ?? [],
      ...(this.admin ? { admin: this.admin.address() } : {}),
    };
  }

  /** Re-checks readiness every READY_RECHECK_MS until "rds-iam-proxy ready" has been logged. */
  private recheckReady(): void {
    if (this.announcedReady || this.phase !== Phase.Running) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      void this.readiness().finally(() => this.recheckReady());
    }, READY_RECHECK_MS);
    t.unref();
    this.timers.add(t);
  }

  /** sd_notify for Type=notify units (a no-op outside systemd), in call order; failures are logged. */
  private notifySystemd(...fields: string[]): void {
    void (this.systemd ??= new SystemdNotifier(this.log)).notify(...fields);
  }

  /** Installs SIGTERM, SIGINT and SIGHUP handlers; returns a function that removes them. */
  installSignals(source: SignalSource = process): () => void {
    const term = (): void => this.shutdown('SIGTERM');
    const int = (): void => this.shutdown('SIGINT');
    const hup = (): void => void this.reload();
    source.on('SIGTERM', term);
    source.on('SIGINT', int);
    source.on('SIGHUP', hup);
    return () => {
      source.off('SIGTERM', term);
      source.off('SIGINT', int);
      source.off('SIGHUP', hup);
    };
  }

  /** /readyz: every listener bound and able to get a secret; never ready while stopping. */
  async readiness(): Promise<ReadinessReport> {
    if (this.phase === Phase.Draining || this.phase === Phase.Stopped)
      return { status: 'draining', listeners: [] };
    if (!this.proxy || this.phase === Phase.Starting) return { status: 'not ready', listeners: [] };
    const listeners = (await this.proxy.readiness()).map((r) => ({
      listener: r.listener,
      ready: r.ready,
      ...(r.reason ? { reason: r.reason } : {}),
    }));
    const ready = listeners.every((l) => l.ready);
    if (ready && !this.announcedReady && this.phase === Phase.Running) {
      this.announcedReady = true;
      this.log.info(this.startupFields(), 'rds-iam-proxy ready');
    }
    return { status: ready ? 'ready' : 'not ready', listeners };
  }

  /**
   * Starts the drain (see the file comment). A second call exits at once: open connections are
   * closed (handshaking clients get the shutdown error) and `done` resolves.
   */
  shutdown(reason: StopReason): void {
    const code = this.exitCodeFor(reason);
    if (this.stopReason !== undefined) {
      if (this.phase === Phase.Stopped) return;
      this.log.warn(
        { signal: reason, connections: this.proxy?.connections() ?? 0 },
        'second stop request: exiting now',
      );
      this.proxy?.closeAll(shutdownError());
      void this.proxy?.close();
      this.finish(this.exitCodeFor(this.stopReason));
      return;
    }
    this.stopReason = reason;
    void this.drain(reason, code).catch((err: unknown) => {
      this.log.error({ err }, 'shutdown failed');
      this.finish(ExitCode.Failure);
    });
  }

  /**
   * Re-reads and applies the config (SIGHUP). Resolves true when applied; false when the new
   * config was invalid or could not be applied (the running one stays). Reloads run one at a time.
   */
  reload(): Promise<boolean> {
    this.notifySystemd('RELOADING=1');
    const next = this.reloading.then(() => this.reloadNow());
    void next.then(() => this.phase === Phase.Running && this.notifySystemd('READY=1', 'STATUS=listening'));
    this.reloading = next;
    return next;
  }

  private async reloadNow(): Promise<boolean> {
    if (this.phase !== Phase.Running || !this.proxy) {
      this.log.warn({ phase: this.phase }, 'reload ignored: the proxy is not running');
      return false;
    }
    if (!this.options.load) {
      this.log.warn('reload ignored: no config source to re-read');
      return false;
    }
    let next: Config;
    try {
      next = this.options.load();
    } catch (err) {
      metrics.configReloaded(false);
      const problems = err instanceof ConfigError ? err.problems : undefined;
      this.log.error(
        { problems, err: problems ? undefined : logError(err) },
        'reload failed: invalid configuration; keeping the running one',
      );
      return false;
    }
    // A new admin address is bound first, so a failure there changes nothing either.
    const adminChanged = JSON.stringify(next.admin) !== JSON.stringify(this.cfg.admin);
    let freshAdmin: AdminServer | undefined;
    try {
      if (adminChanged && next.admin.listen !== undefined) {
        enableMetrics();
        freshAdmin = await AdminServer.start(next.admin.listen, this.adminHandlers(), this.log);
      }
      const summary = await this.proxy.reload(next);
      if (adminChanged) {
        const old = this.admin;
        this.admin = freshAdmin;
        freshAdmin = undefined;
        await old?.close();
      }
      this.cfg = next;
      metrics.configReloaded(true);
      this.log.info(
        { ...summary, listeners: this.proxy.listeners.map((l) => ({ name: l.name, address: l.address() })) },
        'config reloaded',
      );
      return true;
    } catch (err) {
      await freshAdmin?.close();
      metrics.configReloaded(false);
      this.log.error({ err: logError(err) }, 'reload failed; keeping the running configuration');
      return false;
    }
  }

  private adminHandlers(): { readiness: () => Promise<ReadinessReport>; quit: () => void } {
    return {
      readiness: () => this.readiness(),
      quit: () => {
        if (this.stopReason === undefined) this.shutdown('quitquitquit');
      },
    };
  }

  private exitCodeFor(reason: StopReason): number {
    return reason !== 'SIGINT' && this.cfg.shutdown.exitCode143 ? ExitCode.Sigterm : ExitCode.Ok;
  }

  private async drain(reason: StopReason, code: number): Promise<void> {
    const app = this.app;
    const { minDelayMs, maxDelayMs } = this.cfg.shutdown;
    this.phase = Phase.Stopping;
    metrics.draining(true);
    this.notifySystemd('STOPPING=1', 'STATUS=draining');
    this.log.info(
      { signal: reason, connections: app.connections(), minDelayMs, maxDelayMs },
      'shutting down: still accepting for shutdown.minDelayMs',
    );
    await this.sleep(minDelayMs);
    if (this.stopped()) return;
    this.phase = Phase.Draining;
    await app.stopAccepting();
    this.log.info(
      { connections: app.connections() },
      'draining: stopped accepting; waiting for sessions to end',
    );
    const idle = await Promise.race([
      app.whenIdle().then(() => true),
      this.sleep(maxDelayMs).then(() => false),
    ]);
    if (this.stopped()) return;
    if (!idle) {
      this.log.warn(
        { connections: app.connections() },
        'drain deadline (shutdown.maxDelayMs) reached: closing the remaining connections',
      );
      app.closeAll(shutdownError());
      // Give the shutdown errors a moment to reach the clients (engines destroy within ~1 s).
      await Promise.race([app.whenIdle(), this.sleep(3000)]);
    }
    await app.close();
    this.log.info({ exitCode: code }, 'stopped');
    this.finish(code);
  }

  /** True once `done` has been (or is being) resolved, e.g. by a second signal during a wait. */
  private stopped(): boolean {
    return this.phase === Phase.Stopped;
  }

  private finish(code: number): void {
    if (this.phase === Phase.Stopped) return;
    this.phase = Phase.Stopped;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const admin = this.admin;
    this.admin = undefined;
    // STOPPING=1 (queued behind earlier notifications) must leave before the process exits.
    void Promise.all([admin?.close(), this.systemd?.flush()]).finally(() => this.resolveDone(code));
  }

  private sleep(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.timers.delete(t);
        resolve();
      }, ms);
      this.timers.add(t);
    });
  }
}

function shutdownError(): ProxyError {
  return new ProxyError(ErrorCode.Shutdown, 'the proxy is shutting down', {
    hint: 'reconnect: a new rds-iam-proxy instance (or this one after restart) will accept the connection',
  });
}

/**
 * The log format to use: `auto` is pretty on a TTY when pino-pretty is installed (it is a
 * development dependency), JSON otherwise; an explicit `pretty` without pino-pretty falls back to
 * JSON too (with `fallback` set so the caller can say so).
 */
export function resolveLogFormat(
  setting: 'auto' | 'json' | 'pretty',
  isTTY: boolean,
  resolve: (id: string) => string = require.resolve,
): { format: 'json' | 'pretty'; fallback: boolean } {
  if (setting === 'json' || (setting === 'auto' && !isTTY)) return { format: 'json', fallback: false };
  try {
    resolve('pino-pretty');
    return { format: 'pretty', fallback: false };
  } catch {
    return { format: 'json', fallback: setting === 'pretty' };
  }
}
