import { existsSync, readFileSync } from 'node:fs';
import type { AwsCredentialIdentity } from '@aws-sdk/types';
import { defaultCredentialSource, type CredentialSource } from './providers';
import type { Listener } from '../config/schema';
import { listenerRegion, upstreamPort } from '../config/load';
import { ErrorCode, ProxyError } from '../errors';
import { scrubSecrets } from '../log';
import { type Clock, systemClock } from './clock';

/** What a token is signed for. `host` is the endpoint name, never the dialled address. */
export interface TokenRequest {
  host: string;
  port: number;
  user: string;
  region: string;
}

/** What a listener's logins as `user` are signed for. */
export function tokenRequestFor(l: Listener, user: string): TokenRequest {
  return { host: l.upstream.host, port: upstreamPort(l), user, region: listenerRegion(l) ?? '' };
}

/** A secret to log in with and when it stops working (ms since the epoch). */
export interface Token {
  value: string;
  expiresAt: number;
  /** When the credentials that signed it expire (ms), if they do; for metrics. */
  credentialsExpiresAt?: number;
}

/**
 * One login's hold on a secret. The seam engines depend on: they never look at clocks or cache
 * entries, they only say whether the server refused what they were given.
 */
export interface TokenLease {
  /** The token or password; rejects with ProxyError(Credentials). Awaited only after TLS is verified. */
  readonly secret: Promise<string>;
  /**
   * True when the secret was served from a cache rather than produced for this login: a refusal
   * may then mean revoked or rotated credentials, worth one retry with a fresh lease.
   */
  readonly cached: boolean;
  /** The server refused the secret: forget it; the next lease also refreshes the credentials behind it. */
  refused(): void;
}

/** Produces secrets for logins: IAM tokens (TokenCache) or a static password. */
export interface TokenSource {
  lease(req: TokenRequest): TokenLease;
}

/** Signs new tokens; no caching. */
export interface TokenMinter {
  /** `forceRefresh`: re-resolve credentials too (a token was refused). */
  mint(req: TokenRequest, opts?: { forceRefresh?: boolean }): Promise<Token>;
}

/** IAM auth tokens live 15 minutes (X-Amz-Expires=900). */
export const TOKEN_LIFETIME_MS = 900_000;

/**
 * Signs RDS IAM auth tokens locally (SigV4 presign; no network) with credentials from the SDK's
 * provider chain. The only network calls are the chain's own (IMDS, STS, container endpoint).
 */
export class IamTokenMinter implements TokenMinter {
  constructor(
    private readonly credentials: CredentialSource = defaultCredentialSource(),
    private readonly clock: Clock = systemClock,
    /** rds (default) signs rds-db:connect; dsql signs DbConnect, or DbConnectAdmin for `admin`. */
    private readonly flavor: 'rds' | 'dsql' = 'rds',
  ) {}

  async mint(req: TokenRequest, opts: { forceRefresh?: boolean } = {}): Promise<Token> {
    let creds: AwsCredentialIdentity;
    try {
      creds = await this.credentials(opts.forceRefresh ? { forceRefresh: true } : undefined);
    } catch (err) {
      throw credentialsError(err);
    }
    const value = this.flavor === 'dsql' ? await signDsql(req, creds) : await signRds(req, creds);
    const now = this.clock.now();
    // A token dies with the temporary credentials that signed it, even before its 15 minutes.
    const credExpiry = creds.expiration?.getTime() ?? Infinity;
    return {
      value,
      expiresAt: Math.min(now + TOKEN_LIFETIME_MS, credExpiry),
      ...(creds.expiration ? { credentialsExpiresAt: creds.expiration.getTime() } : {}),
    };
  }
}

// The signers are loaded at the first mint, not at start: together about 70 ms of `require` and a
// few MiB that a proxy with only password listeners never needs (docs/PERFORMANCE.md).
/* eslint-disable @typescript-eslint/no-require-imports */
function signRds(req: TokenRequest, credentials: AwsCredentialIdentity): Promise<string> {
  const { Signer } = require('@aws-sdk/rds-signer') as typeof import('@aws-sdk/rds-signer');
  return new Signer({
    hostname: req.host,
    port: req.port,
    username: req.user,
    region: req.region,
    credentials,
  }).getAuthToken();
}

/** Aurora DSQL: the built-in `admin` role needs DbConnectAdmin; every other role DbConnect. */
function signDsql(req: TokenRequest, credentials: AwsCredentialIdentity): Promise<string> {
  const { DsqlSigner } = require('@aws-sdk/dsql-signer') as typeof import('@aws-sdk/dsql-signer');
  const signer = new DsqlSigner({ hostname: req.host, region: req.region, credentials });
  return req.user === 'admin' ? signer.getDbConnectAdminAuthToken() : signer.getDbConnectAuthToken();
}
/* eslint-enable @typescript-eslint/no-require-imports */

/** True inside a container (Docker, Kubernetes, ECS), where IMDSv2 needs a hop limit of 2. */
function inContainer(): boolean {
  if (process.env['KUBERNETES_SERVICE_HOST'] || process.env['ECS_CONTAINER_METADATA_URI_V4']) return true;
  try {
    return (
      existsSync('/.dockerenv') || /docker|kubepods|containerd/.test(readFileSync('/proc/1/cgroup', 'utf8'))
    );
  } catch {
    return false;
  }
}

/** Maps an SDK credential failure to an error that names the source and the fix. */
export function credentialsError(err: unknown): ProxyError {
  const msg = scrubSecrets(err instanceof Error ? err.message : String(err));
  const imdsTimeout =
    /(timeout|timed out|ETIMEDOUT|EHOSTUNREACH)/i.test(msg) &&
    /(metadata|IMDS|169\.254\.169\.254)/i.test(msg);
  const hint = imdsTimeout
    ? inContainer()
      ? 'IMDS timed out from inside a container: the instance metadata PUT response hop limit must be 2 or more ' +
        '(aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2), or use IRSA / EKS Pod Identity'
      : 'IMDS timed out: check the instance has an instance profile and that metadata access is enabled (aws.imdsEndpoint for a custom endpoint)'
    : 'the proxy looks in the environment (AWS_ACCESS_KEY_ID), the shared config/credentials files (AWS_PROFILE), ' +
      'web identity (AWS_WEB_IDENTITY_TOKEN_FILE, IRSA), the container endpoint (ECS, EKS Pod Identity) and IMDSv2; ' +
      'run `rds-iam-proxy doctor` to see which one fails';
  return new ProxyError(ErrorCode.Credentials, `no AWS credentials to sign an IAM auth token: ${msg}`, {
    cause: err,
    hint,
  });
}

export interface CacheOptions {
  /** A cached token is not handed out within this many ms of its expiry. */
  marginMs?: number;
  /** Re-mint in the background this long before expiry (minus up to 30 s of jitter). */
  refreshAheadMs?: number;
  /** Up to this many ms are taken off each refresh time at random, so proxies do not refresh in step. */
  jitterMs?: number;
  /** Told about every mint and every failed mint (metrics, readiness, logs). */
  events?: TokenEvents;
  /** Most keys kept; the least recently used is dropped beyond it. Default 1000. */
  maxEntries?: number;
  /** Background timers; injectable so tests with a fake clock can drive them. */
  timers?: { set(fn: () => void, ms: number): unknown; clear(handle: unknown): void };
}

export interface TokenEvents {
  onMint?(req: TokenRequest, token: Token): void;
  onMintFailure?(req: TokenRequest, err: ProxyError, background: boolean): void;
}

interface Entry {
  token?: Token;
  /** When to start a background re-mint (ms). */
  refreshAt?: number;
  inflight?: Promise<Token>;
  forceRefresh?: boolean;
  timer?: unknown;
  failures: number;
  lastUsed: number;
  lastError?: ProxyError;
}

const realTimers = {
  set: (fn: () => void, ms: number): unknown => setTimeout(fn, ms).unref(),
  clear: (h: unknown): void => clearTimeout(h as NodeJS.Timeout),
};

/** Keys unused for this long are dropped (and no longer refreshed in the background). */
const IDLE_DROP_MS = TOKEN_LIFETIME_MS;

/**
 * Caches a token per (host, port, user, region) until min(15 min, credentials' expiry) minus
 * a margin. Bounded whatever clients send: at most `maxEntries` keys (least recently used
 * dropped first), and keys unused for a token lifetime are dropped. Concurrent logins share one mint. Once used, a key is re-minted in the background
 * before expiry (with jitter, and with backoff after failures), so a login never waits on STS
 * or IMDS while a valid token exists; a failed refresh leaves the valid token serving.
 */
export class TokenCache implements TokenSource {
  private readonly entries = new Map<string, Entry>();
  private readonly marginMs: number;
  private readonly refreshAheadMs: number;
  private readonly timers: NonNullable<CacheOptions['timers']>;

  constructor(
    private readonly minter: TokenMinter,
    private readonly clock: Clock = systemClock,
    private readonly opts: CacheOptions = {},
  ) {
    this.marginMs = opts.marginMs ?? 60_000;
    this.refreshAheadMs = opts.refreshAheadMs ?? 300_000;
    this.timers = opts.timers ?? realTimers;
  }

  lease(req: TokenRequest): TokenLease {
    const cachedValue = this.cachedValue(req);
    const secret = cachedValue !== undefined ? Promise.resolve(cachedValue) : this.mint(req);
    secret.catch(() => undefined); // the login awaits it after TLS and reports a failure there
    return { secret, cached: cachedValue !== undefined, refused: () => this.invalidate(req) };
  }

  /** A valid token for `req`: the cached one, or a fresh mint. */
  async getToken(req: TokenRequest): Promise<string> {
    return this.cachedValue(req) ?? this.mint(req);
  }

  /** Forgets the token for `req` (the server refused it); the next mint refreshes the credentials too. */
  invalidate(req: TokenRequest): void {
    const entry = this.entries.get(cacheKey(req));
    if (!entry) return;
    delete entry.token;
    entry.forceRefresh = true;
  }

  /** The cached token when it is valid beyond the margin (starting a background refresh when due). */
  private cachedValue(req: TokenRequest): string | undefined {
    const entry = this.entry(req);
    const now = this.clock.now();
    entry.lastUsed = now;
    const t = entry.token;
    if (!t || now >= t.expiresAt - this.marginMs) return undefined;
    if (now >= (entry.refreshAt ?? t.expiresAt - this.refreshAheadMs) && !entry.inflight) {
      this.start(entry, req, true).catch(() => undefined); // the old token still serves
    }
    return t.value;
  }

  private async mint(req: TokenRequest): Promise<string> {
    const entry = this.entry(req);
    return (await (entry.inflight ?? this.start(entry, req, false))).value;
  }

  /** Expiry (ms) of the cached token for `req`, for metrics and tests. */
  expiresAt(req: TokenRequest): number | undefined {
    return this.entries.get(cacheKey(req))?.token?.expiresAt;
  }

  /** The last mint failure for `req` while no valid token exists (readiness), if any. */
  lastError(req: TokenRequest): ProxyError | undefined {
    const e = this.entries.get(cacheKey(req));
    if (!e?.lastError) return undefined;
    return e.token && this.clock.now() < e.token.expiresAt - this.marginMs ? undefined : e.lastError;
  }

  /** Stops background refreshes. */
  close(): void {
    for (const e of this.entries.values()) if (e.timer !== undefined) this.timers.clear(e.timer);
  }

  /** Number of keys held, for tests and metrics. */
  get size(): number {
    return this.entries.size;
  }

  /** The entry for `req`, made the most recently used; creating one may drop stale or old ones. */
  private entry(req: TokenRequest): Entry {
    const key = cacheKey(req);
    let entry = this.entries.get(key);
    if (entry) {
      this.entries.delete(key); // re-inserted below: Map order is the LRU order
    } else {
      entry = { failures: 0, lastUsed: this.clock.now() };
      this.evict();
    }
    this.entries.set(key, entry);
    return entry;
  }

  /** Drops keys unused for a token lifetime, then the least recently used down to the cap less one. */
  private evict(): void {
    const now = this.clock.now();
    const cap = this.opts.maxEntries ?? 1000;
    for (const [key, e] of this.entries) {
      const stale = now - e.lastUsed > IDLE_DROP_MS;
      if (!stale && this.entries.size < cap) break; // oldest first: the rest are newer
      if (e.inflight) continue;
      if (e.timer !== undefined) this.timers.clear(e.timer);
      this.entries.delete(key);
    }
  }

  private start(entry: Entry, req: TokenRequest, background: boolean): Promise<Token> {
    const forceRefresh = entry.forceRefresh === true;
    entry.forceRefresh = false;
    const p = this.minter.mint(req, forceRefresh ? { forceRefresh } : {}).then(
      (token) => {
        const now = this.clock.now();
        entry.token = token;
        entry.inflight = undefined;
        entry.failures = 0;
        delete entry.lastError;
        this.opts.events?.onMint?.(req, token);
        // Refresh ahead of expiry, but never in the first half of a token's life: short-lived
        // credentials would otherwise make every mint schedule the next one at once.
        const ahead = token.expiresAt - this.refreshAheadMs - Math.random() * (this.opts.jitterMs ?? 30_000);
        entry.refreshAt = Math.max(ahead, now + (token.expiresAt - this.marginMs - now) / 2);
        this.schedule(entry, req, entry.refreshAt);
        return token;
      },
      (err: unknown) => {
        const e = err instanceof ProxyError ? err : credentialsError(err);
        entry.inflight = undefined;
        entry.failures++;
        entry.lastError = e;
        if (forceRefresh) entry.forceRefresh = true;
        this.opts.events?.onMintFailure?.(req, e, background);
        // Retry with backoff while a valid token still serves, or until someone asks again.
        if (entry.token)
          this.schedule(entry, req, this.clock.now() + Math.min(1000 * 2 ** entry.failures, 30_000));
        throw e;
      },
    );
    entry.inflight = p;
    return p;
  }

  private schedule(entry: Entry, req: TokenRequest, at: number): void {
    if (entry.timer !== undefined) this.timers.clear(entry.timer);
    const delay = Math.max(0, at - this.clock.now());
    entry.timer = this.timers.set(() => {
      entry.timer = undefined;
      if (this.clock.now() - entry.lastUsed > IDLE_DROP_MS || entry.inflight) return;
      this.start(entry, req, true).catch(() => undefined);
    }, delay);
  }
}

function cacheKey(r: TokenRequest): string {
  return `${r.host}\0${r.port}\0${r.user}\0${r.region}`;
}

/**
 * A fixed upstream password (auth.mode: password), re-read on every login so rotation needs no
 * restart. Never cached, so a refusal is final.
 */
export class StaticPasswordSource implements TokenSource {
  constructor(private readonly read: () => string) {}

  lease(): TokenLease {
    const secret = this.getToken();
    secret.catch(() => undefined);
    return { secret, cached: false, refused: () => undefined };
  }

  async getToken(): Promise<string> {
    try {
      return this.read();
    } catch (err) {
      throw new ProxyError(
        ErrorCode.Credentials,
        `upstream password unavailable: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
  }

  invalidate(): void {}
}
