import { isDeepStrictEqual } from 'node:util';
import type { Config, Listener } from './config/schema';
import { readSecret } from './config/secrets';
import { scrubSecrets, type Logger } from './log';
import { type Dialer, loadUpstreamCa, tcpDialer, type UpstreamTarget, upstreamTargetFor } from './net/dial';
import { LocalTls } from './net/localTls';
import { type TokenMinter, type TokenSource, tokenRequestFor } from './credentials/tokens';
import { CredentialsHub } from './credentials/hub';
import { CancelRegistry, PostgresEngine, probeUpstream as postgresProbe } from './engines/postgres';
import type { PgPrewarmDeps } from './engines/postgres/warm';
import { MysqlEngine, probeUpstream as mysqlProbe } from './engines/mysql';
import type { Engine, ProbeSession, UpstreamProbe } from './proxy/engine';
import { ProxyListener } from './proxy/listener';
import { ConnectionLimits, LoginGate } from './proxy/limits';
import { metrics, setClockSkew, setCredentialsExpiry } from './admin/metrics';
import { asProxyError, ErrorCode, ProxyError } from './errors';

/** Outside dependencies, injectable for tests; real ones by default. */
export interface AppDeps {
  log: Logger;
  dialer?: Dialer;
  /** Signs IAM tokens; defaults to the SDK's credential chain. */
  minter?: TokenMinter;
  env?: NodeJS.ProcessEnv;
}

/** A running proxy: its listeners, limits, readiness, reload and shutdown. */
export interface ProxyApp {
  /** The listeners accepting connections now (replaced ones still carrying sessions are not here). */
  readonly listeners: ProxyListener[];
  readonly localTls: LocalTls;
  /** The config in force (the last one applied by reload). */
  readonly config: Config;
  /** Open connections, including those on listeners replaced or removed by a reload. */
  connections(): number;
  /** Tokens cached across every credentials identity (bounded by tokens.cacheSize each). */
  cachedTokens(): number;
  /** Closes every listening socket; sessions continue. */
  stopAccepting(): Promise<void>;
  /** Resolves when no connection is open on any listener, old or current. */
  whenIdle(): Promise<void>;
  /** Ends every connection: handshaking clients get `err` in their protocol (default: shutdown), spliced ones are closed. */
  closeAll(err?: ProxyError): void;
  /** Applies a new config without dropping sessions; throws (and changes nothing) when it cannot. */
  reload(next: Config): Promise<ReloadSummary>;
  /** Per listener: bound, and a secret can be produced for it (cached briefly). Never contains a secret. */
  readiness(): Promise<ListenerReadiness[]>;
  /** Stops accepting, then closes every connection. */
  close(): Promise<void>;
}

/** What a reload did, by listener name. */
export interface ReloadSummary {
  added: string[];
  changed: string[];
  removed: string[];
  unchanged: string[];
}

/** One listener's readiness, as /readyz reports it. */
export interface ListenerReadiness {
  listener: string;
  ready: boolean;
  /** The listening socket is bound. */
  bound: boolean;
  address: string;
  /** What is not ready (no secret in it). */
  reason?: string;
}

/** How long a readiness check of a listener's secret source is reused, milliseconds. */
export const READINESS_CACHE_MS = 5_000;
/** The database user a readiness check signs a token for when the listener has no fixed upstream.user. */
export const READINESS_PROBE_USER = 'rds_iam_proxy_readyz';

/** Each engine's doctor probe: dial, verified TLS, then a login on request. */
const PROBES: Record<Listener['engine'], UpstreamProbe> = { postgres: postgresProbe, mysql: mysqlProbe };

/**
 * One database check for /readyz: the engine's probe (dial, verify-full TLS), then a login with
 * a token from the listener's source as upstream.user, else readiness.user; with neither, TLS is
 * as far as it goes. Bounded by the listener's handshakeTimeoutMs. Undefined = ok, else the reason.
 */
async function probeDatabase(
  l: Listener,
  target: UpstreamTarget,
  shared: Shared,
  fallbackUser?: string,
): Promise<string | undefined> {
  const user = l.upstream.user ?? fallbackUser;
  const controller = new AbortController();
  let session: ProbeSession | undefined;
  const check = async (): Promise<undefined> => {
    session = await PROBES[l.engine](target, user ?? READINESS_PROBE_USER, l.upstream.database);
    if (controller.signal.aborted) {
      session.close(); // the deadline passed while it connected
      return undefined;
    }
    if (user === undefined) return undefined;
    const lease = shared.credentials.sourceFor(l).lease(tokenRequestFor(l, user));
    try {
      await session.login(await lease.secret);
    } catch (err) {
      if (asProxyError(err).code === ErrorCode.UpstreamAuth) lease.refused();
      throw err;
    }
    return undefined;
  };
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      controller.abort();
      reject(new ProxyError(ErrorCode.UpstreamUnreachable, `no login within ${l.handshakeTimeoutMs} ms`));
    }, l.handshakeTimeoutMs);
  });
  try {
    return await Promise.race([check(), deadline]);
  } catch (err) {
    return `database: ${scrubSecrets(asProxyError(err).message)}`;
  } finally {
    clearTimeout(timer);
    session?.close();
  }
}

/** Builds the engine for a listener; throws ProxyError(Config) for unusable settings. */
function buildEngine(
  l: Listener,
  shared: {
    credentials: CredentialsHub;
    localTls: LocalTls;
    cancels: CancelRegistry;
    dialer: Dialer;
    env: NodeJS.ProcessEnv;
  },
  prewarm?: PgPrewarmDeps,
): Engine {
  const secrets: TokenSource = shared.credentials.sourceFor(l);
  const localUsers = l.client.users.map((u) => ({
    name: u.name,
    password: readSecret(u.password, shared.env),
  }));
  const common = {
    listener: l,
    dialer: shared.dialer,
    secrets,
    upstreamCa: loadUpstreamCa(l.upstream.tls.ca),
    secureContext: shared.localTls.contextFor(l.client.tls),
    localUsers,
  };
  switch (l.engine) {
    case 'postgres':
      return new PostgresEngine({ ...common, cancels: shared.cancels, ...(prewarm ? { prewarm } : {}) });
    case 'mysql':
      return new MysqlEngine({ ...common, ...(prewarm ? { prewarm } : {}) });
    default: {
      const never: never = l.engine;
      throw new ProxyError(ErrorCode.Config, `unknown engine ${String(never)}`);
    }
  }
}

type Shared = {
  credentials: CredentialsHub;
  localTls: LocalTls;
  cancels: CancelRegistry;
  dialer: Dialer;
  env: NodeJS.ProcessEnv;
};

/** A configured listener and what it runs with. */
interface Entry {
  cfg: Listener;
  listener: ProxyListener;
  /** The listener's engine: started once committed, closed when retired (prewarm pool). */
  engine: Engine;
  /** Cached result of the last secret-source check: undefined = ok, else the reason. */
  probe?: { at: number; result: Promise<string | undefined> };
  /** The last database check (readiness.checkDatabase), shared by probes while in flight. */
  dbCheck?: { at: number; result: Promise<string | undefined> };
  /** Where the database check connects (built at the first check, CA loaded once). */
  upstream?: UpstreamTarget;
  shared: Shared;
}

/** The `user` label of token metrics for a user the configuration does not name. */
export const OTHER_USERS_LABEL = '(other)';

/**
 * Metric labels come only from the configuration: a user name a client chose (auth: trust)
 * would make one series per name, so names the config does not mention are folded into one.
 */
function metricUser(cfg: Config): <T extends { user: string }>(req: T) => T {
  const named = new Set<string>([READINESS_PROBE_USER]);
  for (const l of cfg.listeners) {
    if (l.upstream.user !== undefined) named.add(l.upstream.user);
    for (const u of l.client.users) named.add(u.name);
  }
  return (req) => (named.has(req.user) ? req : { ...req, user: OTHER_USERS_LABEL });
}

/** Starts every listener in `cfg`. On a bind failure the ones already started are closed. */
export async function startProxy(cfg: Config, deps: AppDeps): Promise<ProxyApp> {
  const app = new App(cfg, deps);
  await app.start();
  return app;
}

class App implements ProxyApp {
  private cfg: Config;
  private shared: Shared;
  private readonly entries = new Map<string, Entry>();
  /** Listeners replaced or removed by a reload, until their last session ends. */
  private readonly retired = new Set<ProxyListener>();
  private readonly limits: ConnectionLimits;
  private readonly logins: LoginGate;
  private readonly log: Logger;

  constructor(
    cfg: Config,
    private readonly deps: AppDeps,
  ) {
    this.cfg = cfg;
    this.log = deps.log;
    this.shared = this.buildShared(cfg);
    this.limits = new ConnectionLimits(cfg.limits.maxConnections);
    this.logins = new LoginGate(cfg.limits, undefined, (n) => metrics.loginQueue(n));
  }

  get listeners(): ProxyListener[] {
    return [...this.entries.values()].map((e) => e.listener);
  }

  get localTls(): LocalTls {
    return this.shared.localTls;
  }

  get config(): Config {
    return this.cfg;
  }

  async start(): Promise<void> {
    const entries = this.cfg.listeners.map((l) => this.entryFor(l, this.shared));
    const started: ProxyListener[] = [];
    try {
      for (const e of entries) {
        await e.listener.start();
        started.push(e.listener);
      }
    } catch (err) {
      await Promise.all(started.map((s) => s.stopAccepting()));
      this.shared.credentials.close();
      throw err;
    }
    for (const e of entries) this.entries.set(e.cfg.name, e);
    for (const e of entries) e.engine.start?.();
    if (this.cfg.listeners.some((l) => l.client.tls === 'auto'))
      this.log.info({ caFile: this.localTls.caPath }, 'local TLS CA written');
  }

  cachedTokens(): number {
    return this.shared.credentials.cachedTokens();
  }

  connections(): number {
    let n = 0;
    for (const l of this.allListeners()) n += l.connections;
    return n;
  }

  async stopAccepting(): Promise<void> {
    // No client will take a warm session any more.
    for (const e of this.entries.values()) e.engine.close?.();
    await Promise.all(this.listeners.map((l) => l.stopAccepting()));
  }

  async whenIdle(): Promise<void> {
    while (this.connections() > 0) await Promise.all(this.allListeners().map((l) => l.whenIdle()));
  }

  closeAll(err?: ProxyError): void {
    for (const l of this.allListeners()) l.closeAll(err);
  }

  async close(): Promise<void> {
    await this.stopAccepting();
    this.closeAll();
    this.logins.close();
    this.shared.credentials.close();
  }

  async readiness(): Promise<ListenerReadiness[]> {
    return Promise.all(
      [...this.entries.values()].map(async (e): Promise<ListenerReadiness> => {
        const bound = e.listener.listening;
        const address = e.listener.address();
        if (!bound) return { listener: e.cfg.name, ready: false, bound, address, reason: 'not listening' };
        let reason = await this.probe(e);
        if (reason === undefined && this.cfg.readiness.checkDatabase) reason = await this.checkDatabase(e);
        return {
          listener: e.cfg.name,
          ready: reason === undefined,
          bound,
          address,
          ...(reason ? { reason } : {}),
        };
      }),
    );
  }

  async reload(next: Config): Promise<ReloadSummary> {
    const prev = this.cfg;
    const sharedChanged =
      !isDeepStrictEqual(prev.aws, next.aws) || !isDeepStrictEqual(prev.tokens, next.tokens);
    const tlsChanged = !isDeepStrictEqual(prev.localTls, next.localTls);
    const summary: ReloadSummary = { added: [], changed: [], removed: [], unchanged: [] };
    // 1. Build everything new first: a config problem aborts the reload with nothing changed.
    const shared: Shared =
      sharedChanged || tlsChanged
        ? {
            ...this.shared,
            ...(sharedChanged ? { credentials: this.hub(next) } : {}),
            ...(tlsChanged ? { localTls: new LocalTls(next.localTls) } : {}),
          }
        : this.shared;
    const plan: { entry: Entry; old: Entry | undefined }[] = [];
    try {
      for (const l of next.listeners) {
        const old = this.entries.get(l.name);
        if (old && isDeepStrictEqual(old.cfg, l) && old.shared === shared) {
          summary.unchanged.push(l.name);
          continue;
        }
        // Unchanged listeners keep their shared parts; changed ones pick up the new ones.
        plan.push({ entry: this.entryFor(l, shared), old });
      }
    } catch (err) {
      if (shared.credentials !== this.shared.credentials) shared.credentials.close();
      throw err;
    }
    const removed = [...this.entries.values()].filter(
      (e) => !next.listeners.some((l) => l.name === e.cfg.name),
    );
    // 2. Bind new addresses (an address in use fails the reload before anything changes).
    const sameBind = (p: (typeof plan)[number]): boolean =>
      p.old !== undefined && isDeepStrictEqual(p.old.cfg.listen, p.entry.cfg.listen);
    const started: ProxyListener[] = [];
    try {
      for (const p of plan) {
        if (sameBind(p)) continue;
        await p.entry.listener.start();
        started.push(p.entry.listener);
      }
    } catch (err) {
      await Promise.all(started.map((s) => s.stopAccepting()));
      if (shared.credentials !== this.shared.credentials) shared.credentials.close();
      throw err;
    }
    // 3. Commit: hand over or close old sockets; old listeners keep their sessions until they end.
    for (const p of plan) {
      if (p.old) {
        if (sameBind(p)) p.entry.listener.adopt(p.old.listener);
        else await p.old.listener.stopAccepting();
        this.retire(p.old.listener);
        p.old.engine.close?.();
        summary.changed.push(p.entry.cfg.name);
      } else {
        summary.added.push(p.entry.cfg.name);
      }
      this.entries.set(p.entry.cfg.name, p.entry);
    }
    for (const e of removed) {
      await e.listener.stopAccepting();
      this.retire(e.listener);
      e.engine.close?.();
      this.entries.delete(e.cfg.name);
      summary.removed.push(e.cfg.name);
    }
    // Keep the config's listener order.
    const order = new Map(next.listeners.map((l, i) => [l.name, i]));
    const sorted = [...this.entries.entries()].sort(([a], [b]) => (order.get(a) ?? 0) - (order.get(b) ?? 0));
    this.entries.clear();
    for (const [k, v] of sorted) this.entries.set(k, v);
    // A replaced hub stops its background refreshes; old listeners' last handshakes still mint on demand.
    if (shared.credentials !== this.shared.credentials) this.shared.credentials.close();
    this.shared = shared;
    this.limits.update(next.limits.maxConnections);
    this.logins.update(next.limits);
    this.log.level = next.log.level;
    this.cfg = next;
    for (const p of plan) p.entry.engine.start?.();
    if (tlsChanged && next.listeners.some((l) => l.client.tls === 'auto'))
      this.log.info({ caFile: this.localTls.caPath }, 'local TLS CA written');
    return summary;
  }

  private allListeners(): ProxyListener[] {
    return [...this.listeners, ...this.retired];
  }

  private retire(l: ProxyListener): void {
    this.retired.add(l);
    void l.whenIdle().then(() => this.retired.delete(l));
  }

  private buildShared(cfg: Config): Shared {
    return {
      credentials: this.hub(cfg),
      localTls: new LocalTls(cfg.localTls),
      cancels: new CancelRegistry(),
      dialer: this.deps.dialer ?? tcpDialer,
      env: this.deps.env ?? process.env,
    };
  }

  private hub(cfg: Config): CredentialsHub {
    const deps = this.deps;
    const labelled = metricUser(cfg);
    return new CredentialsHub(cfg, {
      log: deps.log,
      ...(deps.minter ? { minter: deps.minter } : {}),
      ...(deps.env ? { env: deps.env } : {}),
      events: {
        onMint: (req, token) => {
          metrics.tokenMinted(labelled(req), token.expiresAt);
          setCredentialsExpiry(token.credentialsExpiresAt);
        },
        onMintFailure: (req, _err, background) => metrics.tokenMintFailed(labelled(req), background),
      },
      onSkew: (s) => setClockSkew(s.offsetSeconds),
    });
  }

  private entryFor(l: Listener, shared: Shared): Entry {
    const engine = buildEngine(l, shared, { gate: this.logins, observer: metrics, log: this.log });
    const listener = new ProxyListener(
      l.name,
      l.listen,
      engine,
      this.log,
      {
        handshakeTimeoutMs: l.handshakeTimeoutMs,
        idleTimeoutMs: l.idleTimeoutMs,
        maxConnections: l.maxConnections,
        socketMode: l.socketMode,
        ...(l.socketGroup !== undefined ? { socketGroup: l.socketGroup } : {}),
      },
      { connections: this.limits, logins: this.logins },
      metrics,
    );
    return { cfg: l, listener, engine, shared };
  }

  /** Asks the listener's secret source for a secret (discarded at once), at most every READINESS_CACHE_MS. */
  /**
   * readiness.checkDatabase: a real TLS + login to the listener's database, started at most once
   * per readiness.intervalSeconds per listener; concurrent probes share the one in flight.
   */
  private checkDatabase(e: Entry): Promise<string | undefined> {
    const now = Date.now();
    const r = this.cfg.readiness;
    if (e.dbCheck && now - e.dbCheck.at < r.intervalSeconds * 1000) return e.dbCheck.result;
    let result: Promise<string | undefined>;
    try {
      e.upstream ??= upstreamTargetFor(e.cfg, e.shared.dialer, loadUpstreamCa(e.cfg.upstream.tls.ca));
      result = probeDatabase(e.cfg, e.upstream, e.shared, r.user);
    } catch (err) {
      result = Promise.resolve(`database: ${asProxyError(err).message}`);
    }
    e.dbCheck = { at: now, result };
    return result;
  }

  private probe(e: Entry): Promise<string | undefined> {
    const now = Date.now();
    if (e.probe && now - e.probe.at < READINESS_CACHE_MS) return e.probe.result;
    const l = e.cfg;
    const req = tokenRequestFor(l, l.upstream.user ?? READINESS_PROBE_USER);
    const result = e.shared.credentials
      .sourceFor(l)
      .lease(req)
      .secret.then(
        () => undefined,
        (err: unknown) => `credentials: ${scrubSecrets(err instanceof Error ? err.message : String(err))}`,
      );
    e.probe = { at: now, result };
    return result;
  }
}
