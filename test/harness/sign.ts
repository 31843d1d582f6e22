/**
 * Hand-rolled RDS IAM token presigning (SigV4 query signing of `GET /` with the `host` header).
 * Tests use it to make tokens @aws-sdk/rds-signer cannot: signed in the past, for another
 * service or action, with odd expiries. The verifier shares the canonicalisation helpers below;
 * a unit test pins them to rds-signer's exact output so the two cannot drift together.
 */
import { createHash, createHmac } from 'node:crypto';

/** AWS's documented example key pair: obviously fake, accepted by the test verifiers. */
export const TEST_ACCESS_KEY_ID = 'AKIAIOSFODNN7EXAMPLE';
export const TEST_SECRET_ACCESS_KEY = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
export const TEST_KEYS: Readonly<Record<string, string>> = { [TEST_ACCESS_KEY_ID]: TEST_SECRET_ACCESS_KEY };

/** SHA-256 of the empty payload: a presigned GET has no body. */
export const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
export const ALGORITHM = 'AWS4-HMAC-SHA256';

/** RFC 3986 percent-encoding as SigV4 wants it (encodeURIComponent leaves !'()* alone). */
export function rfc3986(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** `YYYYMMDDTHHMMSSZ` in UTC. */
export function amzDate(d: Date): string {
  return d
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

/** Encoded `k=v` pairs sorted by key then value, joined with '&'. */
export function canonicalQuery(params: ReadonlyArray<readonly [string, string]>): string {
  return params
    .map(([k, v]) => [rfc3986(k), rfc3986(v)] as const)
    .sort(([ak, av], [bk, bv]) => (ak < bk ? -1 : ak > bk ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

/**
 * Hex signature of a presigned `GET /` to `hostPort` whose query (without X-Amz-Signature) is
 * `params`. `date` is the X-Amz-Date value; its first 8 characters name the scope's day.
 */
export function presignSignature(o: {
  hostPort: string;
  params: ReadonlyArray<readonly [string, string]>;
  secret: string;
  date: string;
  region: string;
  service: string;
}): string {
  const day = o.date.slice(0, 8);
  const canonicalRequest = [
    'GET',
    '/',
    canonicalQuery(o.params),
    `host:${o.hostPort}\n`,
    'host',
    EMPTY_SHA256,
  ].join('\n');
  const stringToSign = [
    ALGORITHM,
    o.date,
    `${day}/${o.region}/${o.service}/aws4_request`,
    createHash('sha256').update(canonicalRequest).digest('hex'),
  ].join('\n');
  const hmac = (key: Buffer | string, data: string): Buffer =>
    createHmac('sha256', key).update(data).digest();
  let key = hmac(`AWS4${o.secret}`, day);
  for (const part of [o.region, o.service, 'aws4_request']) key = hmac(key, part);
  return createHmac('sha256', key).update(stringToSign).digest('hex');
}

export interface SignTokenOptions {
  host: string;
  port: number;
  user: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  /** Signing time; default now. */
  date?: Date;
  /** Seconds, default 900 (the most RDS accepts). */
  expiresIn?: number;
  /** Default 'rds-db'. */
  service?: string;
  /** Default 'connect'. */
  action?: string;
}

/** An RDS IAM auth token, byte-for-byte what @aws-sdk/rds-signer makes for the same inputs and time. */
export function signToken(o: SignTokenOptions): string {
  const date = amzDate(o.date ?? new Date());
  const service = o.service ?? 'rds-db';
  const hostPort = `${o.host}:${o.port}`;
  const params: [string, string][] = [
    ['Action', o.action ?? 'connect'],
    ['DBUser', o.user],
    ['X-Amz-Algorithm', ALGORITHM],
    ['X-Amz-Credential', `${o.accessKeyId}/${date.slice(0, 8)}/${o.region}/${service}/aws4_request`],
    ['X-Amz-Date', date],
    ['X-Amz-Expires', String(o.expiresIn ?? 900)],
    ...(o.sessionToken !== undefined ? [['X-Amz-Security-Token', o.sessionToken] as [string, string]] : []),
    ['X-Amz-SignedHeaders', 'host'],
  ];
  const signature = presignSignature({
    hostPort,
    params,
    secret: o.secretAccessKey,
    date,
    region: o.region,
    service,
  });
  return `${hostPort}/?${canonicalQuery([...params, ['X-Amz-Signature', signature]])}`;
}
