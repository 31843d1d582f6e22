/**
 * The generated certificates (src/net/certs.ts): EC P-256 keys, ECDSA-SHA256 signatures, the
 * extensions a CA and a localhost server need, checked by OpenSSL's own verifier and by a real
 * node TLS handshake with hostname / IP checks.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { createCA, issueCert, type Pem } from '../../src/net/certs';

let tmp: string;
let ca: Pem;
let leaf: Pem;
const caFile = (): string => path.join(tmp, 'ca.pem');
const leafFile = (): string => path.join(tmp, 'leaf.pem');

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rip-certs-'));
  ca = createCA('rds-iam-proxy local CA');
  leaf = issueCert(ca, {
    commonName: 'localhost',
    dnsNames: ['localhost'],
    ipAddresses: ['127.0.0.1', '::1'],
  });
  fs.writeFileSync(caFile(), ca.cert);
  fs.writeFileSync(leafFile(), leaf.cert);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const openssl = (args: string[]): string =>
  execFileSync('openssl', args, { encoding: 'utf8', stdio: 'pipe' });

describe('what openssl sees', () => {
  test('the CA: P-256 key, ecdsa-with-SHA256, critical CA basicConstraints and keyCertSign', () => {
    const text = openssl(['x509', '-in', caFile(), '-noout', '-text']);
    expect(text).toMatch(/Signature Algorithm: ecdsa-with-SHA256/);
    expect(text).toMatch(/Public Key Algorithm: id-ecPublicKey/);
    expect(text).toMatch(/ASN1 OID: prime256v1/);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\s+CA:TRUE/);
    expect(text).toMatch(/X509v3 Key Usage: critical\s+Digital Signature, Certificate Sign, CRL Sign/);
    expect(text).toMatch(/Subject: CN ?= ?rds-iam-proxy local CA/);
    expect(text).toMatch(/Issuer: CN ?= ?rds-iam-proxy local CA/);
  });

  test('the leaf: SANs, serverAuth, not a CA, signed by the CA', () => {
    const text = openssl(['x509', '-in', leafFile(), '-noout', '-text']);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/TLS Web Server Authentication/);
    expect(text).toMatch(/DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1/);
    expect(text).toContain('X509v3 Authority Key Identifier');
    expect(new X509Certificate(leaf.cert).issuer).toBe(new X509Certificate(ca.cert).subject);
  });

  test('openssl verify: strict X.509, sslserver purpose, the name and both IPs', () => {
    const base = ['verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', caFile()];
    expect(openssl([...base, leafFile()])).toContain(': OK');
    expect(openssl([...base, '-verify_hostname', 'localhost', leafFile()])).toContain(': OK');
    expect(openssl([...base, '-verify_ip', '127.0.0.1', leafFile()])).toContain(': OK');
    expect(openssl([...base, '-verify_ip', '::1', leafFile()])).toContain(': OK');
    expect(() => openssl([...base, '-verify_hostname', 'example.com', leafFile()])).toThrow(
      /hostname mismatch/,
    );
  });

  test('a leaf from another CA does not verify', () => {
    const other = createCA('another CA');
    const stranger = issueCert(other, { commonName: 'localhost', dnsNames: ['localhost'] });
    const f = path.join(tmp, 'stranger.pem');
    fs.writeFileSync(f, stranger.cert);
    expect(() => openssl(['verify', '-CAfile', caFile(), f])).toThrow(
      /unable to get local issuer certificate/,
    );
  });
});

describe('keys', () => {
  test('PKCS#8 EC P-256 private keys matching their certificates', () => {
    for (const p of [ca, leaf]) {
      const key = createPrivateKey(p.key);
      expect(p.key).toMatch(/^-----BEGIN PRIVATE KEY-----/);
      expect(key.asymmetricKeyType).toBe('ec');
      expect(key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
      expect(new X509Certificate(p.cert).checkPrivateKey(key)).toBe(true);
    }
    expect(new X509Certificate(leaf.cert).verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
    expect(new X509Certificate(leaf.cert).checkIssued(new X509Certificate(ca.cert))).toBe(true);
  });

  test('refuses a CA key that is not the CA certificate', () => {
    const other = createCA('other');
    expect(() => issueCert({ cert: ca.cert, key: other.key }, { commonName: 'x' })).toThrow(/does not match/);
    expect(() => issueCert(ca, { commonName: 'x', ipAddresses: ['localhost'] })).toThrow(/not an IP address/);
  });
});

describe('a real TLS handshake against the CA', () => {
  let server: tls.Server;
  let port: number;
  beforeAll(async () => {
    server = tls.createServer({ cert: leaf.cert + ca.cert, key: leaf.key, minVersion: 'TLSv1.2' }, (s) =>
      s.end('ok'),
    );
    await new Promise<void>((r) => server.listen(0, '::', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  function connect(opts: tls.ConnectionOptions): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ port, ca: ca.cert, ...opts }, () => {
        const cipher = s.getCipher().standardName;
        s.once('data', () => (s.end(), resolve(cipher)));
      });
      s.once('error', reject);
    });
  }

  test.each([
    ['localhost', { host: '127.0.0.1', servername: 'localhost' }],
    ['127.0.0.1', { host: '127.0.0.1' }],
    ['::1', { host: '::1' }],
  ])('verifies as %s (checkServerIdentity)', async (_name, opts) => {
    await expect(connect(opts)).resolves.toMatch(/^TLS_/);
  });

  test('refuses a name outside the SANs, and a client that trusts another CA', async () => {
    await expect(connect({ host: '127.0.0.1', servername: 'db.example.com' })).rejects.toThrow(
      /does not match certificate's altnames/,
    );
    await expect(connect({ host: '127.0.0.1', ca: createCA('other').cert })).rejects.toThrow(
      /unable to verify|self.signed|local issuer/i,
    );
  });

  test('an ECDSA TLS 1.2 suite is negotiated when 1.2 is forced', async () => {
    await expect(connect({ host: '127.0.0.1', maxVersion: 'TLSv1.2' })).resolves.toMatch(/ECDHE_ECDSA/);
  });
});
