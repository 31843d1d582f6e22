/** Credential-source helpers: error hints, source names, endpoint settings. */
import { credentialsError } from '../../src/credentials/tokens';
import { applyAwsEnvironment, describeSource, settingsKey } from '../../src/credentials/providers';
import { ErrorCode } from '../../src/errors';

describe('credentialsError', () => {
  const saved = { ...process.env };
  afterEach(() => {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
  });

  test('an IMDS timeout inside a container names the IMDSv2 hop limit', () => {
    process.env['KUBERNETES_SERVICE_HOST'] = '10.0.0.1';
    const e = credentialsError(
      new Error('TimeoutError: EC2 Metadata token request timed out (169.254.169.254)'),
    );
    expect(e.code).toBe(ErrorCode.Credentials);
    expect(e.hint).toMatch(/hop limit must be 2 or more/);
    expect(e.hint).toMatch(/modify-instance-metadata-options/);
  });

  test('any other failure lists the sources the chain tries', () => {
    const e = credentialsError(new Error('Could not load credentials from any providers'));
    expect(e.message).toBe(
      'no AWS credentials to sign an IAM auth token: Could not load credentials from any providers',
    );
    expect(e.hint).toMatch(
      /AWS_ACCESS_KEY_ID.*AWS_PROFILE.*AWS_WEB_IDENTITY_TOKEN_FILE.*EKS Pod Identity.*IMDSv2/,
    );
  });

  test('a token-shaped string in a provider error is scrubbed', () => {
    const e = credentialsError(
      new Error('bad db.x.us-east-1.rds.amazonaws.com:5432/?Action=connect&X-Amz-Signature=abc'),
    );
    expect(e.message).not.toContain('X-Amz-Signature');
  });
});

test('describeSource names where credentials came from, most specific first', () => {
  expect(
    describeSource({ accessKeyId: 'a', secretAccessKey: 'b', $source: { CREDENTIALS_IMDS: '0' } } as never),
  ).toBe('EC2 instance metadata (IMDSv2)');
  expect(
    describeSource({
      accessKeyId: 'a',
      secretAccessKey: 'b',
      $source: { CREDENTIALS_ENV_VARS_STS_WEB_ID_TOKEN: 'h', CREDENTIALS_STS_ASSUME_ROLE_WEB_ID: 'k' },
    } as never),
  ).toBe('STS AssumeRoleWithWebIdentity via web identity token file (AWS_WEB_IDENTITY_TOKEN_FILE, IRSA)');
  expect(describeSource({ accessKeyId: 'a', secretAccessKey: 'b' })).toBe('static credentials');
});

test('endpoint settings the SDK reads from the environment are applied there', () => {
  const env: NodeJS.ProcessEnv = {};
  applyAwsEnvironment(
    {
      imdsEndpoint: 'http://127.0.0.1:1338',
      containerCredentialsUri: 'http://127.0.0.1:1339/creds',
      useFipsEndpoint: true,
    },
    env,
  );
  expect(env).toEqual({
    AWS_EC2_METADATA_SERVICE_ENDPOINT: 'http://127.0.0.1:1338',
    AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://127.0.0.1:1339/creds',
    AWS_USE_FIPS_ENDPOINT: 'true',
  });
});

test('settingsKey is independent of key order, so listeners with the same identity share a cache', () => {
  expect(settingsKey({ region: 'us-east-1', profile: 'p' })).toBe(
    settingsKey({ profile: 'p', region: 'us-east-1' }),
  );
  expect(settingsKey({ profile: 'p' })).not.toBe(settingsKey({ profile: 'q' }));
});
