/**
 * COM_CHANGE_USER after login, handled by the proxy so the new user logs in upstream with a
 * fresh IAM token, exactly like a new connection would:
 *
 *   client -> proxy   COM_CHANGE_USER (user, auth response to the proxy's greeting scramble, db, charset, attrs)
 *   proxy             client.auth password: verify it (AuthSwitchRequest to mysql_native_password if needed)
 *   proxy -> server   COM_CHANGE_USER (mapped user, empty auth response, mysql_native_password, db, charset, attrs)
 *   server -> proxy   AuthSwitchRequest mysql_clear_password   (COM_CHANGE_USER carries at most 255 bytes of
 *   proxy -> server   token + NUL                               auth data, so the token goes in the switch answer)
 *   server -> proxy   OK | ERR
 *   proxy -> client   that OK or ERR, with the client's sequence id
 *
 * On failure the client gets the ERR (the server's own errno and message for a refused login,
 * with the proxy's hint) and the session is closed: the client must not keep running as the
 * old user while believing the change failed cleanly, and a server may have dropped its side.
 * https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_change_user.html
 */
import { asProxyError, ErrorCode, ProxyError } from '../../errors';
import type { Logger } from '../../log';
import type { SessionInfo } from '../../proxy/engine';
import { LOCAL_PLUGINS, type LocalUsers, makeScramble, nativeToken, sha2Token } from './auth';
import { accessDenied } from './downstream';
import type { ExchangeOutcome } from './gate';
import { authExchange, type Credentials, type PacketIO } from './upstream';
import {
  AuthPlugin,
  buildAuthMoreData,
  buildAuthSwitch,
  buildChangeUser,
  buildErr,
  Cap,
  type ErrFields,
  type Greeting,
  MalformedPacket,
  parseChangeUser,
  Sha2Status,
} from './wire';

/** What the exchange needs to know about the session. */
export interface ChangeUserContext {
  mode: 'iam' | 'password';
  /** client.auth is password: check the new user locally first. */
  users: LocalUsers | undefined;
  /** Fixed upstream user / database from the config, if any. */
  fixedUser: string | undefined;
  fixedDatabase: string | undefined;
  /** Capabilities the client negotiated (its COM_CHANGE_USER is laid out by them). */
  clientCaps: number;
  /** Capabilities of the upstream leg. */
  upstreamCaps: number;
  /** The scramble the proxy's greeting carried; clients answer COM_CHANGE_USER with it. */
  clientScramble: Buffer;
  /** The server's greeting (its scramble answers COM_CHANGE_USER in auth.mode: password). */
  serverGreeting: Greeting;
  /** Charset of the login, used when the client's COM_CHANGE_USER has none. */
  charset: number;
  /** The client connection is TLS or a unix socket (cleartext passwords allowed). */
  secureClient: boolean;
  credentialsFor(upstreamUser: string): Credentials;
  /** The server refused this user's token: forget it. */
  invalidate(upstreamUser: string): void;
  errorFor(err: ProxyError): ErrFields;
  info: SessionInfo;
  log: Logger;
}

export async function handleChangeUser(
  ctx: ChangeUserContext,
  client: PacketIO,
  server: PacketIO,
): Promise<ExchangeOutcome> {
  let seq = 0; // last sequence id on the client side, either direction
  const toClient = (payload: Buffer): void => {
    seq = (seq + 1) & 0xff;
    client.write(seq, payload);
  };
  const fromClient = async (): Promise<Buffer> => {
    const p = await client.read();
    seq = p.seq;
    return p.payload;
  };
  let upstreamUser: string | undefined;
  try {
    let req;
    try {
      req = parseChangeUser(await fromClient(), ctx.clientCaps);
    } catch (err) {
      if (err instanceof MalformedPacket)
        throw new ProxyError(ErrorCode.ClientProtocol, `client sent a ${err.message}`);
      throw err;
    }
    if (ctx.users)
      await verifyLocal(ctx, ctx.users, req.user, req.authPlugin, req.authData, toClient, fromClient);
    upstreamUser = ctx.fixedUser ?? req.user;
    const database = ctx.fixedDatabase ?? req.database;
    const creds = ctx.credentialsFor(upstreamUser);
    let plugin: string = AuthPlugin.NATIVE;
    let authData: Buffer = Buffer.alloc(0);
    if (ctx.mode === 'password') {
      const secret = await creds.secret();
      if (ctx.serverGreeting.authPlugin === AuthPlugin.CACHING_SHA2) {
        plugin = AuthPlugin.CACHING_SHA2;
        authData = sha2Token(secret, ctx.serverGreeting.scramble);
      } else authData = nativeToken(secret, ctx.serverGreeting.scramble);
    }
    server.write(
      0,
      buildChangeUser(
        {
          user: upstreamUser,
          authData,
          database,
          charset: req.charset ?? ctx.charset,
          authPlugin: plugin,
          ...(req.attributes ? { attributes: req.attributes } : {}),
        },
        ctx.upstreamCaps,
      ),
    );
    const ok = await authExchange(server, plugin, creds);
    toClient(ok);
    ctx.log.info({ user: req.user, upstreamUser, database }, 'COM_CHANGE_USER: logged in as the new user');
    ctx.info.user = req.user;
    ctx.info.upstreamUser = upstreamUser;
    ctx.info.database = database;
    return 'continue';
  } catch (err) {
    const e = err instanceof ProxyError ? err : asUnexpected(err);
    if (e.code === ErrorCode.UpstreamAuth && e.serverError && upstreamUser !== undefined)
      ctx.invalidate(upstreamUser);
    ctx.log.warn({ code: e.code, upstreamUser }, `COM_CHANGE_USER failed: ${e.message}`);
    try {
      toClient(buildErr(ctx.errorFor(e)));
    } catch {
      // the client is gone
    }
    return 'close';
  }
}

/** A peer that closed mid-exchange reads as a PeerClosedError; anything else is a bug. */
function asUnexpected(err: unknown): ProxyError {
  if (err instanceof Error && (err.name === 'PeerClosedError' || err.name === 'BufferLimitError')) {
    return new ProxyError(
      ErrorCode.UpstreamUnreachable,
      `connection lost during COM_CHANGE_USER: ${err.message}`,
      { cause: err },
    );
  }
  if (err instanceof Error && (err.name === 'MalformedPacket' || err.name === 'PacketTooLarge')) {
    return new ProxyError(ErrorCode.ClientProtocol, `COM_CHANGE_USER exchange: ${err.message}`, {
      cause: err,
    });
  }
  return asProxyError(err);
}

async function verifyLocal(
  ctx: ChangeUserContext,
  users: LocalUsers,
  user: string,
  clientPlugin: string | undefined,
  authData: Buffer,
  toClient: (p: Buffer) => void,
  fromClient: () => Promise<Buffer>,
): Promise<void> {
  let plugin = clientPlugin ?? AuthPlugin.NATIVE;
  let data = authData;
  let challenge = ctx.clientScramble;
  if (!LOCAL_PLUGINS.includes(plugin) || (plugin === AuthPlugin.CLEAR && !ctx.secureClient)) {
    if ((ctx.clientCaps & Cap.PLUGIN_AUTH) === 0) throw accessDenied(user, data.length > 0);
    challenge = makeScramble();
    toClient(buildAuthSwitch(AuthPlugin.NATIVE, Buffer.concat([challenge, Buffer.from([0])])));
    data = await fromClient();
    plugin = AuthPlugin.NATIVE;
  }
  if (!users.verify(user, plugin, data, challenge, ctx.secureClient))
    throw accessDenied(user, data.length > 0);
  if (plugin === AuthPlugin.CACHING_SHA2)
    toClient(buildAuthMoreData(Buffer.from([Sha2Status.FAST_AUTH_SUCCESS])));
}
