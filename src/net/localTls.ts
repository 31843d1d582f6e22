import tls from 'node:tls';
import path from 'node:path';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createCA, issueCert, type Pem } from './certs';
import { ensureOwnDir, readOwnFile, resolveStateDir, writeOwnFile, type StateDir } from './files';
import { ErrorCode, ProxyError } from '../errors';
import { onAbort } from '../abort';

/** The `localTls` config section. */
export interface LocalTlsSettings {
  /** Directory for the proxy's files; default from the environment (see resolveStateDir). */
  dir?: string | undefined;
  /** Exact path of the CA certificate; default `<dir>/local-ca.pem`. */
  caFile?: string | undefined;
  /** Keep the CA key on disk (0600, `<dir>/local-ca-key.pem`); default true unless only caFile is set. */
  cache?: boolean | undefined;
}

const CA_NAME = 'rds-iam-proxy local CA';
/** A cached CA is long-lived so apps keep trusting it; it is replaced within RENEW_MS of expiry. */
const CA_DAYS = 3650;
const LEAF_DAYS = 825;
const RENEW_MS = 30 * 86_400_000;
const PEM_CERT = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----\n?/;
const PEM_KEY = /-----BEGIN PRIVATE KEY-----[^-]+-----END PRIVATE KEY-----\n?/;

/** The cached CA if the bundle holds a usable one: an EC CA with its key, not about to expire. */
function usableCa(bundle: string, now: number): Pem | undefined {
  const cert = PEM_CERT.exec(bundle)?.[0];
  const key = PEM_KEY.exec(bundle)?.[0];
  if (!cert || !key) return undefined;
  try {
    const x = new X509Certificate(cert);
    const k = createPrivateKey(key);
    if (!x.ca || k.asymmetricKeyType !== 'ec' || !x.checkPrivateKey(k)) return undefined;
    if (Date.parse(x.validTo) - now < RENEW_MS || Date.parse(x.validFrom) > now + 3_600_000) return undefined;
    return { cert, key };
  } catch {
    return undefined;
  }
}

/**
 * The process's local TLS material for `client.tls: auto`: an EC P-256 CA and a leaf for
 * localhost, 127.0.0.1 and ::1 that it signs at start. The CA certificate is written (0644) to
 * `caPath` in the proxy's own directory (see src/net/files.ts) so clients can verify-full against
 * it. With `cache`, the CA key is kept beside it (0600) and reused: restarts, and other proxies
 * sharing the directory, present the same CA, so apps' trust survives and nobody's CA is
 * overwritten. Without it the key never leaves memory. Created once, on first use.
 */
export class LocalTls {
  private auto: tls.SecureContext | undefined;
  private caPem: string | undefined;
  /** The proxy's directory and where it came from. */
  readonly dir: StateDir;
  private readonly caFile: string;
  private readonly keyFile: string;
  /** True when the CA key is kept on disk. */
  readonly cache: boolean;

  constructor(settings: LocalTlsSettings = {}, env: NodeJS.ProcessEnv = process.env) {
    this.dir = resolveStateDir(settings, env);
    this.caFile = settings.caFile ? path.resolve(settings.caFile) : path.join(this.dir.path, 'local-ca.pem');
    this.keyFile = path.join(this.dir.path, 'local-ca-key.pem');
    this.cache = settings.cache ?? this.dir.source !== 'localTls.caFile';
  }

  /** Where the CA certificate is written (clients' sslrootcert / ssl-ca). */
  get caPath(): string {
    return this.caFile;
  }

  /** Where the CA key is kept when `cache` is on. */
  get keyPath(): string {
    return this.keyFile;
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

  /** PEM of the CA (generating or loading it if needed). */
  caCertificate(): string {
    this.autoContext();
    return this.caPem as string;
  }

  private autoContext(): tls.SecureContext {
    if (this.auto) return this.auto;
    const configured = this.dir.source === 'localTls.dir' || this.dir.source === 'localTls.caFile';
    const fromSystemd = this.dir.source === 'STATE_DIRECTORY' || this.dir.source === 'RUNTIME_DIRECTORY';
    ensureOwnDir(this.dir.path, { createParents: configured, rootLinkOk: fromSystemd });
    const caDir = path.dirname(this.caFile);
    if (caDir !== this.dir.path) ensureOwnDir(caDir, { createParents: true });
    const ca = this.cache ? this.cachedCa() : createCA(CA_NAME, CA_DAYS);
    // Checks the existing file (a planted symlink fails the start) and skips a needless rewrite.
    if (readOwnFile(this.caFile)?.toString() !== ca.cert) writeOwnFile(this.caFile, ca.cert, 0o644);
    const leaf = issueCert(ca, {
      commonName: 'localhost',
      dnsNames: ['localhost'],
      ipAddresses: ['127.0.0.1', '::1'],
      validDays: LEAF_DAYS,
    });
    this.caPem = ca.cert;
    this.auto = tls.createSecureContext({ cert: leaf.cert + ca.cert, key: leaf.key, minVersion: 'TLSv1.2' });
    return this.auto;
  }

  /**
   * The CA from `keyFile`, or a new one stored there. Two proxies starting together in one
   * directory both end up with the first one's CA (exclusive create, then read back).
   */
  private cachedCa(): Pem {
    const now = Date.now();
    const stored = readOwnFile(this.keyFile, { secret: true })?.toString();
    const reused = stored === undefined ? undefined : usableCa(stored, now);
    if (reused) return reused;
    const fresh = createCA(CA_NAME, CA_DAYS);
    const bundle = fresh.key + fresh.cert;
    if (stored !== undefined) {
      // Expired, about to expire, or not ours to use: replace it.
      writeOwnFile(this.keyFile, bundle, 0o600);
      return fresh;
    }
    if (writeOwnFile(this.keyFile, bundle, 0o600, { exclusive: true })) return fresh;
    const theirs = usableCa(readOwnFile(this.keyFile, { secret: true })?.toString() ?? '', now);
    if (!theirs)
      throw new ProxyError(
        ErrorCode.Config,
        `${this.keyFile} changed while the proxy was creating it and holds no usable CA; remove it and restart`,
      );
    return theirs;
  }
}

/**
 * Upgrades an accepted socket to TLS as the server. Bytes already read from `raw` (a direct-TLS
 * ClientHello) are handed back first. Resolves once the handshake completes; the TLS socket
 * owns `raw` afterwards. Aborting `signal` destroys the socket (a client mid-handshake cannot
 * read a plaintext error) and rejects with the signal's reason.
 */
export function acceptTls(
  raw: import('node:net').Socket,
  secureContext: tls.SecureContext,
  alreadyRead: Buffer,
  alpn?: string[],
  signal?: AbortSignal,
): Promise<tls.TLSSocket> {
  if (alreadyRead.length > 0) raw.unshift(alreadyRead);
  const s = new tls.TLSSocket(raw, {
    isServer: true,
    secureContext,
    ...(alpn ? { ALPNProtocols: alpn } : {}),
  });
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => {
      stopWatching();
      s.destroy();
      reject(
        new ProxyError(ErrorCode.ClientProtocol, `local TLS handshake failed: ${err.message}`, {
          cause: err,
        }),
      );
    };
    const onClose = (): void => onError(new Error('client closed during TLS handshake'));
    const stopWatching = onAbort(signal, (reason) => {
      s.off('error', onError);
      s.off('close', onClose);
      s.on('error', () => undefined);
      s.destroy();
      reject(reason);
    });
    s.once('error', onError);
    s.once('close', onClose);
    s.once('secure', () => {
      stopWatching();
      s.off('error', onError);
      s.off('close', onClose);
      s.on('error', () => undefined);
      resolve(s);
    });
  });
}
