/**
 * SCRAM-SHA-256 (RFC 5802 / RFC 7677) as Postgres uses it: the proxy is a client upstream
 * (auth.mode: password, RDS Proxy) and a server downstream (client.auth: password).
 * Channel binding is not offered (the mechanism list is plain SCRAM-SHA-256).
 */
import { ScramError } from '../../errors';
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

export const SCRAM_MECHANISM = 'SCRAM-SHA-256';
const ITERATIONS = 4096;

const hmac = (key: Buffer, data: string): Buffer => createHmac('sha256', key).update(data).digest();
const sha256 = (data: Buffer): Buffer => createHash('sha256').update(data).digest();
const xor = (a: Buffer, b: Buffer): Buffer => Buffer.from(a.map((v, i) => v ^ (b[i] as number)));

function attrs(msg: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of msg.split(',')) {
    const eq = part.indexOf('=');
    if (eq === 1) m.set(part[0] as string, part.slice(2));
  }
  return m;
}

/**
 * PBKDF2 with 4096 iterations costs ~1.5 ms per login; the server's salt and iterations are
 * fixed per role, so the salted password is reused. Keyed by a hash of the password, so a
 * rotated password misses; bounded so it cannot grow.
 */
const saltedCache = new Map<string, Buffer>();
const SALTED_CACHE_MAX = 64;

function saltedPassword(password: string, salt: string, iterations: number): Buffer {
  const key = `${createHash('sha256').update(password).digest('base64')}:${salt}:${iterations}`;
  let v = saltedCache.get(key);
  if (!v) {
    v = pbkdf2Sync(password, Buffer.from(salt, 'base64'), iterations, 32, 'sha256');
    if (saltedCache.size >= SALTED_CACHE_MAX) saltedCache.delete(saltedCache.keys().next().value as string);
    saltedCache.set(key, v);
  }
  return v;
}

/** Client side of one exchange. Throws Error with a reason on a bad server message. */
export class ScramClient {
  private readonly nonce = randomBytes(18).toString('base64');
  private readonly clientFirstBare = `n=*,r=${this.nonce}`;
  private serverSignature: Buffer | undefined;

  constructor(private readonly password: string) {}

  /** Data for SASLInitialResponse. */
  first(): string {
    return `n,,${this.clientFirstBare}`;
  }

  /** Data for SASLResponse, computed from the server-first message. */
  final(serverFirst: string): string {
    const a = attrs(serverFirst);
    const r = a.get('r');
    const s = a.get('s');
    const i = Number(a.get('i'));
    if (!r || !s || !Number.isInteger(i) || i < 1)
      throw new ScramError('malformed SCRAM server-first message', 'protocol');
    if (!r.startsWith(this.nonce) || r.length === this.nonce.length)
      throw new ScramError('SCRAM server nonce does not extend ours', 'protocol');
    const salted = saltedPassword(this.password, s, i);
    const clientKey = hmac(salted, 'Client Key');
    const withoutProof = `c=biws,r=${r}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const proof = xor(clientKey, hmac(sha256(clientKey), authMessage));
    this.serverSignature = hmac(hmac(salted, 'Server Key'), authMessage);
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** Checks the server's signature: proves the server knew the password too. */
  verifyFinal(serverFinal: string): void {
    const v = attrs(serverFinal).get('v');
    if (!v || !this.serverSignature || !safeEqual(Buffer.from(v, 'base64'), this.serverSignature)) {
      throw new ScramError('SCRAM server signature does not match', 'proof');
    }
  }
}

/** What the server keeps per user: derived keys, never the password. */
export interface ScramVerifier {
  salt: Buffer;
  iterations: number;
  storedKey: Buffer;
  serverKey: Buffer;
}

/** Derives a verifier from a password (done once per configured user). */
export function makeVerifier(
  password: string,
  salt = randomBytes(16),
  iterations = ITERATIONS,
): ScramVerifier {
  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  return {
    salt,
    iterations,
    storedKey: sha256(hmac(salted, 'Client Key')),
    serverKey: hmac(salted, 'Server Key'),
  };
}

/** Server side of one exchange. Methods throw Error (with a non-secret reason) on bad input. */
export class ScramServer {
  private clientFirstBare = '';
  private serverFirst = '';
  private nonce = '';
  private gs2Header = '';

  constructor(private readonly verifier: ScramVerifier) {}

  /** Takes the client-first message, returns server-first. */
  first(clientFirst: string): string {
    const m = /^([ny]),(a=[^,]*)?,(.*)$/.exec(clientFirst);
    if (!m)
      throw new ScramError(
        'unsupported SCRAM client-first message (channel binding is not offered)',
        'protocol',
      );
    this.gs2Header = clientFirst.slice(0, clientFirst.length - (m[3] as string).length);
    this.clientFirstBare = m[3] as string;
    const r = attrs(this.clientFirstBare).get('r');
    if (!r || r.length > 256) throw new ScramError('missing client nonce', 'protocol');
    this.nonce = r + randomBytes(18).toString('base64');
    this.serverFirst = `r=${this.nonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    return this.serverFirst;
  }

  /** Verifies client-final; returns server-final on success, throws on a wrong password. */
  final(clientFinal: string): string {
    const pIdx = clientFinal.lastIndexOf(',p=');
    if (pIdx < 0) throw new ScramError('missing client proof', 'protocol');
    const withoutProof = clientFinal.slice(0, pIdx);
    const a = attrs(withoutProof);
    if (a.get('r') !== this.nonce) throw new ScramError('nonce mismatch', 'protocol');
    if (a.get('c') !== Buffer.from(this.gs2Header).toString('base64'))
      throw new ScramError('channel binding mismatch', 'protocol');
    const proof = Buffer.from(clientFinal.slice(pIdx + 3), 'base64');
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const clientSig = hmac(this.verifier.storedKey, authMessage);
    if (
      proof.length !== clientSig.length ||
      !safeEqual(sha256(xor(proof, clientSig)), this.verifier.storedKey)
    ) {
      throw new ScramError('password authentication failed', 'proof');
    }
    return `v=${hmac(this.verifier.serverKey, authMessage).toString('base64')}`;
  }
}

function safeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** MD5 password response: "md5" + md5(md5(password + user) + salt). */
export function md5Response(user: string, password: string, salt: Buffer): string {
  const inner = createHash('md5')
    .update(password + user)
    .digest('hex');
  return (
    'md5' +
    createHash('md5')
      .update(Buffer.concat([Buffer.from(inner), salt]))
      .digest('hex')
  );
}
