import { buildCredentialSource } from '../credentials/providers';
import { IamTokenMinter } from '../credentials/tokens';
import { regionFromHost } from '../config/load';
import { ErrorCode, ProxyError } from '../errors';

/** Flags of `rds-iam-proxy token`, named like `aws rds generate-db-auth-token`. */
export interface TokenFlags {
  hostname: string;
  port: string;
  username: string;
  region?: string;
  profile?: string;
  roleArn?: string;
  externalId?: string;
  stsEndpoint?: string;
  dsql?: boolean;
}

/**
 * Mints one token with the SDK's credential chain (plus optional profile / role) and returns
 * it. A drop-in for `aws rds generate-db-auth-token` on hosts without the AWS CLI.
 */
export async function generateToken(f: TokenFlags): Promise<string> {
  const port = Number(f.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new ProxyError(ErrorCode.Config, `--port ${f.port} is not a port number`);
  const region =
    f.region ?? regionFromHost(f.hostname) ?? process.env['AWS_REGION'] ?? process.env['AWS_DEFAULT_REGION'];
  if (!region)
    throw new ProxyError(ErrorCode.Config, `cannot read a region from ${f.hostname}; pass --region`);
  const source = buildCredentialSource({
    region,
    ...(f.profile ? { profile: f.profile } : {}),
    ...(f.roleArn ? { roleArn: f.roleArn } : {}),
    ...(f.externalId ? { externalId: f.externalId } : {}),
    ...(f.stsEndpoint ? { stsEndpoint: f.stsEndpoint } : {}),
  });
  const minter = new IamTokenMinter(source, undefined, f.dsql ? 'dsql' : 'rds');
  return (await minter.mint({ host: f.hostname, port, user: f.username, region })).value;
}
