import { nodeHttps } from '../lazy';
import { readFileSync } from 'node:fs';
import type { AwsCredentialIdentity } from '@aws-sdk/types';
import type { AwsSettings } from '../config/schema';
import { ErrorCode, ProxyError } from '../errors';
import { type Clock, systemClock } from './clock';

/** Resolves credentials; `forceRefresh` bypasses any cache (the server refused a token). */
export type CredentialSource = (opts?: { forceRefresh?: boolean }) => Promise<AwsCredentialIdentity>;

/** The SDK's feature letters in `$source`, as words an operator recognises. */
const SOURCE_NAMES: Record<string, string> = {
  CREDENTIALS_CODE: 'configured in code',
  CREDENTIALS_ENV_VARS: 'environment variables (AWS_ACCESS_KEY_ID)',
  CREDENTIALS_ENV_VARS_STS_WEB_ID_TOKEN: 'web identity token file (AWS_WEB_IDENTITY_TOKEN_FILE, IRSA)',
  CREDENTIALS_STS_ASSUME_ROLE: 'STS AssumeRole',
  CREDENTIALS_STS_ASSUME_ROLE_WEB_ID: 'STS AssumeRoleWithWebIdentity',
  CREDENTIALS_PROFILE: 'shared config/credentials profile',
  CREDENTIALS_PROFILE_SOURCE_PROFILE: 'profile with source_profile',
  CREDENTIALS_PROFILE_STS_WEB_ID_TOKEN: 'profile with web_identity_token_file',
  CREDENTIALS_PROFILE_SSO: 'profile with SSO',
  CREDENTIALS_SSO: 'SSO token cache',
  CREDENTIALS_PROFILE_PROCESS: 'profile with credential_process',
  CREDENTIALS_PROCESS: 'credential_process',
  CREDENTIALS_HTTP: 'container credentials endpoint (ECS / EKS Pod Identity)',
  CREDENTIALS_IMDS: 'EC2 instance metadata (IMDSv2)',
};

/** Human description of where credentials came from, from the SDK's `$source` markers. */
export function describeSource(creds: AwsCredentialIdentity): string {
  const src = (creds as { $source?: Record<string, string> }).$source;
  const keys = src ? Object.keys(src) : [];
  const names = keys.map((k) => SOURCE_NAMES[k]).filter((n): n is string => n !== undefined);
  // The most specific marker is the last one the SDK added (e.g. the role over its base).
  return names.length > 0 ? names.reverse().join(' via ') : 'static credentials';
}

/**
 * Applies endpoint settings the SDK reads only from the environment (IMDS, container
 * credentials). Process-wide by nature, so taken from the top-level `aws` section only.
 */
export function applyAwsEnvironment(aws: AwsSettings, env: NodeJS.ProcessEnv = process.env): void {
  if (aws.imdsEndpoint) env['AWS_EC2_METADATA_SERVICE_ENDPOINT'] = aws.imdsEndpoint;
  if (aws.containerCredentialsUri) env['AWS_CONTAINER_CREDENTIALS_FULL_URI'] = aws.containerCredentialsUri;
  if (aws.useFipsEndpoint) env['AWS_USE_FIPS_ENDPOINT'] = 'true';
}

// The SDK's providers and HTTP handler are loaded when credentials are first needed (the first
// mint), not at start: an idle proxy, or one with only password listeners, never pays for them.
/* eslint-disable @typescript-eslint/no-require-imports */
const sdkProviders = (): typeof import('@aws-sdk/credential-providers') =>
  require('@aws-sdk/credential-providers') as typeof import('@aws-sdk/credential-providers');
const sdkHttpHandler = (): typeof import('@smithy/node-http-handler') =>
  require('@smithy/node-http-handler') as typeof import('@smithy/node-http-handler');
/* eslint-enable @typescript-eslint/no-require-imports */

/** The SDK's default provider chain, built (and its modules loaded) on the first call. */
export function defaultCredentialSource(): CredentialSource {
  let chain: ReturnType<typeof import('@aws-sdk/credential-providers').fromNodeProviderChain> | undefined;
  return (opts) => {
    chain ??= sdkProviders().fromNodeProviderChain();
    return chain(opts?.forceRefresh ? { forceRefresh: true } : undefined);
  };
}

/**
 * STS client settings: region, endpoint (VPC interface endpoint), FIPS, custom CA bundle, timeout.
 * The CA bundle is read here (a bad path fails at start); the returned function builds the
 * client config, with the SDK's HTTP handler, when credentials are first resolved.
 */
function stsClientConfig(aws: AwsSettings): () => Record<string, unknown> {
  let ca: string | undefined;
  if (aws.caBundle) {
    try {
      ca = readFileSync(aws.caBundle, 'utf8');
    } catch (err) {
      throw new ProxyError(
        ErrorCode.Config,
        `cannot read aws.caBundle ${aws.caBundle}: ${(err as Error).message}`,
      );
    }
  }
  let cfg: Record<string, unknown> | undefined;
  return () => {
    if (cfg) return cfg;
    cfg = {};
    if (aws.region) cfg['region'] = aws.region;
    if (aws.stsEndpoint) cfg['endpoint'] = aws.stsEndpoint;
    if (aws.useFipsEndpoint) cfg['useFipsEndpoint'] = true;
    if (ca || aws.httpTimeoutMs)
      cfg['requestHandler'] = new (sdkHttpHandler().NodeHttpHandler)({
        ...(ca ? { httpsAgent: new (nodeHttps().Agent)({ ca, keepAlive: true }) } : {}),
        ...(aws.httpTimeoutMs
          ? { connectionTimeout: aws.httpTimeoutMs, requestTimeout: aws.httpTimeoutMs * 5 }
          : {}),
      });
    return cfg;
  };
}

/**
 * Caches credentials until five minutes before they expire (like the SDK's own chain) and
 * shares one in-flight resolution; `forceRefresh` skips the cache.
 */
export function memoizeCredentials(
  resolve: () => Promise<AwsCredentialIdentity>,
  clock: Clock = systemClock,
): CredentialSource {
  let cached: AwsCredentialIdentity | undefined;
  let inflight: Promise<AwsCredentialIdentity> | undefined;
  return async (opts = {}) => {
    const fresh = cached && (!cached.expiration || cached.expiration.getTime() - clock.now() > 300_000);
    if (fresh && !opts.forceRefresh) return cached as AwsCredentialIdentity;
    inflight ??= resolve().then(
      (c) => {
        cached = c;
        inflight = undefined;
        return c;
      },
      (err: unknown) => {
        inflight = undefined;
        throw err;
      },
    );
    return inflight;
  };
}

/**
 * Builds the credential source for a set of settings: the SDK's default chain (environment,
 * profile, SSO, web identity, container, IMDSv2), optionally a named profile, optionally
 * followed by AssumeRole. Every network call goes to the configured endpoints.
 */
export function buildCredentialSource(aws: AwsSettings, clock: Clock = systemClock): CredentialSource {
  const clientConfig = stsClientConfig(aws);
  type Sdk = typeof import('@aws-sdk/credential-providers');
  let chain: ReturnType<Sdk['fromNodeProviderChain']> | undefined;
  const base: CredentialSource = (opts) => {
    chain ??= sdkProviders().fromNodeProviderChain({
      ...(aws.profile ? { profile: aws.profile } : {}),
      ...(aws.httpTimeoutMs ? { timeout: aws.httpTimeoutMs } : {}),
      clientConfig: clientConfig(),
    });
    return chain(opts?.forceRefresh ? { forceRefresh: true } : undefined);
  };
  const roleArn = aws.roleArn;
  if (!roleArn) return base;
  let assume: ReturnType<Sdk['fromTemporaryCredentials']> | undefined;
  return memoizeCredentials(() => {
    assume ??= sdkProviders().fromTemporaryCredentials({
      masterCredentials: () => base(),
      params: {
        RoleArn: roleArn,
        RoleSessionName: aws.roleSessionName ?? 'rds-iam-proxy',
        ...(aws.externalId ? { ExternalId: aws.externalId } : {}),
        ...(aws.roleDurationSeconds ? { DurationSeconds: aws.roleDurationSeconds } : {}),
      },
      clientConfig: clientConfig() as never,
    });
    return assume();
  }, clock);
}

/** Stable key of the settings that shape a credential source, so listeners can share one. */
export function settingsKey(aws: AwsSettings): string {
  return JSON.stringify(Object.entries(aws).sort(([a], [b]) => a.localeCompare(b)));
}
