import type net from 'node:net';
import type tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { createHash, timingSafeEqual } from 'node:crypto';
import { SocketReader } from '../../net/reader';
import { acceptTls } from '../../net/localTls';
import { ErrorCode, ProxyError, ScramError } from '../../errors';
import { makeVerifier, SCRAM_MECHANISM, ScramServer, type ScramVerifier } from './scram';
import {
  AuthCode,
  authMessage,
  Frontend,
  MAX_STARTUP_LENGTH,
  parseStartupParams,
  readMessage,
  readStartupPacket,
  StartupCode,
  TLS_HANDSHAKE_BYTE,
} from './wire';

/** ALPN name PG17 clients require for direct TLS. */
export const PG_ALPN = 'postgresql';

/** What the client asked for, once its StartupMessage is read. */
export interface ClientStartup {
  kind: 'startup';
  /** The current downstream socket (TLS-wrapped when the client upgraded). */
  socket: Duplex;
  reader: SocketReader;
  version: number;
  params: [string, string][];
  tls: boolean;
}

/** A CancelRequest: no session follows. */
export interface ClientCancel {
  kind: 'cancel';
  pid: number;
  key: Buffer;
}

/**
 * Reads the client's first packets: SSLRequest (answered 'S' and upgraded, or 'N'),
 * GSSENCRequest ('N'), direct TLS (PG17 sslnegotiation=direct), CancelRequest, and finally the
 * StartupMessage. `onSocket` is told each time the downstream socket changes (TLS upgrade) so
 * errors can be sent on the current one. Every wait ends when `signal` aborts.
 */
export async function readClientStartup(
  client: net.Socket,
  secureContext: tls.SecureContext | undefined,
  onSocket: (s: Duplex) => void,
  signal?: AbortSignal,
): Promise<ClientStartup | ClientCancel> {
  let socket: Duplex = client;
  let reader = new SocketReader(client, MAX_STARTUP_LENGTH * 2, 'client', signal);
  let isTls = false;

  const upgrade = async (alreadyRead: Buffer): Promise<void> => {
    const s = await acceptTls(client, secureContext as tls.SecureContext, alreadyRead, [PG_ALPN], signal);
    socket = s;
    isTls = true;
    onSocket(s);
    reader = new SocketReader(s, MAX_STARTUP_LENGTH * 2, 'client', signal);
  };

  if ((await reader.peekByte()) === TLS_HANDSHAKE_BYTE) {
    if (!secureContext) {
      // The client speaks TLS and cannot read a plaintext ErrorResponse; just close.
      client.destroy();
      throw new ProxyError(
        ErrorCode.ClientProtocol,
        'client started TLS directly (sslnegotiation=direct) but client.tls is off',
      );
    }
    await upgrade(reader.detach());
    const alpn = (socket as tls.TLSSocket).alpnProtocol;
    if (alpn !== PG_ALPN) {
      throw new ProxyError(
        ErrorCode.ClientProtocol,
        `direct TLS requires ALPN "${PG_ALPN}" (client offered ${alpn || 'none'})`,
      );
    }
  }

  for (let round = 0; round < 4; round++) {
    const pkt = await readStartupPacket(reader);
    switch (pkt.code) {
      case StartupCode.SSLRequest:
      case StartupCode.GSSENCRequest: {
        if (pkt.body.length !== 0)
          throw new ProxyError(ErrorCode.ClientProtocol, 'malformed SSLRequest/GSSENCRequest');
        if (reader.available > 0) {
          // Bytes sent before our answer would be read as if encrypted (CVE-2021-23222 class).
          throw new ProxyError(
            ErrorCode.ClientProtocol,
            'client sent data before the answer to its encryption request',
          );
        }
        const wantTls = pkt.code === StartupCode.SSLRequest && !isTls && secureContext !== undefined;
        socket.write(wantTls ? 'S' : 'N');
        if (wantTls) await upgrade(reader.detach());
        break;
      }
      case StartupCode.CancelRequest:
        if (pkt.body.length < 8) throw new ProxyError(ErrorCode.ClientProtocol, 'malformed CancelRequest');
        return { kind: 'cancel', pid: pkt.body.readInt32BE(0), key: Buffer.from(pkt.body.subarray(4)) };
      default: {
        const major = pkt.code >>> 16;
        if (major !== 3) {
          throw new ProxyError(
            ErrorCode.ClientProtocol,
            `unsupported frontend protocol ${major}.${pkt.code & 0xffff}: the proxy supports 3.x`,
          );
        }
        return {
          kind: 'startup',
          socket,
          reader,
          version: pkt.code,
          params: parseStartupParams(pkt.body),
          tls: isTls,
        };
      }
    }
  }
  throw new ProxyError(ErrorCode.ClientProtocol, 'too many encryption requests before the startup message');
}

/** Configured local users, with derived SCRAM verifiers (passwords are not kept). */
export class LocalUsers {
  private readonly users = new Map<string, { verifier: ScramVerifier; digest: Buffer }>();
  /** A verifier for unknown users, so the exchange looks the same and names cannot be probed. */
  private readonly decoy = makeVerifier(Math.random().toString(36));

  constructor(users: { name: string; password: string }[]) {
    for (const u of users)
      this.users.set(u.name, { verifier: makeVerifier(u.password), digest: sha256(u.password) });
  }

  verifierFor(user: string): { verifier: ScramVerifier; known: boolean } {
    const u = this.users.get(user);
    return u ? { verifier: u.verifier, known: true } : { verifier: this.decoy, known: false };
  }

  checkCleartext(user: string, password: string): boolean {
    const u = this.users.get(user);
    return u !== undefined && timingSafeEqual(u.digest, sha256(password));
  }
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/**
 * Authenticates the client against local users: SCRAM-SHA-256, or cleartext when configured and
 * the connection is TLS. Leaves the client waiting for AuthenticationOk, which comes from the
 * upstream only once it has accepted the login.
 */
export async function authenticateClient(
  s: ClientStartup,
  users: LocalUsers,
  method: 'scram-sha-256' | 'password',
): Promise<void> {
  const user = s.params.find(([k]) => k === 'user')?.[1] ?? '';
  const failed = (): ProxyError =>
    new ProxyError(ErrorCode.ClientAuth, `password authentication failed for user "${user}"`, {
      hint: 'the client must use a user and password from client.users in the proxy config',
    });
  if (method === 'password' && s.tls) {
    s.socket.write(authMessage(AuthCode.CleartextPassword));
    const msg = await readMessage(s.reader, 1024 + 5);
    if (msg.type !== Frontend.Password) throw failed();
    const password = msg.body.toString('utf8').replace(/\0$/, '');
    if (!users.checkCleartext(user, password)) throw failed();
    return;
  }
  const { verifier, known } = users.verifierFor(user);
  const server = new ScramServer(verifier);
  s.socket.write(authMessage(AuthCode.SASL, Buffer.from(`${SCRAM_MECHANISM}\0\0`)));
  const init = await readMessage(s.reader, 4096);
  if (init.type !== Frontend.Password) throw failed();
  const mechEnd = init.body.indexOf(0);
  const mechanism = init.body.toString('utf8', 0, Math.max(mechEnd, 0));
  if (mechEnd < 0 || mechanism !== SCRAM_MECHANISM || init.body.length < mechEnd + 5) {
    throw new ProxyError(
      ErrorCode.ClientProtocol,
      `client chose SASL mechanism "${mechanism}"; only ${SCRAM_MECHANISM} is offered`,
    );
  }
  const len = init.body.readInt32BE(mechEnd + 1);
  const clientFirst = init.body.toString('utf8', mechEnd + 5, mechEnd + 5 + Math.max(len, 0));
  let serverFinal: string;
  try {
    s.socket.write(authMessage(AuthCode.SASLContinue, Buffer.from(server.first(clientFirst))));
    const resp = await readMessage(s.reader, 4096);
    if (resp.type !== Frontend.Password) throw failed();
    serverFinal = server.final(resp.body.toString('utf8'));
  } catch (err) {
    if (err instanceof ScramError && err.kind === 'protocol')
      throw new ProxyError(ErrorCode.ClientProtocol, `SCRAM exchange failed: ${err.message}`);
    if (err instanceof ScramError || (err instanceof ProxyError && err.code === ErrorCode.ClientAuth))
      throw failed();
    throw err;
  }
  if (!known) throw failed();
  s.socket.write(authMessage(AuthCode.SASLFinal, Buffer.from(serverFinal)));
}
