/** `upstream.address` (tunnels) and `upstream.tls.negotiation`: parsing, validation messages, dial targets. */
import fc from 'fast-check';
import { ConfigError, parseUpstreamAddress, validateConfig } from '../../src/config/load';
import type { ConfigInput } from '../../src/config/schema';
import { tcpDialer, upstreamTargetFor } from '../../src/net/dial';

const ENDPOINT = 'mydb.cluster-abc.us-east-1.rds.amazonaws.com';

function config(upstream: Record<string, unknown>, engine: 'postgres' | 'mysql' = 'postgres'): ConfigInput {
  return {
    listeners: [{ name: 'app', engine, listen: 0, upstream: { host: ENDPOINT, ...upstream } }],
  } as ConfigInput;
}

function problemsOf(cfg: ConfigInput): { path: string; message: string }[] {
  try {
    validateConfig(cfg);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('parseUpstreamAddress', () => {
  test.each([
    ['127.0.0.1:15432', { host: '127.0.0.1', port: 15432 }],
    ['[::1]:15432', { host: '::1', port: 15432 }],
    ['tunnel.local:15432', { host: 'tunnel.local', port: 15432 }],
    ['10.0.3.7', { host: '10.0.3.7' }],
    ['db-proxy.internal', { host: 'db-proxy.internal' }],
    ['::1', { host: '::1' }],
    ['fd00::5', { host: 'fd00::5' }],
    ['[fd00::5]', { host: 'fd00::5' }],
  ])('%s', (text, parsed) => {
    expect(parseUpstreamAddress(text)).toEqual(parsed);
  });

  test.each([
    ['127.0.0.1:', /port "" .* must be 1\.\.65535/],
    ['127.0.0.1:0', /port "0" .* must be 1\.\.65535/],
    ['127.0.0.1:70000', /port "70000" .* must be 1\.\.65535/],
    [':15432', /has no host/],
    ['[nothost]:15432', /"\[nothost\]" is not an IPv6 address/],
    ['postgres://db:5432', /is not an address/],
    ['db host:5432', /"db host" is not a host name or IP address/],
    ['a:b:c', /is not an address/],
  ])('%s is refused', (text, message) => {
    expect(() => parseUpstreamAddress(text)).toThrow(message);
    expect(() => parseUpstreamAddress(text)).toThrow(/expected HOST, HOST:PORT or \[IPv6\]:PORT/);
  });

  test('any name and port round-trips', () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
    fc.assert(
      fc.property(
        fc.array(label, { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1, max: 65535 }),
        (labels, port) => {
          const host = labels.join('.');
          expect(parseUpstreamAddress(`${host}:${port}`)).toEqual({ host, port });
        },
      ),
    );
  });
});

describe('config validation', () => {
  test('a bad address is reported at its key path with the expected form', () => {
    expect(problemsOf(config({ address: '127.0.0.1:99999' }))).toEqual([
      {
        path: 'listeners.0.upstream.address',
        message: expect.stringMatching(
          /port "99999" in "127\.0\.0\.1:99999" must be 1\.\.65535: expected HOST/,
        ),
      },
    ]);
  });

  test('the dial target keeps the endpoint for the token and TLS, and dials the tunnel', () => {
    const cfg = validateConfig(config({ address: '[::1]:15432' }));
    const l = cfg.listeners[0];
    if (!l) throw new Error('no listener');
    const t = upstreamTargetFor(l, tcpDialer, []);
    expect(t.dial).toMatchObject({ host: ENDPOINT, port: 5432, address: '::1', dialPort: 15432 });
    expect(t.tls.servername).toBe(ENDPOINT);
  });

  test('an address without a port dials upstream.port', () => {
    const cfg = validateConfig(config({ port: 5433, address: '10.1.2.3' }));
    const l = cfg.listeners[0];
    if (!l) throw new Error('no listener');
    const t = upstreamTargetFor(l, tcpDialer, []);
    expect(t.dial).toMatchObject({ host: ENDPOINT, port: 5433, address: '10.1.2.3' });
    expect(t.dial.dialPort).toBeUndefined();
  });
});

describe('upstream.tls.negotiation', () => {
  test('defaults to postgres (SSLRequest) and reaches the dial target', () => {
    const l = validateConfig(config({})).listeners[0];
    if (!l) throw new Error('no listener');
    expect(l.upstream.tls.negotiation).toBe('postgres');
    const d = validateConfig(config({ tls: { negotiation: 'direct' } })).listeners[0];
    if (!d) throw new Error('no listener');
    expect(upstreamTargetFor(d, tcpDialer, []).negotiation).toBe('direct');
  });

  test('direct is refused for a mysql listener, at its key path', () => {
    expect(problemsOf(config({ tls: { negotiation: 'direct' } }, 'mysql'))).toEqual([
      {
        path: 'listeners.0.upstream.tls.negotiation',
        message: expect.stringMatching(/PostgreSQL 17\+ .* MySQL and MariaDB always start in plaintext/),
      },
    ]);
  });

  test('an unknown value names the allowed ones', () => {
    const problems = problemsOf(config({ tls: { negotiation: 'starttls' } }));
    expect(problems).toHaveLength(1);
    expect(problems[0]?.path).toBe('listeners.0.upstream.tls.negotiation');
    expect(problems[0]?.message).toMatch(/postgres.*direct/);
  });
});
