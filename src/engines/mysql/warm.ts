/**
 * Pre-warmed MySQL sessions (listeners[].prewarm). A warm session is logged in ahead of time
 * with the capability flags, character set, max packet size and attributes of its key's last
 * client (its profile), and held idle until one client takes it.
 *
 * The server speaks first in MySQL, so the proxy must greet a client before it knows who the
 * client is: on accept the engine reserves a ready session (`reserve`) and writes that session's
 * greeting, built when it logged in (its connection id, so CONNECTION_ID() and KILL QUERY match;
 * the scramble is the proxy's, fresh per session, as on every path); the handshake then reads the
 * HandshakeResponse. The session is used
 * (`fit` + `handOut`) only when the client's user is the key's user, its capabilities (except
 * SSL, CONNECT_WITH_DB and CONNECT_ATTRS, which do not shape the command phase) and character set
 * equal the session's, and its database is the session's or can be selected with COM_INIT_DB.
 * Otherwise the session is closed (never returned: its connection id was shown to this client)
 * and the client takes a ready session of its own key (`take`) or logs in afresh; its greeting
 * then named a connection id that is not its own (documented in README "Pre-warmed logins").
 * Learned keys make the match the common case.
 */
import type tls from 'node:tls';
import { untilAborted } from '../../abort';
import type { Listener } from '../../config/schema';
import { tokenRequestFor, type TokenSource } from '../../credentials/tokens';
import { ErrorCode, ProxyError } from '../../errors';
import type { Logger } from '../../log';
import { SocketReader } from '../../net/reader';
import { makeScramble } from './auth';
import { clientGreeting, greetingPacket } from './downstream';
import type { PrewarmMiss } from '../../proxy/observer';
import { loginWithLease } from '../../proxy/handshake';
import { idleAlive, listenerPool, type PrewarmDeps, PrewarmPool, type WarmKey } from '../../proxy/prewarm';
import {
  type Credentials,
  login,
  type OpenUpstream,
  openUpstream,
  startTls,
  type UpstreamTarget,
  upstreamHandshakeResponse,
} from './upstream';
import {
  Cap,
  Header,
  type HandshakeResponse,
  MAX_HANDSHAKE_PACKET,
  packet,
  parseErr,
  readPacket,
} from './wire';

/** What a warm session logs in with: the key's last client's side of the HandshakeResponse. */
export interface MyProfile {
  capabilities: number;
  mariadbCapabilities: number;
  charset: number;
  maxPacketSize: number;
  attributes?: Buffer;
}

/** Capabilities that do not change how the command phase is framed or answered. */
const IGNORED_CAPS = Cap.SSL | Cap.CONNECT_WITH_DB | Cap.CONNECT_ATTRS;

/** utf8mb4_general_ci, and the flags of a 4.1 client: the profile of a key no client has used yet. */
const INITIAL_PROFILE: MyProfile = {
  capabilities:
    Cap.LONG_PASSWORD |
    Cap.LONG_FLAG |
    Cap.PROTOCOL_41 |
    Cap.TRANSACTIONS |
    Cap.SECURE_CONNECTION |
    Cap.MULTI_RESULTS |
    Cap.PLUGIN_AUTH,
  mariadbCapabilities: 0,
  charset: 45,
  maxPacketSize: 16 * 1024 * 1024,
};

/** True when a client with `p` can use a session logged in with `q`. */
export function sameProfile(p: MyProfile, q: MyProfile): boolean {
  return (
    ((p.capabilities ^ q.capabilities) & ~IGNORED_CAPS) === 0 &&
    p.mariadbCapabilities === q.mariadbCapabilities &&
    p.charset === q.charset
  );
}

/** A client's HandshakeResponse as a profile. */
export function profileOf(r: HandshakeResponse): MyProfile {
  return {
    capabilities: r.capabilities,
    mariadbCapabilities: r.mariadbCapabilities,
    charset: r.charset,
    maxPacketSize: r.maxPacketSize,
    ...(r.attributes ? { attributes: r.attributes } : {}),
  };
}

/** A logged-in, idle upstream session. */
export interface WarmMy {
  /** The greeted connection (its greeting names the server's connection id). */
  up: OpenUpstream;
  socket: tls.TLSSocket;
  /** The HandshakeResponse sent upstream (capabilities as negotiated with the server). */
  response: HandshakeResponse;
  profile: MyProfile;
  /** The database its login selected (upstream name), if any. */
  database: string | undefined;
  /** The server's OK to the login. */
  ok: Buffer;
  /** Set by the idle watch when the server closed it or sent anything. */
  dead: boolean;
  /** The greeting its client gets (sequence 0), built ahead so accept writes it at once. */
  hello: { scramble: Buffer; packet: Buffer };
}

/**
 * A ready session taken for a client before it spoke, its key, and the pending-handshake slot
 * it holds until the client answers (MysqlEngine.greet).
 */
export class Reservation {
  constructor(
    readonly session: WarmMy,
    readonly key: WarmKey<MyProfile>,
    /** Gives the slot back; idempotent. */
    readonly release: () => void,
  ) {}
}

/** What app.ts hands a MySQL listener for prewarm. */
/** What the MySQL prewarm needs from the app. */
export type MyPrewarmDeps = PrewarmDeps;

/** The decision for a reserved session once the client's response is known. */
export type MyFit = { initDb: string | undefined } | { miss: PrewarmMiss };

/** 0x02 COM_INIT_DB. https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_init_db.html */
const COM_INIT_DB = 0x02;

/** The pool of warm MySQL sessions for one listener. */
export class MyPrewarm {
  readonly pool: PrewarmPool<WarmMy, MyProfile>;

  constructor(
    private readonly listener: Listener,
    private readonly target: UpstreamTarget,
    private readonly secrets: TokenSource,
    private readonly credentials: (secret: () => Promise<string>) => Credentials,
    /** client.tls is on: the greeting offers CLIENT_SSL. */
    private readonly clientTls: boolean,
    deps: MyPrewarmDeps,
  ) {
    this.pool = listenerPool(listener, deps, {
      open: (key, signal, log) => this.open(key, signal, log),
      close: (w) => w.up.leg.destroy(),
      // A MySQL key without a database logs in without one; COM_INIT_DB selects the client's.
      defaultDatabase: () => '',
      initialProfile: INITIAL_PROFILE,
    });
  }

  /**
   * A ready session to greet the next client with (see the module comment), holding the
   * pending-handshake slot `release` gives back, or undefined; `first` (the greeting's write)
   * runs as soon as the session is chosen.
   */
  reserve(first: (w: WarmMy) => void, release: () => void): Reservation | undefined {
    const r = this.pool.reserve(first);
    return r && new Reservation(r.session, r.key, release);
  }

  /**
   * Whether `w` (reserved for `key`) serves a client with `response` that wants `database`
   * upstream (already mapped by upstream.database): COM_INIT_DB when the database differs.
   */
  fit(w: WarmMy, key: WarmKey<MyProfile>, response: HandshakeResponse, database: string | undefined): MyFit {
    if (response.user !== key.user) return { miss: 'no_key' };
    if (!sameProfile(profileOf(response), w.profile)) return { miss: 'capabilities' };
    if (database === w.database) return { initDb: undefined };
    // MySQL cannot deselect a database; a compressed session would need COM_INIT_DB compressed.
    if (database === undefined || response.capabilities & Cap.COMPRESS) return { miss: 'startup' };
    return { initDb: database };
  }

  /**
   * Makes `w` the client's: selects `initDb` if given and returns the OK to relay (COM_INIT_DB's,
   * else the login's) and bytes read past it. Counts nothing (see `handedOut`). Rejects with the
   * server's error, and the caller logs in afresh.
   */
  async handOut(
    w: WarmMy,
    initDb: string | undefined,
    signal: AbortSignal,
  ): Promise<{ ok: Buffer; leftover: Buffer }> {
    if (!idleAlive(w)) throw new ProxyError(ErrorCode.UpstreamUnreachable, 'the warm session was closed');
    if (initDb === undefined) return { ok: w.ok, leftover: Buffer.alloc(0) };
    this.pool.claim(w);
    const reader = new SocketReader(w.socket, MAX_HANDSHAKE_PACKET * 2, 'server', signal);
    w.socket.resume();
    try {
      w.socket.write(packet(0, Buffer.concat([Buffer.from([COM_INIT_DB]), Buffer.from(initDb, 'utf8')])));
      const p = await readPacket(reader);
      if (p.payload[0] === Header.ERR) {
        const e = parseErr(p.payload);
        throw new ProxyError(
          ErrorCode.UpstreamProtocol,
          `COM_INIT_DB on a warm session failed: ${e.message}`,
        );
      }
      if (p.payload[0] !== Header.OK)
        throw new ProxyError(
          ErrorCode.UpstreamProtocol,
          'unexpected answer to COM_INIT_DB on a warm session',
        );
      w.database = initDb;
      return { ok: p.payload, leftover: reader.detach() };
    } finally {
      reader.detach();
    }
  }

  /** Ends the pool's watch on a session from `reserve` / `take` (PrewarmPool.claim); after the OK. */
  claim(w: WarmMy): void {
    this.pool.claim(w);
  }

  /** Counts the hand-out of a reserved session (`take` counts its own). */
  handedOut(key: WarmKey<MyProfile>): void {
    this.pool.handedOut(key.user, key.database);
  }

  /**
   * A ready session of this client's own key that fits it, after the reserved one did not (the
   * greeting came from the most recently used key's session): the key of the client's user and
   * database, else the last known key of its user (learned keys are kept least recently used
   * first). Counted as a hand-out, or as a miss.
   */
  take(
    response: HandshakeResponse,
    database: string | undefined,
  ): { session: WarmMy; key: WarmKey<MyProfile>; initDb: string | undefined } | undefined {
    const mine = this.pool.knownKeys().filter((k) => k.user === response.user);
    const key = mine.find((k) => k.database === (response.database ?? '')) ?? mine.at(-1);
    if (!key) {
      this.pool.missed(response.user, '', 'no_key');
      return undefined;
    }
    const taken = this.pool.take(key.user, key.database, (w) => this.fit(w, key, response, database));
    return taken && { session: taken.session, key, initDb: taken.fit.initDb };
  }

  /**
   * Closes a session the client could not use; counts the miss if given (else the client's
   * outcome is counted by `take`).
   */
  spoilt(w: WarmMy, key: WarmKey<MyProfile>, reason: 'greeted' | 'apply_failed', miss?: PrewarmMiss): void {
    this.pool.spoilt(key.user, key.database, w, reason, miss);
  }

  /** Counts a client that found no session reserved for it. */
  missed(user: string): void {
    const k = this.pool.knownKeys().find((x) => x.user === user);
    this.pool.missed(user, k?.database ?? '', k ? 'empty' : 'no_key');
  }

  /**
   * Records a successful login of a client with `response`: its user's keys log in with its
   * profile from now on, and ready sessions it could not use are replaced.
   */
  learn(response: HandshakeResponse): void {
    const profile = profileOf(response);
    const stale = (w: WarmMy): boolean => !sameProfile(profile, w.profile);
    const keys = this.pool.knownKeys().filter((k) => k.user === response.user);
    if (keys.length === 0) this.pool.learn(response.user, '', profile, stale);
    for (const k of keys) this.pool.learn(k.user, k.database, profile, stale);
  }

  /** Logs one session in: greeting, SSLRequest, verify-full TLS, HandshakeResponse41 with the token. */
  private open(key: WarmKey<MyProfile>, signal: AbortSignal, log: Logger): Promise<WarmMy> {
    const l = this.listener;
    const user = l.upstream.user ?? key.user;
    const database = l.upstream.database ?? (key.database || undefined);
    const client: HandshakeResponse = { ...key.profile, user, authData: Buffer.alloc(0) };
    return loginWithLease(this.secrets, tokenRequestFor(l, user), log, async (lease) => {
      const up = await openUpstream(this.target, undefined, signal);
      try {
        const response = upstreamHandshakeResponse(client, up.greeting, user, database);
        const socket = await startTls(up, response, this.target, undefined, signal);
        const ok = await login(
          up,
          response,
          this.credentials(() => untilAborted(lease.secret, signal)),
        );
        const extra = up.leg.reader.detach();
        const scramble = makeScramble();
        const hello = {
          scramble,
          packet: greetingPacket(clientGreeting(up.greeting, scramble, this.clientTls)),
        };
        return { up, socket, response, profile: key.profile, database, ok, dead: extra.length > 0, hello };
      } catch (err) {
        up.leg.destroy();
        throw err;
      }
    });
  }
}
