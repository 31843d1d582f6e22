import type { Config, Listener } from '../config/schema';
import { readSecret } from '../config/secrets';
import type { Logger } from '../log';
import { logError } from '../errors';
import { type Clock, systemClock } from './clock';
import { applyAwsEnvironment, buildCredentialSource, settingsKey } from './providers';
import { ClockSkewMonitor, type SkewSample } from './skew';
import {
  IamTokenMinter,
  StaticPasswordSource,
  TokenCache,
  type TokenEvents,
  type TokenMinter,
  type TokenSource,
} from './tokens';

export interface HubOptions {
  log: Logger;
  clock?: Clock;
  env?: NodeJS.ProcessEnv;
  /** Replaces every IAM minter (tests that fake AWS). */
  minter?: TokenMinter;
  events?: TokenEvents;
  /** Told about each clock-skew estimate (metrics). */
  onSkew?: (s: SkewSample) => void;
}

/**
 * Owns everything credential-shaped for a running proxy: one credential source and token cache
 * per distinct (mode, aws settings) so listeners with the same identity share tokens, static
 * passwords, and the clock-skew monitor.
 */
export class CredentialsHub {
  private readonly caches = new Map<string, TokenCache>();
  readonly skew: ClockSkewMonitor;
  private readonly stopSkew: () => void;
  private warnedSkew = false;

  constructor(
    private readonly cfg: Config,
    private readonly options: HubOptions,
  ) {
    applyAwsEnvironment(cfg.aws, options.env ?? process.env);
    this.skew = new ClockSkewMonitor(options.clock ?? systemClock, (s) => this.observeSkew(s));
    this.stopSkew = this.skew.start();
  }

  /** Merged settings for a listener: top-level `aws` overlaid by `auth.aws`. */
  awsFor(l: Listener): Config['aws'] {
    return { ...this.cfg.aws, ...(l.auth.aws ?? {}) };
  }

  /** The secret source a listener logs in with. */
  sourceFor(l: Listener): TokenSource {
    if (l.auth.mode === 'password' && l.auth.password) {
      const ref = l.auth.password;
      return new StaticPasswordSource(() => readSecret(ref, this.options.env ?? process.env));
    }
    const aws = this.awsFor(l);
    const flavor = l.auth.mode === 'dsql' ? 'dsql' : 'rds';
    const key = `${flavor}:${settingsKey(aws)}`;
    let cache = this.caches.get(key);
    if (!cache) {
      const clock = this.options.clock ?? systemClock;
      const minter =
        this.options.minter ?? new IamTokenMinter(buildCredentialSource(aws, clock), clock, flavor);
      cache = new TokenCache(minter, clock, {
        marginMs: this.cfg.tokens.marginSeconds * 1000,
        refreshAheadMs: this.cfg.tokens.refreshAheadSeconds * 1000,
        maxEntries: this.cfg.tokens.cacheSize,
        events: {
          onMint: (req, token) => this.options.events?.onMint?.(req, token),
          onMintFailure: (req, err, background) => {
            this.options.log.warn(
              { host: req.host, user: req.user, background, err: logError(err) },
              background
                ? 'background token refresh failed; the cached token keeps serving'
                : 'token mint failed',
            );
            this.options.events?.onMintFailure?.(req, err, background);
          },
        },
      });
      this.caches.set(key, cache);
    }
    return cache;
  }

  /** Tokens held across this hub's caches (bounded by tokens.cacheSize per cache). */
  cachedTokens(): number {
    let n = 0;
    for (const c of this.caches.values()) n += c.size;
    return n;
  }

  close(): void {
    this.stopSkew();
    for (const c of this.caches.values()) c.close();
  }

  private observeSkew(s: SkewSample): void {
    this.options.onSkew?.(s);
    const limit = this.cfg.tokens.clockSkewWarnSeconds;
    if (Math.abs(s.offsetSeconds) > limit) {
      if (!this.warnedSkew) {
        this.options.log.warn(
          {
            offsetSeconds: s.offsetSeconds,
            source: s.source,
            detail: `host clock is ${Math.abs(s.offsetSeconds)} s ${s.offsetSeconds > 0 ? 'ahead of' : 'behind'} AWS (${s.source})`,
            hint: 'IAM tokens are signed with the local time and RDS refuses them when it is off by minutes: fix NTP (chrony, Amazon Time Sync 169.254.169.123)',
          },
          'host clock skew',
        );
      }
      this.warnedSkew = true;
    } else {
      this.warnedSkew = false;
    }
  }
}
