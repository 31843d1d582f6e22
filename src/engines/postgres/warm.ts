/**
 * Pre-warmed Postgres sessions (listeners[].prewarm): logins made ahead of time with a startup
 * profile (protocol version and parameters learned from the key's last client), held idle with
 * their ParameterStatus values, BackendKeyData and ReadyForQuery, and handed to one client whose
 * startup they can reproduce. Parameters that differ are applied with one simple Query of
 * `set_config` calls (the same text form as a startup parameter), and the client is told the
 * server's final ParameterStatus values. See src/proxy/prewarm.ts for the pool itself.
 */
import type tls from 'node:tls';
import { untilAborted } from '../../abort';
import type { Listener } from '../../config/schema';
import { tokenRequestFor, type TokenSource } from '../../credentials/tokens';
import { asProxyError, ErrorCode, ProxyError } from '../../errors';
import type { ConnectionLogger, Logger } from '../../log';
import { SocketReader } from '../../net/reader';
import type { PrewarmMiss } from '../../proxy/observer';
import { loginWithLease } from '../../proxy/handshake';
import { listenerPool, type PrewarmDeps, PrewarmPool, type WarmKey } from '../../proxy/prewarm';
import { connectTls, login, type UpstreamSession, type UpstreamTarget } from './upstream';
import {
  AuthCode,
  authMessage,
  Backend,
  Field,
  MAX_HANDSHAKE_MESSAGE,
  message,
  parseBackendKey,
  parseErrorFields,
  PROTOCOL_3_0,
  readMessage,
  readyForQuery,
} from './wire';

/**
 * What a warm session logs in with: a protocol version and startup parameters (no user or
 * database). It starts as the key's first client's and then keeps only the parameters every
 * later client sent with the same value: an application whose connections all start alike gets
 * sessions that need no SET at all, and mixed clients converge on a profile every one of them
 * can be reached from with SETs.
 */
export interface PgProfile {
  version: number;
  params: [string, string][];
  /** False until a client of the key has been seen. */
  seen: boolean;
}

/** The profile after a successful login by a client with `version` and `params` (no user/database). */
export function nextProfile(prev: PgProfile, version: number, params: [string, string][]): PgProfile {
  if (!prev.seen) return { version, params, seen: true };
  const same = (k: string, v: string): boolean => params.some(([ck, cv]) => ck === k && cv === v);
  return { version, params: prev.params.filter(([k, v]) => same(k, v)), seen: true };
}

/** A logged-in, idle upstream session. */
export interface WarmPg {
  socket: tls.TLSSocket;
  version: number;
  /** The settings its startup carried (lower-case names), `options` expanded. */
  settings: Map<string, string>;
  /** NegotiateProtocolVersion frame, if the server sent one. */
  negotiate?: Buffer;
  /** ParameterStatus values in the server's order and spelling. */
  status: Map<string, string>;
  backendKey?: { pid: number; key: Buffer };
  /** The BackendKeyData frame as the server sent it. */
  keyFrame?: Buffer;
  /** Set by the idle watch when the server closed it or sent anything. */
  dead: boolean;
  /**
   * What its client is sent as it logged in (`helloOf`), built at login so that a hand-out
   * needing no SET writes it at once.
   */
  hello: Buffer;
}

/** What app.ts hands a Postgres listener for prewarm. */
/** What the Postgres prewarm needs from the app. */
export type PgPrewarmDeps = PrewarmDeps;

/** Frontend 'Q' (simple Query). */
const QUERY = 0x51;

/**
 * The startup settings a client asks for, as lower-case name -> value, with `options`
 * (`-c name=value`, `--name=value`) expanded; a string when a warm session cannot reproduce
 * them (replication, protocol extensions, another command-line switch).
 */
export function startupSettings(params: [string, string][]): Map<string, string> | string {
  const out = new Map<string, string>();
  for (const [k, v] of params) {
    const name = k.toLowerCase();
    if (name === 'user' || name === 'database') continue;
    if (name === 'replication') return 'replication';
    if (name.startsWith('_pq_.')) return `protocol option ${k}`;
    if (name !== 'options') {
      out.set(name, v);
      continue;
    }
    const words = splitOptions(v);
    for (let i = 0; i < words.length; i++) {
      const w = words[i] as string;
      let setting: string | undefined;
      if (w === '-c') setting = words[++i];
      else if (w.startsWith('-c')) setting = w.slice(2);
      else if (w.startsWith('--')) setting = w.slice(2);
      else return `startup option ${w}`;
      const eq = setting?.indexOf('=') ?? -1;
      if (!setting || eq <= 0) return `startup option ${w}`;
      const n = setting.slice(0, eq).toLowerCase();
      // The server reads `--a-b=x` as a_b (ParseLongOption); -c names are taken as given.
      out.set(w.startsWith('--') ? n.replace(/-/g, '_') : n, setting.slice(eq + 1));
    }
  }
  return out;
}

/** Splits `options` like the server (pg_split_opts): on whitespace, a backslash keeps the next character. */
function splitOptions(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i] as string;
    if (/\s/.test(c)) {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
    } else if (c === '\\' && i + 1 < s.length) {
      cur += s[++i];
      inWord = true;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) out.push(cur);
  return out;
}

/**
 * The settings to apply on `w` for a client with `version` and `params`, or the reason it cannot
 * be reproduced: another protocol version, a setting the session has that the client does not
 * (RESET would return to the session's startup value, not the server default), or a startup the
 * server only takes at connection time.
 */
export function planFor(
  w: Pick<WarmPg, 'version' | 'settings'>,
  version: number,
  params: [string, string][],
): { sets: [string, string][] } | { miss: 'protocol' | 'startup' } {
  if (version !== w.version) return { miss: 'protocol' };
  const want = startupSettings(params);
  if (typeof want === 'string') return { miss: 'startup' };
  for (const name of w.settings.keys()) if (!want.has(name)) return { miss: 'startup' };
  const sets: [string, string][] = [];
  for (const [name, value] of want) if (w.settings.get(name) !== value) sets.push([name, value]);
  return { sets };
}

/** An escape-string literal: valid whatever standard_conforming_strings is. */
function literal(s: string): string {
  return `E'${s.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** One simple Query setting every pair at session level, evaluated left to right. */
export function setQuery(sets: [string, string][]): Buffer {
  const calls = sets.map(([n, v]) => `pg_catalog.set_config(${literal(n)}, ${literal(v)}, false)`);
  return message(QUERY, Buffer.from(`SELECT ${calls.join(', ')}\0`, 'utf8'));
}

/** The pool of warm Postgres sessions for one listener, and the hand-out a handshake calls. */
export class PgPrewarm {
  readonly pool: PrewarmPool<WarmPg, PgProfile>;

  constructor(
    private readonly listener: Listener,
    private readonly target: UpstreamTarget,
    private readonly secrets: TokenSource,
    deps: PgPrewarmDeps,
  ) {
    this.pool = listenerPool(listener, deps, {
      open: (key, signal, log) => this.open(key, signal, log),
      close: (w) => w.socket.destroy(),
      defaultDatabase: (user) => user,
      initialProfile: { version: PROTOCOL_3_0, params: [], seen: false },
    });
  }

  /**
   * A warm session for this client, logged in upstream with its settings applied, as the
   * UpstreamSession the handshake relays (AuthenticationOk, ParameterStatus, the session's real
   * BackendKeyData, ReadyForQuery); undefined on a miss, and the caller logs in afresh. `own`
   * registers the socket with the handshake so an abort destroys it. The caller calls `claim`
   * (PrewarmPool.claim) once it has written the relay, before the splice.
   */
  async take(
    user: string,
    database: string,
    version: number,
    params: [string, string][],
    signal: AbortSignal,
    own: (s: tls.TLSSocket) => void,
    log: ConnectionLogger,
  ): Promise<(UpstreamSession & { claim(): void }) | undefined> {
    const taken = this.pool.take(user, database, (w): { sets: [string, string][] } | { miss: PrewarmMiss } =>
      planFor(w, version, params),
    );
    if (!taken) return undefined;
    const w = taken.session;
    own(w.socket);
    const done = (leftover: Buffer): UpstreamSession & { claim(): void } => ({
      socket: w.socket,
      relay: [w.hello],
      leftover,
      ...(w.backendKey ? { backendKey: w.backendKey } : {}),
      claim: () => this.pool.claim(w),
    });
    if (taken.fit.sets.length === 0) return done(NOTHING);
    this.pool.claim(w);
    try {
      const leftover = await apply(w, taken.fit.sets, signal);
      w.hello = helloOf(w);
      return done(leftover);
    } catch (err) {
      if (signal.aborted) throw err;
      this.pool.spoilt(user, database, w, 'apply_failed', 'apply_failed');
      log.info({ reason: asProxyError(err).message }, 'warm session not used; logging in afresh');
      return undefined;
    }
  }

  /**
   * Records a successful login, so the key's next warm sessions start like this client; ready
   * sessions a client of the new profile could not use are replaced.
   */
  learn(user: string, database: string, version: number, params: [string, string][]): void {
    if (typeof startupSettings(params) === 'string') return;
    const kept = params.filter(([k]) => k !== 'user' && k !== 'database');
    const prev = this.pool.profile(user, database);
    const profile = nextProfile(prev ?? { version, params: [], seen: false }, version, kept);
    // Ready sessions with a setting the new profile dropped would miss every such client until
    // their maximum age: they are replaced now.
    const stale = (w: WarmPg): boolean => 'miss' in planFor(w, profile.version, profile.params);
    this.pool.learn(user, database, profile, stale);
  }

  /** Logs one warm session in: the key mapped like a client's startup (upstream.user / database). */
  private open(key: WarmKey<PgProfile>, signal: AbortSignal, log: Logger): Promise<WarmPg> {
    const l = this.listener;
    const user = l.upstream.user ?? key.user;
    const params: [string, string][] = [
      ['user', user],
      ['database', l.upstream.database ?? key.database],
      ...key.profile.params,
    ];
    const settings = startupSettings(key.profile.params);
    if (typeof settings === 'string')
      return Promise.reject(new ProxyError(ErrorCode.Internal, `unreproducible profile: ${settings}`));
    return loginWithLease(this.secrets, tokenRequestFor(l, user), log, async (lease) => {
      const socket = await connectTls(this.target, undefined, signal);
      const s = await login(
        socket,
        { version: key.profile.version, params, user, secret: () => untilAborted(lease.secret, signal) },
        undefined,
        signal,
      );
      return warmFrom(s, key.profile.version, settings);
    });
  }
}

const NOTHING = Buffer.alloc(0);

/**
 * What a client handed `w` is sent: NegotiateProtocolVersion if the server sent one,
 * AuthenticationOk, the ParameterStatus values, the session's own BackendKeyData, ReadyForQuery.
 */
function helloOf(w: WarmPg): Buffer {
  const out: Buffer[] = [];
  if (w.negotiate) out.push(w.negotiate);
  out.push(authMessage(AuthCode.Ok));
  for (const [k, v] of w.status) out.push(parameterStatus(k, v));
  if (w.keyFrame) out.push(w.keyFrame);
  out.push(readyForQuery('I'));
  return Buffer.concat(out);
}

/** Reads the login's relayed frames into a WarmPg. */
function warmFrom(s: UpstreamSession, version: number, settings: Map<string, string>): WarmPg {
  const w: WarmPg = {
    socket: s.socket,
    version,
    settings,
    status: new Map(),
    dead: s.leftover.length > 0,
    hello: NOTHING,
  };
  for (const raw of s.relay) {
    const body = raw.subarray(5);
    switch (raw[0]) {
      case Backend.NegotiateProtocolVersion:
        w.negotiate = raw;
        break;
      case Backend.ParameterStatus: {
        const [k, v] = cstrings(body);
        if (k !== undefined) w.status.set(k, v ?? '');
        break;
      }
      case Backend.BackendKeyData:
        w.backendKey = parseBackendKey(body);
        w.keyFrame = raw;
        break;
    }
  }
  w.hello = helloOf(w);
  return w;
}

function cstrings(b: Buffer): string[] {
  return b
    .toString('utf8')
    .split('\0')
    .filter((_, i, a) => i < a.length - 1);
}

function parameterStatus(name: string, value: string): Buffer {
  return message(Backend.ParameterStatus, Buffer.from(`${name}\0${value}\0`, 'utf8'));
}

/**
 * Applies `sets` with one simple Query and reads to ReadyForQuery, updating `w.status` from the
 * server's ParameterStatus messages. Returns bytes read past ReadyForQuery (normally none).
 * Rejects with the server's error (the implicit transaction rolled every setting back).
 */
async function apply(w: WarmPg, sets: [string, string][], signal: AbortSignal): Promise<Buffer> {
  if (sets.length === 0) return Buffer.alloc(0);
  const reader = new SocketReader(w.socket, MAX_HANDSHAKE_MESSAGE * 2, 'server', signal);
  w.socket.resume();
  let failure: ProxyError | undefined;
  try {
    w.socket.write(setQuery(sets));
    for (;;) {
      const msg = await readMessage(reader, MAX_HANDSHAKE_MESSAGE, ErrorCode.UpstreamProtocol);
      if (msg.type === Backend.ParameterStatus) {
        const [k, v] = cstrings(msg.body);
        if (k !== undefined) w.status.set(k, v ?? '');
      } else if (msg.type === Backend.ErrorResponse) {
        const fields = parseErrorFields(msg.body);
        failure = new ProxyError(
          ErrorCode.UpstreamProtocol,
          `server refused a startup setting of a warm session: ${fields.get(Field.Message) ?? ''}`,
        );
      } else if (msg.type === Backend.ReadyForQuery) {
        if (failure) throw failure;
        return reader.detach();
      }
    }
  } catch (err) {
    reader.detach();
    throw err;
  }
}
