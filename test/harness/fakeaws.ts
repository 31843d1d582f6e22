/**
 * Local stand-ins for the AWS endpoints the proxy may call for credentials: STS (AssumeRole,
 * AssumeRoleWithWebIdentity), IMDSv2 (token, role, credentials) and the container credentials
 * endpoint (ECS / EKS Pod Identity). The SDK's real providers are pointed here. Every issued
 * key is registered with `onIssue` so the RDS-like database's verifier accepts it.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';

export interface IssuedCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  expiration: Date;
  via: 'AssumeRole' | 'AssumeRoleWithWebIdentity' | 'imds' | 'container';
}

export interface FakeAwsOptions {
  /** Called with each issued key id and secret (register them with the verifier). */
  onIssue: (accessKeyId: string, secretAccessKey: string) => void;
  /** Lifetime of issued credentials, ms (default 1 h). */
  lifetimeMs?: number;
  /** Added to the Date header, seconds: simulates a host clock that is off. */
  dateOffsetSeconds?: number;
  /** Token required in the container endpoint's Authorization header. */
  containerAuthToken?: string;
}

export interface FakeAws {
  url: string;
  port: number;
  issued: IssuedCredentials[];
  /** Every request seen: method, path, STS Action. */
  requests: {
    method: string;
    path: string;
    action?: string;
    headers: http.IncomingHttpHeaders;
    body: string;
  }[];
  /** Makes every endpoint answer 500 (an outage) until set back. */
  failing: boolean;
  options: FakeAwsOptions;
  close(): Promise<void>;
}

const IMDS_ROLE = 'rds-iam-proxy-test-role';
const IMDS_TOKEN = 'imds-session-' + randomBytes(8).toString('hex');

export async function startFakeAws(options: FakeAwsOptions): Promise<FakeAws> {
  const issued: IssuedCredentials[] = [];
  const requests: FakeAws['requests'] = [];
  const issue = (via: IssuedCredentials['via']): IssuedCredentials => {
    const c: IssuedCredentials = {
      accessKeyId: 'ASIA' + randomBytes(8).toString('hex').toUpperCase(),
      secretAccessKey: randomBytes(30).toString('base64'),
      // Real STS session tokens are several hundred bytes to over 1 KB.
      sessionToken: 'IQoJb3JpZ2luX2Vj' + randomBytes(600).toString('base64'),
      expiration: new Date(Date.now() + (fake.options.lifetimeMs ?? 3_600_000)),
      via,
    };
    issued.push(c);
    fake.options.onIssue(c.accessKeyId, c.secretAccessKey);
    return c;
  };
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x');
      const form = new URLSearchParams(body);
      const action = form.get('Action') ?? undefined;
      requests.push({
        method: req.method ?? '',
        path: url.pathname,
        headers: req.headers,
        body,
        ...(action ? { action } : {}),
      });
      const date = new Date(Date.now() + (fake.options.dateOffsetSeconds ?? 0) * 1000).toUTCString();
      res.setHeader('Date', date);
      const send = (status: number, type: string, text: string): void => {
        res.writeHead(status, { 'Content-Type': type });
        res.end(text);
      };
      if (fake.failing) return send(500, 'text/plain', 'outage');
      // IMDSv2
      if (req.method === 'PUT' && url.pathname === '/latest/api/token')
        return send(200, 'text/plain', IMDS_TOKEN);
      if (url.pathname.startsWith('/latest/meta-data/iam/security-credentials')) {
        if (req.headers['x-aws-ec2-metadata-token'] !== IMDS_TOKEN)
          return send(401, 'text/plain', 'IMDSv2 token required');
        if (url.pathname.replace(/\/$/, '').endsWith('security-credentials'))
          return send(200, 'text/plain', IMDS_ROLE);
        const c = issue('imds');
        return send(
          200,
          'application/json',
          JSON.stringify({
            Code: 'Success',
            LastUpdated: new Date().toISOString(),
            Type: 'AWS-HMAC',
            AccessKeyId: c.accessKeyId,
            SecretAccessKey: c.secretAccessKey,
            Token: c.sessionToken,
            Expiration: c.expiration.toISOString(),
          }),
        );
      }
      // Container credentials (ECS / EKS Pod Identity)
      if (url.pathname === '/container/credentials') {
        if (
          fake.options.containerAuthToken &&
          req.headers['authorization'] !== fake.options.containerAuthToken
        )
          return send(403, 'text/plain', 'bad authorization');
        const c = issue('container');
        return send(
          200,
          'application/json',
          JSON.stringify({
            AccessKeyId: c.accessKeyId,
            SecretAccessKey: c.secretAccessKey,
            Token: c.sessionToken,
            Expiration: c.expiration.toISOString(),
            AccountId: '123456789012',
          }),
        );
      }
      // STS (query protocol, form-encoded POST)
      if (req.method === 'POST' && (action === 'AssumeRole' || action === 'AssumeRoleWithWebIdentity')) {
        if (action === 'AssumeRole' && !/Credential=\w+\//.test(String(req.headers['authorization'])))
          return send(
            403,
            'text/xml',
            stsError('MissingAuthenticationToken', 'Request is missing Authentication Token'),
          );
        if (action === 'AssumeRoleWithWebIdentity' && !form.get('WebIdentityToken'))
          return send(400, 'text/xml', stsError('InvalidIdentityToken', 'no token'));
        const c = issue(action);
        const role = form.get('RoleArn') ?? '';
        const session = form.get('RoleSessionName') ?? 'session';
        return send(
          200,
          'text/xml',
          `<${action}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><${action}Result>` +
            `<Credentials><AccessKeyId>${c.accessKeyId}</AccessKeyId><SecretAccessKey>${c.secretAccessKey}</SecretAccessKey>` +
            `<SessionToken>${c.sessionToken}</SessionToken><Expiration>${c.expiration.toISOString()}</Expiration></Credentials>` +
            `<AssumedRoleUser><AssumedRoleId>AROATEST:${session}</AssumedRoleId><Arn>${role.replace(':iam::', ':sts::').replace(':role/', ':assumed-role/')}/${session}</Arn></AssumedRoleUser>` +
            (action === 'AssumeRoleWithWebIdentity'
              ? '<SubjectFromWebIdentityToken>system:serviceaccount:default:app</SubjectFromWebIdentityToken><Audience>sts.amazonaws.com</Audience><Provider>oidc.eks.test</Provider>'
              : '') +
            `</${action}Result><ResponseMetadata><RequestId>${randomBytes(8).toString('hex')}</RequestId></ResponseMetadata></${action}Response>`,
        );
      }
      send(404, 'text/plain', 'not found');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const fake: FakeAws = {
    url: `http://127.0.0.1:${port}`,
    port,
    issued,
    requests,
    failing: false,
    options,
    close: () => new Promise((r) => server.close(() => r())),
  };
  return fake;
}

function stsError(code: string, message: string): string {
  return `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>${code}</Code><Message>${message}</Message></Error><RequestId>x</RequestId></ErrorResponse>`;
}
