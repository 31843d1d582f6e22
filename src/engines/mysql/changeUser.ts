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
 * with the proxy's hint). A refused change leaves the session as the old user, as MariaDB does
 * (the client knows from the ERR); if the server dropped its side the splice ends with it. A
 * broken exchange (malformed packets, a lost connection) closes the session.
 *
 * CommandPhase is the engine's object for the spliced part of one session: it builds the
 * CommandGate and answers its COM_CHANGE_USER interceptions with what it knows of the session.
 * https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_change_user.html
 */
import type { Duplex } from 'node:stream';
import { asProxyError, ErrorCode, logError, ProxyError } from '../../errors';
import type { ConnectionLogger } from '../../log';
import type { SessionInfo } from '../../proxy/engine';
import { loginWithLease } from '../../proxy/handshake';
import { checkNameLengths, verifyLocalPassword } from './downstream';
import { CommandGate, type ExchangeOutcome } from './gate';
import { authExchange, firstAuth, type PacketIO } from './upstream';
import type { MysqlEngine } from './index';
import {
  buildChangeUser,
  buildErr,
  type Greeting,
  MalformedPacket,
  PacketTooLarge,
  parseChangeUser,
} from './wire';
import { BufferLimitError, PeerClosedError } from '../../errors';

/** What the login settled that the command phase needs. */
export interface CommandPhaseFacts {
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
  /** Both legs switched to zlib-compressed framing after the OK. */
  compressed: boolean;
}

/** The spliced part of one MySQL session: the gate over the upstream and COM_CHANGE_USER. */
export class CommandPhase {
  constructor(
    private readonly engine: MysqlEngine,
    private readonly facts: CommandPhaseFacts,
    /** The session's; updated when the user changes. */
    private readonly info: SessionInfo,
    private readonly log: ConnectionLogger,
  ) {}

  /** The `upstream` Duplex for the splice: the gate over the logged-in TLS socket, which it owns. */
  gate(upstream: Duplex): CommandGate {
    return new CommandGate(
      upstream,
      this.facts.compressed,
      (client, server) => this.changeUser(client, server),
      (err) => this.log.warn({ err: logError(err) }, 'command phase: closing the session'),
    );
  }

  /** Runs one intercepted COM_CHANGE_USER: `client` starts with that packet. */
  async changeUser(client: PacketIO, server: PacketIO): Promise<ExchangeOutcome> {
    const { engine, facts } = this;
    const l = engine.options.listener;
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
      const req = parseChangeUser(await fromClient(), facts.clientCaps);
      checkNameLengths(req.user, req.database);
      if (engine.users) {
        await verifyLocalPassword(
          { send: toClient, read: fromClient },
          { user: req.user, plugin: req.authPlugin, authData: req.authData, capabilities: facts.clientCaps },
          engine.users,
          facts.clientScramble,
          facts.secureClient,
        );
      }
      const newUser = (upstreamUser = l.upstream.user ?? req.user);
      const database = l.upstream.database ?? req.database;
      const ok = await loginWithLease(
        engine.options.secrets,
        engine.tokenRequest(newUser),
        this.log,
        async (lease) => {
          const creds = engine.credentials(() => lease.secret);
          const first = await firstAuth(facts.serverGreeting, creds, false);
          server.write(
            0,
            buildChangeUser(
              {
                user: newUser,
                authData: first.data,
                database,
                charset: req.charset ?? facts.charset,
                authPlugin: first.plugin,
                ...(req.attributes ? { attributes: req.attributes } : {}),
              },
              facts.upstreamCaps,
            ),
          );
          return authExchange(server, first.plugin, creds);
        },
        false,
      );
      toClient(ok);
      this.log.info(
        { newUser: req.user, upstreamUser, newDatabase: database },
        'COM_CHANGE_USER: logged in as the new user',
      );
      this.info.user = req.user;
      this.info.upstreamUser = upstreamUser;
      this.info.database = database;
      return 'continue';
    } catch (err) {
      const e = asExchangeError(err);
      this.log.warn({ upstreamUser, err: logError(e) }, 'COM_CHANGE_USER failed');
      try {
        toClient(buildErr(engine.errorFor(e, upstreamUser)));
      } catch {
        // the client is gone
      }
      // Refused (by the server, or by the local password check before the server was asked): the
      // session stays the old user's, as MariaDB keeps it; a server that dropped its side ends the
      // splice by itself. Anything else (a broken exchange) closes the session.
      const refused = e.serverError !== undefined || e.code === ErrorCode.ClientAuth;
      return refused ? 'continue' : 'close';
    }
  }
}

/** A peer that closed mid-exchange means the connection is lost; a malformed packet is the client's. */
function asExchangeError(err: unknown): ProxyError {
  if (err instanceof ProxyError) return err;
  if (err instanceof PeerClosedError || err instanceof BufferLimitError) {
    return new ProxyError(
      ErrorCode.UpstreamUnreachable,
      `connection lost during COM_CHANGE_USER: ${err.message}`,
      {
        cause: err,
      },
    );
  }
  if (err instanceof MalformedPacket || err instanceof PacketTooLarge) {
    return new ProxyError(ErrorCode.ClientProtocol, `client sent a ${err.message}`, { cause: err });
  }
  return asProxyError(err);
}
