/**
 * Password challenge-responses, both as a client (answering the upstream in auth.mode: password)
 * and as a server (checking local clients in client.auth: password). Local passwords are kept
 * only as the digests each check needs, never in clear.
 * https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_authentication_methods.html
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { AuthPlugin, SCRAMBLE_LENGTH } from './wire';

function sha1(...parts: Buffer[]): Buffer {
  const h = createHash('sha1');
  for (const p of parts) h.update(p);
  return h.digest();
}

function sha256(...parts: Buffer[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = (a[i] as number) ^ (b[i % b.length] as number);
  return out;
}

/** A fresh scramble of printable bytes (33..126): no NUL, which some clients treat as its end. */
export function makeScramble(): Buffer {
  const r = randomBytes(SCRAMBLE_LENGTH);
  for (let i = 0; i < r.length; i++) r[i] = 33 + ((r[i] as number) % 94);
  return r;
}

/** mysql_native_password: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))); empty for an empty password. */
export function nativeToken(password: string, scramble: Buffer): Buffer {
  if (password === '') return Buffer.alloc(0);
  const stage1 = sha1(Buffer.from(password, 'utf8'));
  return xor(stage1, sha1(scramble.subarray(0, SCRAMBLE_LENGTH), sha1(stage1)));
}

/** caching_sha2_password fast path: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + scramble). */
export function sha2Token(password: string, scramble: Buffer): Buffer {
  if (password === '') return Buffer.alloc(0);
  const stage1 = sha256(Buffer.from(password, 'utf8'));
  return xor(stage1, sha256(sha256(stage1), scramble.subarray(0, SCRAMBLE_LENGTH)));
}

/** What the local check of one user keeps. */
interface Digests {
  /** SHA1(SHA1(pw)), as mysql.user stores it. */
  native: Buffer;
  /** SHA256(SHA256(pw)), caching_sha2_password's cache entry. */
  sha2: Buffer;
  /** SHA256(pw), to compare a cleartext password in constant time. */
  clear: Buffer;
  /** Clients send no auth data at all for an empty password. */
  empty: boolean;
}

function digests(password: string): Digests {
  const pw = Buffer.from(password, 'utf8');
  return { native: sha1(sha1(pw)), sha2: sha256(sha256(pw)), clear: sha256(pw), empty: pw.length === 0 };
}

/** Plugins a local client may answer with; any other gets an AuthSwitchRequest to mysql_native_password. */
export const LOCAL_PLUGINS: readonly string[] = [
  AuthPlugin.NATIVE,
  AuthPlugin.CACHING_SHA2,
  AuthPlugin.CLEAR,
];

/** Configured local users (client.auth: password). */
export class LocalUsers {
  private readonly users = new Map<string, Digests>();
  /** Checked for unknown users so that the work (and timing) is the same. */
  private readonly decoy = digests(randomBytes(16).toString('hex'));

  constructor(users: { name: string; password: string }[]) {
    for (const u of users) this.users.set(u.name, digests(u.password));
  }

  /**
   * True when `authData` proves the user's password under `plugin` for `scramble`. Cleartext is
   * accepted only when `secure` (TLS or a unix socket). Unknown plugins are false.
   */
  verify(user: string, plugin: string, authData: Buffer, scramble: Buffer, secure: boolean): boolean {
    const known = this.users.get(user);
    const d = known ?? this.decoy;
    let ok = false;
    if (authData.length === 0 && plugin !== AuthPlugin.CLEAR) return d.empty && known !== undefined;
    switch (plugin) {
      case AuthPlugin.NATIVE: {
        if (authData.length !== 20) break;
        const stage1 = xor(authData, sha1(scramble.subarray(0, SCRAMBLE_LENGTH), d.native));
        ok = timingSafeEqual(sha1(stage1), d.native);
        break;
      }
      case AuthPlugin.CACHING_SHA2: {
        if (authData.length !== 32) break;
        const stage1 = xor(authData, sha256(d.sha2, scramble.subarray(0, SCRAMBLE_LENGTH)));
        ok = timingSafeEqual(sha256(stage1), d.sha2);
        break;
      }
      case AuthPlugin.CLEAR: {
        if (!secure) break;
        const pw =
          authData.length > 0 && authData[authData.length - 1] === 0 ? authData.subarray(0, -1) : authData;
        ok = timingSafeEqual(sha256(pw), d.clear);
        break;
      }
      default:
        break;
    }
    return ok && known !== undefined;
  }
}
