import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
} from 'node:crypto';
import { X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import type * as forge from 'node-forge';

// Only node-forge's DER codec (about 8 ms to load): the whole library costs about 60 ms at
// start-up and cannot sign with ECDSA anyway; node:crypto makes the keys and the signatures.
/* eslint-disable @typescript-eslint/no-require-imports */
const asn1 = require('node-forge/lib/asn1') as typeof forge.asn1;
const forgeUtil = require('node-forge/lib/util') as { bytesFromIP(ip: string): string | null };
/* eslint-enable @typescript-eslint/no-require-imports */

/** A certificate and its private key, both PEM (the key PKCS#8). */
export interface Pem {
  cert: string;
  key: string;
}

const DAY_MS = 86_400_000;

/**
 * Object identifiers used here (dotted form; RFC 5280 section 4, RFC 5758). The key's own
 * SubjectPublicKeyInfo (id-ecPublicKey 1.2.840.10045.2.1, prime256v1 1.2.840.10045.3.1.7) comes
 * from node:crypto's SPKI export.
 */
const OID = {
  /** RFC 5758 3.2: the certificate's signature algorithm, no parameters. */
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  commonName: '2.5.4.3',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

/**
 * KeyUsage BIT STRING contents (RFC 5280 4.2.1.3): first byte = unused trailing bits, then the
 * named bits MSB first: digitalSignature(0), keyCertSign(5), cRLSign(6).
 */
const KEY_USAGE = {
  ca: '\x01\x86', // digitalSignature, keyCertSign, cRLSign
  leaf: '\x07\x80', // digitalSignature (ECDHE-ECDSA needs no keyEncipherment)
} as const;

const U = asn1.Class.UNIVERSAL;
const T = asn1.Type;
const bin = (b: Buffer): string => b.toString('binary');
const seq = (items: forge.asn1.Asn1[]): forge.asn1.Asn1 => asn1.create(U, T.SEQUENCE, true, items);
const oid = (dotted: string): forge.asn1.Asn1 =>
  asn1.create(U, T.OID, false, asn1.oidToDer(dotted).getBytes());
const octets = (bytes: string): forge.asn1.Asn1 => asn1.create(U, T.OCTETSTRING, false, bytes);
const der = (node: forge.asn1.Asn1): Buffer => Buffer.from(asn1.toDer(node).getBytes(), 'binary');
/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime after. */
const time = (d: Date): forge.asn1.Asn1 =>
  d.getUTCFullYear() < 2050
    ? asn1.create(U, T.UTCTIME, false, asn1.dateToUtcTime(d))
    : asn1.create(U, T.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(d));

/** Name with a single CN (UTF8String). */
function nameWithCn(cn: string): forge.asn1.Asn1 {
  const atv = seq([oid(OID.commonName), asn1.create(U, T.UTF8, false, bin(Buffer.from(cn, 'utf8')))]);
  return seq([asn1.create(U, T.SET, true, [atv])]);
}

function extension(id: string, critical: boolean, value: forge.asn1.Asn1): forge.asn1.Asn1 {
  return seq([
    oid(id),
    ...(critical ? [asn1.create(U, T.BOOLEAN, false, '\xff')] : []),
    octets(asn1.toDer(value).getBytes()),
  ]);
}

/** RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING's bits. */
function keyIdentifier(publicKey: KeyObject): string {
  const spki = asn1.fromDer(bin(publicKey.export({ type: 'spki', format: 'der' })));
  const bits = (spki.value as forge.asn1.Asn1[])[1]?.value as string;
  return bin(
    createHash('sha1')
      .update(Buffer.from(bits.slice(1), 'binary'))
      .digest(),
  );
}

/** 16 random bytes, top bit cleared (a positive DER INTEGER) and the next set (minimal encoding). */
function serialNumber(): string {
  const b = randomBytes(16);
  b[0] = ((b[0] ?? 0) & 0x7f) | 0x40;
  return bin(b);
}

interface CertSpec {
  subject: forge.asn1.Asn1;
  issuer: forge.asn1.Asn1;
  publicKey: KeyObject;
  signingKey: KeyObject;
  validDays: number;
  extensions: forge.asn1.Asn1[];
}

/**
 * Builds the TBSCertificate, signs its DER with ECDSA P-256 / SHA-256 (node:crypto's DER
 * ECDSA-Sig-Value is what X.509 wants) and returns the certificate as PEM. Backdated by an hour
 * so a peer whose clock lags slightly still accepts a just-made certificate.
 */
function buildCertificate(spec: CertSpec): string {
  const now = Date.now();
  const sigAlg = seq([oid(OID.ecdsaWithSha256)]);
  const tbs = seq([
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [asn1.create(U, T.INTEGER, false, '\x02')]), // v3
    asn1.create(U, T.INTEGER, false, serialNumber()),
    sigAlg,
    spec.issuer,
    seq([time(new Date(now - 3_600_000)), time(new Date(now + spec.validDays * DAY_MS))]),
    spec.subject,
    asn1.fromDer(bin(spec.publicKey.export({ type: 'spki', format: 'der' }))),
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 3, true, [seq(spec.extensions)]),
  ]);
  const tbsDer = der(tbs);
  const signature = sign('sha256', tbsDer, spec.signingKey);
  const certDer = der(
    seq([asn1.fromDer(bin(tbsDer)), sigAlg, asn1.create(U, T.BITSTRING, false, '\x00' + bin(signature))]),
  );
  return new X509Certificate(certDer).toString();
}

function ecKeyPair(): { publicKey: KeyObject; privateKey: KeyObject } {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
}

const pkcs8 = (key: KeyObject): string => key.export({ type: 'pkcs8', format: 'pem' }) as string;

/**
 * Self-signed CA on an EC P-256 key, ECDSA-SHA256 signed, basicConstraints CA (critical),
 * keyUsage keyCertSign + cRLSign + digitalSignature (critical). validDays default 825.
 */
export function createCA(commonName: string, validDays = 825): Pem {
  const { publicKey, privateKey } = ecKeyPair();
  const name = nameWithCn(commonName);
  const cert = buildCertificate({
    subject: name,
    issuer: name,
    publicKey,
    signingKey: privateKey,
    validDays,
    extensions: [
      extension(OID.basicConstraints, true, seq([asn1.create(U, T.BOOLEAN, false, '\xff')])),
      extension(OID.keyUsage, true, asn1.create(U, T.BITSTRING, false, KEY_USAGE.ca)),
      extension(OID.subjectKeyIdentifier, false, octets(keyIdentifier(publicKey))),
    ],
  });
  return { cert, key: pkcs8(privateKey) };
}

/**
 * Leaf certificate on a fresh EC P-256 key signed by `ca` (a CA from createCA), usable by a server
 * and a client (serverAuth + clientAuth). SANs come from dnsNames and ipAddresses (IPv4 or IPv6,
 * e.g. '::1'); modern TLS stacks ignore the common name, so pass every name a peer will check in
 * dnsNames. Throws if `ca.key` is not the key of `ca.cert` or is not an EC key.
 */
export function issueCert(
  ca: Pem,
  opts: { commonName: string; dnsNames?: string[]; ipAddresses?: string[]; validDays?: number },
): Pem {
  const caCert = new X509Certificate(ca.cert);
  const caKey = createPrivateKey(ca.key);
  if (caKey.asymmetricKeyType !== 'ec') throw new Error('issueCert: the CA key must be an EC key');
  if (!caCert.checkPrivateKey(caKey))
    throw new Error('issueCert: the CA key does not match the CA certificate');
  // The issuer must be the CA's subject byte for byte: take it from the CA's own TBSCertificate.
  const caTbs = (asn1.fromDer(bin(caCert.raw)).value as forge.asn1.Asn1[])[0]?.value as forge.asn1.Asn1[];
  const issuer = caTbs[5];
  if (!issuer) throw new Error('issueCert: cannot read the CA subject');
  const altNames = [
    ...(opts.dnsNames ?? []).map((dns) => asn1.create(asn1.Class.CONTEXT_SPECIFIC, 2, false, dns)),
    ...(opts.ipAddresses ?? []).map((ip) => {
      const bytes = isIP(ip) === 0 ? null : forgeUtil.bytesFromIP(ip);
      if (bytes === null) throw new Error(`not an IP address: ${ip}`);
      return asn1.create(asn1.Class.CONTEXT_SPECIFIC, 7, false, bytes);
    }),
  ];
  const { publicKey, privateKey } = ecKeyPair();
  const cert = buildCertificate({
    subject: nameWithCn(opts.commonName),
    issuer,
    publicKey,
    signingKey: caKey,
    validDays: opts.validDays ?? 825,
    extensions: [
      extension(OID.basicConstraints, true, seq([])),
      extension(OID.keyUsage, true, asn1.create(U, T.BITSTRING, false, KEY_USAGE.leaf)),
      extension(OID.extKeyUsage, false, seq([oid(OID.serverAuth), oid(OID.clientAuth)])),
      ...(altNames.length > 0 ? [extension(OID.subjectAltName, false, seq(altNames))] : []),
      extension(OID.subjectKeyIdentifier, false, octets(keyIdentifier(publicKey))),
      extension(
        OID.authorityKeyIdentifier,
        false,
        seq([asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, false, keyIdentifier(createPublicKey(caKey)))]),
      ),
    ],
  });
  return { cert, key: pkcs8(privateKey) };
}
