/**
 * Pre-warmed upstream logins (listeners[].prewarm): an engine-independent pool of upstream
 * sessions logged in ahead of time, each handed to exactly one client and never reused.
 *
 * Keys are (user, database) as the client names them: given in the config, or learned from
 * recent successful logins (at most `learn`, least recently used dropped first). Each key keeps
 * `size` sessions ready; a ready session is closed and replaced after `maxAgeSeconds`, or at once
 * when the server closes it or sends anything while it is idle. Refills take a slot from the
 * same LoginGate as clients (limits.loginsPerSecond) and back off exponentially (1 s .. 60 s)
 * while logins fail. The engine supplies the wire work (`PrewarmBackend`) and decides whether a
 * ready session fits a client (`take`'s `fit`).
 */
import type { Logger } from '../log';
import { onAbort, untilAborted } from '../abort';
import { asProxyError } from '../errors';
import type { LoginGate } from './limits';
import { noopPrewarmObserver, type PrewarmDiscard, type PrewarmMiss, type PrewarmObserver } from './observer';

/** The `prewarm` section of a listener. */
export interface PrewarmSettings {
  /** Sessions kept ready per key. */
  size: number;
  /** Keys given in the config; database absent = the engine's default for the user. */
  keys: { user: string; database?: string | undefined }[];
  /** How many keys to learn from recent logins (0 = none). */
  learn: number;
  /** A ready session unused this long is closed and replaced, seconds. */
  maxAgeSeconds: number;
}

/** Who a warm session is logged in as, plus what the engine needs to reproduce a client's startup. */
export interface WarmKey<P> {
  user: string;
  database: string;
  /** Engine-defined startup profile (e.g. Postgres startup parameters), updated from each client. */
  profile: P;
}

/** The engine's side of the pool. */
export interface PrewarmBackend<S, P> {
  /** Logs one session in for `key`; rejects on any failure. Aborting `signal` must end it. */
  open(key: WarmKey<P>, signal: AbortSignal): Promise<S>;
  /**
   * Watches an idle session: calls `onDeath` once if the server closes it or sends anything.
   * Returns a function that stops watching (before a hand-out).
   */
  watch(s: S, onDeath: () => void): () => void;
  /** True while the session may be handed out (socket open, nothing buffered). */
  alive(s: S): boolean;
  close(s: S): void;
}

/** What a pool is built with. */
export interface PrewarmOptions<S, P> {
  listener: string;
  settings: PrewarmSettings;
  backend: PrewarmBackend<S, P>;
  /** The process's login rate limit; absent = unlimited. */
  gate?: LoginGate | undefined;
  observer?: PrewarmObserver | undefined;
  log: Logger;
  /** Engine default for a key without a database (Postgres: the user). */
  defaultDatabase: (user: string) => string;
  /** The profile of a configured key before any client has been seen. */
  initialProfile: P;
  /** Refill logins in flight at once per pool. Default 2. */
  concurrency?: number;
}

/** The label of every learned key in metrics: labels come only from the configuration. */
export const LEARNED_LABEL = 'learned';

/**
 * How long after a hand-out (or a client login that teaches a key) refills start, ms. A refill's
 * TLS handshake and token signing share the proxy's event loop, and its login the server, with
 * the client just served: overlapping them made MySQL hand-outs a quarter slower and the first
 * query on a handed-out session 3 ms instead of 0.7 in `npm run bench`. A login takes longer.
 */
export const REFILL_AFTER_HANDOUT_MS = 20;
const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 60_000;
/** A learned key whose logins keep failing is forgotten after this many in a row. */
const LEARNED_MAX_FAILURES = 5;

interface Ready<S> {
  session: S;
  unwatch: () => void;
  timer: NodeJS.Timeout;
}

interface KeyState<S, P> {
  id: string;
  key: WarmKey<P>;
  label: string;
  learned: boolean;
  ready: Ready<S>[];
  opening: number;
  failures: number;
  /** performance.now() before which no refill starts (backoff). */
  retryAt: number;
  /** From the last `learn`: sessions no client of the current profile could use. */
  stale?: ((s: S) => boolean) | undefined;
}

/** A ready session handed out, with what the engine's `fit` made of it. */
export interface Taken<S, T> {
  session: S;
  fit: T;
}

/**
 * The pool for one listener. `start()` begins filling; `take()` hands a session out (or counts a
 * miss); `learn()` records a successful login's key; `close()` closes everything.
 */
export class PrewarmPool<S, P> {
  private readonly keys = new Map<string, KeyState<S, P>>();
  /** Sessions handed out whose idle watch and maximum-age timer still run (see `claim`). */
  private readonly unclaimed = new Map<S, Ready<S>>();
  private readonly observer: PrewarmObserver;
  private readonly concurrency: number;
  private inFlight = 0;
  private closed = false;
  private started = false;
  /** Ends this pool's registration with the ready gauge (PrewarmObserver.prewarmPool). */
  private unregister: (() => void) | undefined;
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private refillTimer: NodeJS.Timeout | undefined;

  constructor(private readonly o: PrewarmOptions<S, P>) {
    this.observer = o.observer ?? noopPrewarmObserver;
    this.concurrency = o.concurrency ?? 2;
    for (const k of o.settings.keys) {
      const database = k.database ?? o.defaultDatabase(k.user);
      const id = keyId(k.user, database);
      if (this.keys.has(id)) continue;
      this.keys.set(id, {
        id,
        key: { user: k.user, database, profile: o.initialProfile },
        label: `${k.user}/${database}`,
        learned: false,
        ready: [],
        opening: 0,
        failures: 0,
        retryAt: 0,
      });
    }
  }

  /** Starts filling every configured key. */
  start(): void {
    if (this.closed || this.started) return;
    this.started = true;
    this.unregister = this.observer.prewarmPool(this.o.listener, () => this.readyByLabel());
    this.pump();
  }

  /** Ready sessions for (user, database). */
  readyCount(user: string, database: string): number {
    return this.keys.get(keyId(user, database))?.ready.length ?? 0;
  }

  /** The current profile of (user, database), if the key is known. */
  profile(user: string, database: string): P | undefined {
    return this.keys.get(keyId(user, database))?.key.profile;
  }

  /** The keys known now (configured, then learned in least-recently-used order). */
  knownKeys(): WarmKey<P>[] {
    return [...this.keys.values()].map((s) => s.key);
  }

  /**
   * Hands out the oldest ready session for (user, database) that is alive and that `fit`
   * accepts, or undefined on a miss, which is counted by reason. `fit` returns `{ miss }` to
   * leave a session in the pool; anything else is handed back with the session. Dead sessions
   * found on the way are discarded. The caller owns the session from then on.
   */
  take<T>(user: string, database: string, fit: (s: S) => T | { miss: PrewarmMiss }): Taken<S, T> | undefined {
    const state = this.keys.get(keyId(user, database));
    if (!state || this.closed) {
      this.observer.prewarmMissed(this.o.listener, this.labelFor(state), 'no_key');
      return undefined;
    }
    let reason: PrewarmMiss = 'empty';
    for (let i = 0; i < state.ready.length;) {
      const r = state.ready[i] as Ready<S>;
      if (!this.o.backend.alive(r.session)) {
        this.drop(state, r, 'dead');
        continue;
      }
      const f = fit(r.session);
      if (isMiss(f)) {
        reason = f.miss;
        i++;
        continue;
      }
      state.ready.splice(i, 1);
      this.unclaimed.set(r.session, r);
      this.observer.prewarmHandedOut(this.o.listener, state.label);
      this.pumpAfterHandOut();
      return { session: r.session, fit: f };
    }
    this.observer.prewarmMissed(this.o.listener, state.label, reason);
    this.pump(); // replaces sessions found dead on the way
    return undefined;
  }

  /**
   * Takes the oldest alive ready session of the most recently used key that has one, before the
   * client has named its key (MySQL: the server speaks first, so the greeting must be a warm
   * session's), and calls `first` with it before the pool's own bookkeeping, so the caller's
   * first write goes out at once. Counts nothing: the caller reports `handedOut`, or `spoilt` /
   * `missed`.
   */
  reserve(first: (s: S) => void): { session: S; key: WarmKey<P> } | undefined {
    if (this.closed) return undefined;
    for (const state of [...this.keys.values()].reverse()) {
      for (let i = 0; i < state.ready.length;) {
        const r = state.ready[i] as Ready<S>;
        if (!this.o.backend.alive(r.session)) {
          this.drop(state, r, 'dead');
          continue;
        }
        state.ready.splice(i, 1);
        first(r.session);
        this.unclaimed.set(r.session, r);
        this.pumpAfterHandOut();
        return { session: r.session, key: state.key };
      }
    }
    this.pump(); // replaces sessions found dead on the way
    return undefined;
  }

  /**
   * Stops the idle watch and the maximum-age timer of a session from `take` / `reserve`. The
   * engine calls it right before it first uses the socket, after its client's reply is written
   * where it can, so the client waits for none of it. Until then a byte or a close from the
   * server still marks the session dead. Idempotent.
   */
  claim(s: S): void {
    const r = this.unclaimed.get(s);
    if (!r) return;
    this.unclaimed.delete(s);
    clearTimeout(r.timer);
    r.unwatch();
  }

  /** Counts a hand-out of a session from `reserve`. */
  handedOut(user: string, database: string): void {
    this.observer.prewarmHandedOut(this.o.listener, this.labelFor(this.keys.get(keyId(user, database))));
  }

  /** Counts a client that got a fresh login without a session from `take` (e.g. none reserved). */
  missed(user: string, database: string, reason: PrewarmMiss): void {
    this.observer.prewarmMissed(this.o.listener, this.labelFor(this.keys.get(keyId(user, database))), reason);
  }

  /**
   * Closes a session from `take` / `reserve` its client could not use (e.g. a SET the server
   * refused), counting the discard, and the miss if given (else the caller counts the client's
   * outcome, as when it tries another session).
   */
  spoilt(user: string, database: string, s: S, reason: PrewarmDiscard, miss?: PrewarmMiss): void {
    const label = this.labelFor(this.keys.get(keyId(user, database)));
    this.claim(s);
    this.o.backend.close(s);
    this.observer.prewarmDiscarded(this.o.listener, label, reason);
    if (miss) this.observer.prewarmMissed(this.o.listener, label, miss);
  }

  /**
   * Records a successful client login for (user, database) with its startup `profile`: refills
   * of a known key use it from now on (ready sessions `stale` accepts are replaced); an unknown
   * key is learned when `learn` > 0 (the least recently used learned key is dropped beyond that).
   */
  learn(user: string, database: string, profile: P, stale?: (s: S) => boolean): void {
    if (this.closed) return;
    const id = keyId(user, database);
    const known = this.keys.get(id);
    if (known) {
      known.key = { ...known.key, profile };
      // Ready sessions no client of the new profile could use (MySQL capabilities) are replaced.
      if (stale) {
        known.stale = stale;
        for (const r of known.ready.filter((x) => stale(x.session))) this.drop(known, r, 'stale');
        this.pumpAfterHandOut(); // learn() runs as a client logs in
      }
      if (known.learned) {
        this.keys.delete(id); // re-insert: most recently used last
        this.keys.set(id, known);
      }
      return;
    }
    if (this.o.settings.learn <= 0) return;
    const state: KeyState<S, P> = {
      id,
      key: { user, database, profile },
      label: LEARNED_LABEL,
      learned: true,
      ready: [],
      opening: 0,
      failures: 0,
      retryAt: 0,
    };
    this.keys.set(id, state);
    const learned = [...this.keys.values()].filter((s) => s.learned);
    for (const old of learned.slice(0, Math.max(0, learned.length - this.o.settings.learn)))
      this.forget(old, 'evicted');
    this.o.log.info({ user, database }, 'prewarm: learned a key');
    if (this.started) this.pumpAfterHandOut();
  }

  /** Closes every ready session and stops refilling; logins in flight are aborted. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.controller.abort();
    if (this.timer) clearTimeout(this.timer);
    if (this.refillTimer) clearTimeout(this.refillTimer);
    for (const s of this.keys.values()) {
      for (const r of [...s.ready]) this.drop(s, r, 'shutdown');
    }
    // Sessions with a client now stay that client's; only the pool's watch and timer end.
    for (const s of [...this.unclaimed.keys()]) this.claim(s);
    this.unregister?.();
  }

  private forget(state: KeyState<S, P>, reason: PrewarmDiscard): void {
    this.keys.delete(state.id);
    for (const r of [...state.ready]) this.drop(state, r, reason);
  }

  private drop(state: KeyState<S, P>, r: Ready<S>, reason: PrewarmDiscard): void {
    const i = state.ready.indexOf(r);
    if (i >= 0) state.ready.splice(i, 1);
    clearTimeout(r.timer);
    r.unwatch();
    this.o.backend.close(r.session);
    this.observer.prewarmDiscarded(this.o.listener, state.label, reason);
  }

  /** Starts refills where keys are short, as far as concurrency and backoff allow. */
  private pump(): void {
    if (this.closed || !this.started) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const now = performance.now();
    let nextRetry = Infinity;
    for (const state of this.keys.values()) {
      while (this.inFlight < this.concurrency && state.ready.length + state.opening < this.o.settings.size) {
        if (state.retryAt > now) {
          nextRetry = Math.min(nextRetry, state.retryAt);
          break;
        }
        void this.refill(state);
      }
    }
    if (nextRetry !== Infinity)
      this.timer = setTimeout(() => this.pump(), Math.max(1, nextRetry - now)).unref();
  }

  /** Refills after REFILL_AFTER_HANDOUT_MS; hand-outs in the meantime share the one timer. */
  private pumpAfterHandOut(): void {
    this.refillTimer ??= setTimeout(() => {
      this.refillTimer = undefined;
      this.pump();
    }, REFILL_AFTER_HANDOUT_MS).unref();
  }

  private async refill(state: KeyState<S, P>): Promise<void> {
    state.opening++;
    this.inFlight++;
    try {
      await this.loginSlot();
      if (this.closed) return;
      const session = await this.o.backend.open(state.key, this.controller.signal);
      // The key was dropped (evicted) or the pool closed while logging in: the session is not needed.
      if (this.closed || this.keys.get(state.id) !== state) {
        this.o.backend.close(session);
        return;
      }
      state.failures = 0;
      state.retryAt = 0;
      // Logged in with a profile a `learn` replaced meanwhile.
      if (state.stale?.(session)) {
        this.o.backend.close(session);
        this.observer.prewarmDiscarded(this.o.listener, state.label, 'stale');
        return;
      }
      this.addReady(state, session);
    } catch (err) {
      if (this.closed) return;
      state.failures++;
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (state.failures - 1));
      state.retryAt = performance.now() + delay;
      const e = asProxyError(err);
      this.o.log.warn(
        { user: state.key.user, database: state.key.database, code: e.code, retryInMs: delay },
        `prewarm login failed: ${e.message}`,
      );
      this.observer.prewarmLoginFailed(this.o.listener, state.label);
      if (state.learned && state.failures >= LEARNED_MAX_FAILURES && this.keys.get(state.id) === state)
        this.forget(state, 'evicted');
    } finally {
      // Counted as opening until it is in `ready`, so pump() never starts one too many.
      state.opening--;
      this.inFlight--;
      this.pump();
    }
  }

  private addReady(state: KeyState<S, P>, session: S): void {
    const r: Ready<S> = {
      session,
      unwatch: () => undefined,
      timer: setTimeout(() => {
        // Handed out and not yet claimed: the client's now, however old.
        if (!state.ready.includes(r)) return;
        this.drop(state, r, 'max_age');
        this.pump();
      }, this.o.settings.maxAgeSeconds * 1000).unref(),
    };
    r.unwatch = this.o.backend.watch(session, () => {
      if (!state.ready.includes(r)) {
        // Handed out and not yet claimed: it is marked dead (the engine checks it); the pool
        // is done with it.
        this.claim(session);
        return;
      }
      this.drop(state, r, 'closed');
      this.pump();
    });
    state.ready.push(r);
  }

  /** Waits for a login slot like a client would; a full queue waits a second and asks again. */
  private async loginSlot(): Promise<void> {
    const gate = this.o.gate;
    if (!gate) return;
    for (;;) {
      if (this.closed) return;
      const ticket = gate.acquire();
      if (ticket) {
        if (ticket.isGranted) return;
        const stop = onAbort(this.controller.signal, () => ticket.cancel());
        await untilAborted(ticket.granted, this.controller.signal).finally(stop);
        return;
      }
      await new Promise((r) => setTimeout(r, BACKOFF_MIN_MS).unref());
    }
  }

  /** Ready sessions per key label, for the gauge (learned keys are summed into one value). */
  private readyByLabel(): Map<string, number> {
    const n = new Map<string, number>();
    for (const s of this.keys.values()) n.set(s.label, (n.get(s.label) ?? 0) + s.ready.length);
    return n;
  }

  private labelFor(state: KeyState<S, P> | undefined): string {
    return state ? state.label : LEARNED_LABEL;
  }
}

function keyId(user: string, database: string): string {
  return JSON.stringify([user, database]);
}

function isMiss(v: unknown): v is { miss: PrewarmMiss } {
  return typeof v === 'object' && v !== null && 'miss' in v;
}

/** What the shared idle watch needs of an engine's warm session. */
export interface IdleSession {
  /** The logged-in upstream socket. */
  readonly socket: import('node:stream').Duplex;
  /** Set by the watch when the server closed the session or sent anything while idle. */
  dead: boolean;
}

/**
 * Watches an idle warm session: any byte, end or error from the server makes it dead (it is
 * never handed out) and calls `onDeath` once. Returns the function that stops watching and
 * pauses the socket for the hand-out. Both engines' `PrewarmBackend.watch`.
 */
export function watchIdle(w: IdleSession, onDeath: () => void): () => void {
  const s = w.socket;
  const die = (): void => {
    w.dead = true;
    stop();
    onDeath();
  };
  const stop = (): void => {
    s.off('data', die);
    s.off('end', die);
    s.off('close', die);
    s.off('error', die);
    s.on('error', () => undefined);
    s.pause();
  };
  s.on('data', die);
  s.on('end', die);
  s.on('close', die);
  s.on('error', die);
  s.resume();
  return stop;
}

/** True while a warm session may be handed out: not dead, socket open, nothing buffered. */
export function idleAlive(w: IdleSession): boolean {
  const s = w.socket;
  return !w.dead && !s.destroyed && s.readable && !s.readableEnded && s.readableLength === 0;
}

/** What an engine's prewarm needs from the app: the login gate, metrics and the log. */
export interface PrewarmDeps {
  gate?: LoginGate | undefined;
  observer?: PrewarmObserver | undefined;
  log: Logger;
}

/**
 * The pool for a listener with `listeners[].prewarm`, built the way both engines need it: a
 * child logger, the shared idle watch, and the engine's `open` / `close` of one warm session.
 */
export function listenerPool<S extends IdleSession, P>(
  listener: { name: string; prewarm?: PrewarmSettings | undefined },
  deps: PrewarmDeps,
  engine: {
    open(key: WarmKey<P>, signal: AbortSignal, log: Logger): Promise<S>;
    close(s: S): void;
    defaultDatabase: (user: string) => string;
    initialProfile: P;
  },
): PrewarmPool<S, P> {
  const settings = listener.prewarm;
  if (!settings) throw new Error(`listener ${listener.name} has no prewarm settings`);
  const log = deps.log.child({ listener: listener.name, component: 'prewarm' });
  return new PrewarmPool<S, P>({
    listener: listener.name,
    settings,
    backend: {
      open: (key, signal) => engine.open(key, signal, log),
      watch: (s, onDeath) => watchIdle(s, onDeath),
      alive: (s) => idleAlive(s),
      close: (s) => engine.close(s),
    },
    gate: deps.gate,
    observer: deps.observer,
    log,
    defaultDatabase: engine.defaultDatabase,
    initialProfile: engine.initialProfile,
  });
}
