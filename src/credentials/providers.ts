import https from 'node:https';
import { readFileSync } from 'node:fs';
import { fromNodeProviderChain, fromTemporaryCredentials } from '@aws-sdk/credential-providers';
import type { AwsCredentialIdentity } from '@aws-sdk/types';
import { NodeHttpHandler } from '@smithy/node-http-handler';
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

/** STS client settings: region, endpoint (VPC interface endpoint), FIPS, custom CA bundle, timeout. */
function stsClientConfig(aws: AwsSettings): Record<string, unknown> {
  const cfg: Record<string, unknown> = {};
  if (aws.region) cfg['region'] = aws.region;
  if (aws.stsEndpoint) cfg['endpoint'] = aws.stsEndpoint;
  if (aws.useFipsEndpoint) cfg['useFipsEndpoint'] = true;
  if (aws.caBundle || aws.httpTimeoutMs) {
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
    cfg['requestHandler'] = new NodeHttpHandler({
      ...(ca ? { httpsAgent: new https.Agent({ ca, keepAlive: true }) } : {}),
      ...(aws.httpTimeoutMs
        ? { connectionTimeout: aws.httpTimeoutMs, requestTimeout: aws.httpTimeoutMs * 5 }
        : {}),
    });
  }
  return cfg;
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
  const chain = fromNodeProviderChain({
    ...(aws.profile ? { profile: aws.profile } : {}),
    ...(aws.httpTimeoutMs ? { timeout: aws.httpTimeoutMs } : {}),
    clientConfig,
  });
  const base: CredentialSource = (opts) => chain(opts?.forceRefresh ? { forceRefresh: true } : undefined);
  if (!aws.roleArn) return base;
  const assume = fromTemporaryCredentials({
    masterCredentials: () => base(),
    params: {
      RoleArn: aws.roleArn,
      RoleSessionName: aws.roleSessionName ?? 'rds-iam-proxy',
      ...(aws.externalId ? { ExternalId: aws.externalId } : {}),
      ...(aws.roleDurationSeconds ? { DurationSeconds: aws.roleDurationSeconds } : {}),
    },
    clientConfig: clientConfig as never,
  });
  return memoizeCredentials(() => assume(), clock);
}

/** Stable key of the settings that shape a credential source, so listeners can share one. */
export function settingsKey(aws: AwsSettings): string {
  return JSON.stringify(Object.entries(aws).sort(([a], [b]) => a.localeCompare(b)));
}
