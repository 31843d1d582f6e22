import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import forge from 'node-forge';

/** A certificate and its private key, both PEM. */
export interface Pem {
  cert: string;
  key: string;
}

const DAY_MS = 86_400_000;

/**
 * RSA 2048 key pair. node-forge hands synchronous keygen to Node's native crypto when it exists
 * (tens of ms), so no worker or pure-JS fallback is needed.
 */
function keyPair(): forge.pki.rsa.KeyPair {
  return forge.pki.rsa.generateKeyPair({ bits: 2048, e: 0x10001 });
}

/** 16 random bytes with the top bit cleared (a positive DER INTEGER) and the next set (minimal encoding). */
function serialNumber(): string {
  const b = randomBytes(16);
  b[0] = ((b[0] ?? 0) & 0x7f) | 0x40;
  return b.toString('hex');
}

/** Backdated by an hour so a peer whose clock lags slightly still accepts a just-made certificate. */
function validity(cert: forge.pki.Certificate, validDays: number): void {
  const now = Date.now();
  cert.validity.notBefore = new Date(now - 3_600_000);
  cert.validity.notAfter = new Date(now + validDays * DAY_MS);
}

/** Self-signed CA (RSA 2048, SHA-256, basicConstraints CA, keyCertSign). validDays default 825. */
export function createCA(commonName: string, validDays = 825): Pem {
  const keys = keyPair();
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = serialNumber();
  validity(cert, validDays);
  const subject = [{ name: 'commonName', value: commonName }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key: forge.pki.privateKeyToPem(keys.privateKey) };
}

/**
 * Leaf certificate signed by `ca`, usable by a server and a client (serverAuth + clientAuth).
 * SANs come from dnsNames and ipAddresses (IPv4 or IPv6, e.g. '::1'); modern TLS stacks ignore
 * the common name, so pass every name a peer will check in dnsNames.
 */
export function issueCert(
  ca: Pem,
  opts: { commonName: string; dnsNames?: string[]; ipAddresses?: string[]; validDays?: number },
): Pem {
  const caCert = forge.pki.certificateFromPem(ca.cert);
  const caKey = forge.pki.privateKeyFromPem(ca.key);
  const keys = keyPair();
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = serialNumber();
  validity(cert, opts.validDays ?? 825);
  cert.setSubject([{ name: 'commonName', value: opts.commonName }]);
  cert.setIssuer(caCert.subject.attributes);
  const altNames: { type: number; value?: string; ip?: string }[] = [
    ...(opts.dnsNames ?? []).map((value) => ({ type: 2, value })),
    ...(opts.ipAddresses ?? []).map((ip) => {
      if (isIP(ip) === 0) throw new Error(`not an IP address: ${ip}`);
      return { type: 7, ip };
    }),
  ];
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
    ...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []),
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(caKey, forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key: forge.pki.privateKeyToPem(keys.privateKey) };
}
