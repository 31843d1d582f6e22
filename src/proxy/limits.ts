/**
 * Connection limits shared by every listener: open connections per listener and overall, and a
 * token bucket on new upstream logins with a bounded FIFO queue. Both are updated in place on a
 * config reload, so counts survive a listener being replaced. Refusals become the protocol's
 * "too many connections" error (Postgres 53300, MySQL 1040) via Engine.reject.
 */
import type { LimitName } from './observer';
import { onAbort } from '../abort';

/** The `limits` section of the config. */
export interface LimitSettings {
  /** Open connections across all listeners; 0 = unlimited. */
  maxConnections: number;
  /** New upstream logins per second across all listeners; 0 = unlimited. */
  loginsPerSecond: number;
  /** Connections that may wait for a login slot; beyond this they are refused. */
  loginQueue: number;
}

/** Why a connection may not open, for the client's error and the metric. */
export interface Refusal {
  limit: LimitName;
  message: string;
  hint: string;
}

/** Counts open connections per listener name and in total. */
export class ConnectionLimits {
  private total = 0;
  private readonly perListener = new Map<string, number>();

  constructor(private maxConnections = 0) {}

  update(maxConnections: number): void {
    this.maxConnections = maxConnections;
  }

  /** Reserves a slot for a new connection on `listener`, or says which limit refuses it. */
  tryOpen(listener: string, listenerMax: number): Refusal | undefined {
    const mine = this.perListener.get(listener) ?? 0;
    if (listenerMax > 0 && mine >= listenerMax) {
      return {
        limit: 'listener_max_connections',
        message: `too many connections to listener "${listener}" (maxConnections ${listenerMax})`,
        hint: 'close idle connections or shrink the client pool, or raise listeners[].maxConnections',
      };
    }
    if (this.maxConnections > 0 && this.total >= this.maxConnections) {
      return {
        limit: 'max_connections',
        message: `too many connections to rds-iam-proxy (limits.maxConnections ${this.maxConnections})`,
        hint: 'close idle connections or shrink the client pools, or raise limits.maxConnections',
      };
    }
    this.perListener.set(listener, mine + 1);
    this.total++;
    return undefined;
  }

  /** Releases a slot taken with tryOpen. */
  release(listener: string): void {
    const mine = this.perListener.get(listener) ?? 0;
    if (mine <= 1) this.perListener.delete(listener);
    else this.perListener.set(listener, mine - 1);
    if (this.total > 0) this.total--;
  }

  /** Open connections on `listener`, or in total. */
  open(listener?: string): number {
    return listener === undefined ? this.total : (this.perListener.get(listener) ?? 0);
  }
}

/** A place in the login queue. */
export interface LoginTicket {
  /** Resolves when the login may start (immediately when a slot is free). Never rejects. */
  readonly granted: Promise<void>;
  /** True once granted. */
  readonly isGranted: boolean;
  /** Leaves the queue (client gone, deadline, shutdown). No effect once granted. */
  cancel(): void;
}

interface Waiter {
  grant: () => void;
  cancelled: boolean;
}

/**
 * Token bucket on new upstream logins: `loginsPerSecond` tokens per second, a burst of one
 * second's worth (at least 1). A login that finds no token waits in a FIFO queue of at most
 * `loginQueue` entries; acquire() returns undefined when the queue is full. One timer, armed only
 * while someone waits.
 */
export class LoginGate {
  private rate: number;
  private capacity: number;
  private maxQueue: number;
  private tokens: number;
  private last: number;
  private readonly queue: Waiter[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    settings: Pick<LimitSettings, 'loginsPerSecond' | 'loginQueue'>,
    private readonly now: () => number = () => performance.now(),
    /** Told the queue length whenever it changes (metrics). */
    private readonly onQueue: (length: number) => void = () => undefined,
  ) {
    this.rate = settings.loginsPerSecond;
    this.capacity = Math.max(1, settings.loginsPerSecond);
    this.maxQueue = settings.loginQueue;
    this.tokens = this.capacity;
    this.last = now();
  }

  /** Applies new settings; waiters are served at the new rate (all at once when it is now 0). */
  update(settings: Pick<LimitSettings, 'loginsPerSecond' | 'loginQueue'>): void {
    this.refill();
    this.rate = settings.loginsPerSecond;
    this.capacity = Math.max(1, settings.loginsPerSecond);
    this.maxQueue = settings.loginQueue;
    this.tokens = Math.min(this.tokens, this.capacity);
    this.serve();
  }

  /** The most connections that may wait (limits.loginQueue). */
  get queueLimit(): number {
    return this.maxQueue;
  }

  /** Waiting connections. */
  get waiting(): number {
    return this.queue.length;
  }

  /** Takes a login slot, queueing for one if needed; undefined when the queue is full. */
  acquire(): LoginTicket | undefined {
    if (this.rate <= 0) return grantedTicket;
    this.refill();
    if (this.queue.length === 0 && this.tokens >= 1) {
      this.tokens -= 1;
      return grantedTicket;
    }
    if (this.queue.length >= this.maxQueue) return undefined;
    let granted = false;
    let grant!: () => void;
    const promise = new Promise<void>((resolve) => (grant = resolve));
    const waiter: Waiter = {
      cancelled: false,
      grant: () => {
        granted = true;
        grant();
      },
    };
    this.queue.push(waiter);
    this.onQueue(this.queue.length);
    this.arm();
    return {
      granted: promise,
      get isGranted() {
        return granted;
      },
      cancel: () => {
        if (granted || waiter.cancelled) return;
        waiter.cancelled = true;
        const i = this.queue.indexOf(waiter);
        if (i >= 0) this.queue.splice(i, 1);
        this.onQueue(this.queue.length);
        if (this.queue.length === 0) this.disarm();
      },
    };
  }

  /** Stops the timer (shutdown). Waiters are left to be cancelled by their sessions. */
  close(): void {
    this.disarm();
  }

  private refill(): void {
    const t = this.now();
    if (this.rate > 0)
      this.tokens = Math.min(this.capacity, this.tokens + ((t - this.last) / 1000) * this.rate);
    this.last = t;
  }

  private serve(): void {
    this.refill();
    while (this.queue.length > 0 && (this.rate <= 0 || this.tokens >= 1)) {
      const w = this.queue.shift() as Waiter;
      if (this.rate > 0) this.tokens -= 1;
      w.grant();
    }
    this.onQueue(this.queue.length);
    this.disarm();
    if (this.queue.length > 0) this.arm();
  }

  private arm(): void {
    if (this.timer) return;
    const ms = Math.max(1, Math.ceil(((1 - this.tokens) / this.rate) * 1000));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.serve();
    }, ms);
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

const grantedTicket: LoginTicket = { granted: Promise.resolve(), isGranted: true, cancel: () => undefined };

/**
 * At most `size` holders at once; others wait in FIFO order. Used for MySQL handshakes that
 * hold an upstream connection before their client has answered the greeting
 * (listeners[].maxPendingHandshakes).
 */
export class Slots {
  private held = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly size: number) {}

  /** A release function if a slot is free now (nobody waiting), else undefined. */
  tryAcquire(): (() => void) | undefined {
    if (this.held >= this.size || this.waiting.length > 0) return undefined;
    this.held++;
    return this.releaser();
  }

  /**
   * Resolves with a release function once a slot is free; call it at least once (later calls do
   * nothing). Rejects with the signal's reason if it aborts first (the place in line is given up).
   */
  acquire(signal: AbortSignal): Promise<() => void> {
    signal.throwIfAborted();
    if (this.held < this.size) {
      this.held++;
      return Promise.resolve(this.releaser());
    }
    return new Promise((resolve, reject) => {
      const grant = (): void => {
        stop();
        this.held++;
        resolve(this.releaser());
      };
      const stop = onAbort(signal, (reason) => {
        const i = this.waiting.indexOf(grant);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(reason);
      });
      this.waiting.push(grant);
    });
  }

  /** Slots held now. */
  get inUse(): number {
    return this.held;
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.held--;
      this.waiting.shift()?.();
    };
  }
}
