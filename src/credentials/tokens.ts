import { Signer } from '@aws-sdk/rds-signer';
import { fromNodeProviderChain } from '@aws-sdk/credential-providers';
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider } from '@aws-sdk/types';
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

/** A secret to log in with and when it stops working (ms since the epoch). */
export interface Token {
  value: string;
  expiresAt: number;
}

/** Produces a fresh secret for a login. The seam engines depend on. */
export interface TokenSource {
  /** Resolves with a secret valid for at least the safety margin. Rejects with ProxyError(Credentials). */
  getToken(req: TokenRequest): Promise<string>;
  /** Forgets any cached secret for `req` (the server refused it). */
  invalidate(req: TokenRequest): void;
}

/** Signs new tokens; no caching. */
export interface TokenMinter {
  mint(req: TokenRequest): Promise<Token>;
}

/** IAM auth tokens live 15 minutes (X-Amz-Expires=900). */
export const TOKEN_LIFETIME_MS = 900_000;

/**
 * Signs RDS IAM auth tokens locally (SigV4 presign; no network) with credentials from the SDK's
 * provider chain. The only network calls are the chain's own (IMDS, STS, container endpoint).
 */
export class IamTokenMinter implements TokenMinter {
  constructor(
    private readonly credentials: AwsCredentialIdentityProvider = fromNodeProviderChain(),
    private readonly clock: Clock = systemClock,
  ) {}

  async mint(req: TokenRequest): Promise<Token> {
    let creds: AwsCredentialIdentity;
    try {
      creds = await this.credentials();
    } catch (err) {
      throw credentialsError(err);
    }
    const signer = new Signer({
      hostname: req.host,
      port: req.port,
      username: req.user,
      region: req.region,
      credentials: creds,
    });
    const value = await signer.getAuthToken();
    const now = this.clock.now();
    // A token dies with the temporary credentials that signed it, even before its 15 minutes.
    const credExpiry = creds.expiration?.getTime() ?? Infinity;
    return { value, expiresAt: Math.min(now + TOKEN_LIFETIME_MS, credExpiry) };
  }
}

/** Maps an SDK credential failure to an error that names the source and the fix. */
export function credentialsError(err: unknown): ProxyError {
  const msg = scrubSecrets(err instanceof Error ? err.message : String(err));
  return new ProxyError(ErrorCode.Credentials, `no AWS credentials to sign an IAM auth token: ${msg}`, {
    cause: err,
    hint:
      'the proxy looks in the environment (AWS_ACCESS_KEY_ID), the shared config/credentials files (AWS_PROFILE), ' +
      'web identity (AWS_WEB_IDENTITY_TOKEN_FILE, IRSA), the container endpoint (ECS, EKS Pod Identity) and IMDSv2; ' +
      'run `rds-iam-proxy doctor` to see which one fails',
  });
}

export interface CacheOptions {
  /** A cached token is not handed out within this many ms of its expiry. */
  marginMs?: number;
  /** Start a background re-mint this long before expiry, so logins never wait on the provider. */
  refreshAheadMs?: number;
}

interface Entry {
  token?: Token;
  inflight?: Promise<Token>;
}

/**
 * Caches a token per (host, port, user, region) until min(15 min, credentials' expiry) minus
 * a margin. Concurrent logins share one mint; near expiry the next caller triggers a background
 * re-mint while the still-valid token keeps serving.
 */
export class TokenCache implements TokenSource {
  private readonly entries = new Map<string, Entry>();
  private readonly marginMs: number;
  private readonly refreshAheadMs: number;

  constructor(
    private readonly minter: TokenMinter,
    private readonly clock: Clock = systemClock,
    opts: CacheOptions = {},
  ) {
    this.marginMs = opts.marginMs ?? 60_000;
    this.refreshAheadMs = opts.refreshAheadMs ?? 300_000;
  }

  async getToken(req: TokenRequest): Promise<string> {
    const key = cacheKey(req);
    let entry = this.entries.get(key);
    if (!entry) this.entries.set(key, (entry = {}));
    const now = this.clock.now();
    const t = entry.token;
    if (t && now < t.expiresAt - this.marginMs) {
      if (now >= t.expiresAt - this.refreshAheadMs && !entry.inflight) {
        this.start(entry, req).catch(() => undefined); // the old token still serves; next caller retries
      }
      return t.value;
    }
    return (await (entry.inflight ?? this.start(entry, req))).value;
  }

  invalidate(req: TokenRequest): void {
    const entry = this.entries.get(cacheKey(req));
    if (entry) delete entry.token;
  }

  /** Expiry (ms) of the cached token for `req`, for metrics and tests. */
  expiresAt(req: TokenRequest): number | undefined {
    return this.entries.get(cacheKey(req))?.token?.expiresAt;
  }

  private start(entry: Entry, req: TokenRequest): Promise<Token> {
    const p = this.minter.mint(req).then(
      (token) => {
        entry.token = token;
        entry.inflight = undefined;
        return token;
      },
      (err: unknown) => {
        entry.inflight = undefined;
        throw err;
      },
    );
    entry.inflight = p;
    return p;
  }
}

function cacheKey(r: TokenRequest): string {
  return `${r.host}\0${r.port}\0${r.user}\0${r.region}`;
}

/** A fixed upstream password (auth.mode: password), re-read on every login so rotation needs no restart. */
export class StaticPasswordSource implements TokenSource {
  constructor(private readonly read: () => string) {}
  async getToken(): Promise<string> {
    try {
      return this.read();
    } catch (err) {
      throw new ProxyError(ErrorCode.Credentials, `upstream password unavailable: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
  invalidate(): void {}
}
