/**
 * Every test process (and every CLI it spawns) starts with no ambient AWS configuration, and
 * IMDS disabled: no test may reach a real AWS endpoint or the link-local metadata address.
 * Tests that need a credential source point it at the local fakes in test/harness/fakeaws.ts.
 */
for (const k of Object.keys(process.env)) {
  if (k.startsWith('AWS_') || k.startsWith('RDS_IAM_PROXY')) delete process.env[k];
}
process.env['AWS_EC2_METADATA_DISABLED'] = 'true';
process.env['AWS_CONFIG_FILE'] = '/nonexistent/rds-iam-proxy-test/config';
process.env['AWS_SHARED_CREDENTIALS_FILE'] = '/nonexistent/rds-iam-proxy-test/credentials';
