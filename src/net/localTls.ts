import tls from 'node:tls';
import os from 'node:os';
import path from 'node:path';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createCA, issueCert, type Pem } from './certs';
import { ErrorCode, ProxyError } from '../errors';

/** Default location of the generated local CA certificate (clients use it as sslrootcert / ssl-ca). */
export const DEFAULT_LOCAL_CA_FILE = path.join(os.tmpdir(), 'rds-iam-proxy', 'local-ca.pem');

/**
 * The process's local TLS material for `client.tls: auto`: a CA made at start (its key never
 * leaves memory) and a leaf for localhost, 127.0.0.1 and ::1. The CA certificate is written to
 * `caFile` so clients can verify-full against it. Created once, on first use.
 */
export class LocalTls {
  private auto: tls.SecureContext | undefined;
  private caPem: string | undefined;

  constructor(private readonly caFile: string = DEFAULT_LOCAL_CA_FILE) {}

  /** Where the CA certificate is, once generated. */
  get caPath(): string {
    return this.caFile;
  }

  /** Secure context for a listener's `client.tls` setting, or undefined for `off`. */
  contextFor(spec: 'off' | 'auto' | { cert: string; key: string }): tls.SecureContext | undefined {
    if (spec === 'off') return undefined;
    if (spec === 'auto') return this.autoContext();
    try {
      return tls.createSecureContext({
        cert: readFileSync(spec.cert),
        key: readFileSync(spec.key),
        minVersion: 'TLSv1.2',
      });
    } catch (err) {
      throw new ProxyError(
        ErrorCode.Config,
        `cannot load client.tls cert/key (${spec.cert}, ${spec.key}): ${(err as Error).message}`,
      );
    }
  }

  /** PEM of the generated CA (generating it if needed). */
  caCertificate(): string {
    this.autoContext();
    return this.caPem as string;
  }

  private autoContext(): tls.SecureContext {
    if (this.auto) return this.auto;
    const ca: Pem = createCA('rds-iam-proxy local CA', 825);
    const leaf = issueCert(ca, {
      commonName: 'localhost',
      dnsNames: ['localhost'],
      ipAddresses: ['127.0.0.1', '::1'],
      validDays: 825,
    });
    try {
      mkdirSync(path.dirname(this.caFile), { recursive: true });
      writeFileSync(this.caFile, ca.cert, { mode: 0o644 });
    } catch (err) {
      throw new ProxyError(
        ErrorCode.Config,
        `cannot write the local CA to ${this.caFile} (localTls.caFile): ${(err as Error).message}`,
      );
    }
    this.caPem = ca.cert;
    this.auto = tls.createSecureContext({ cert: leaf.cert + ca.cert, key: leaf.key, minVersion: 'TLSv1.2' });
    return this.auto;
  }
}

/**
 * Upgrades an accepted socket to TLS as the server. Bytes already read from `raw` (a direct-TLS
 * ClientHello) are handed back first. Resolves once the handshake completes; the TLS socket
 * owns `raw` afterwards.
 */
export function acceptTls(
  raw: import('node:net').Socket,
  secureContext: tls.SecureContext,
  alreadyRead: Buffer,
  alpn?: string[],
): Promise<tls.TLSSocket> {
  if (alreadyRead.length > 0) raw.unshift(alreadyRead);
  const s = new tls.TLSSocket(raw, {
    isServer: true,
    secureContext,
    ...(alpn ? { ALPNProtocols: alpn } : {}),
  });
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => {
      s.destroy();
      reject(
        new ProxyError(ErrorCode.ClientProtocol, `local TLS handshake failed: ${err.message}`, {
          cause: err,
        }),
      );
    };
    const onClose = (): void => onError(new Error('client closed during TLS handshake'));
    s.once('error', onError);
    s.once('close', onClose);
    s.once('secure', () => {
      s.off('error', onError);
      s.off('close', onClose);
      s.on('error', () => undefined);
      resolve(s);
    });
  });
}
