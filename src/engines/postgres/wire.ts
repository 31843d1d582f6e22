/**
 * Postgres wire framing for both legs. The proxy acts as a server downstream (builders for
 * backend messages live here) and as a client upstream (pg-protocol serializes what it sends
 * and parses authentication requests).
 * Spec: https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
import { serialize } from 'pg-protocol';
import { Parser } from 'pg-protocol/dist/parser';
import type { SocketReader } from '../../net/reader';
import { ErrorCode, ProxyError } from '../../errors';

/** Major version 3 in the high 16 bits; minor in the low. */
export const PROTOCOL_3_0 = 196608;
export const PROTOCOL_3_2 = 196610;

/** Envoy and the server itself cap a startup packet at 10000 bytes. */
export const MAX_STARTUP_LENGTH = 10_000;
/** Largest handshake-phase message accepted from either side (SASL, errors, parameters). */
export const MAX_HANDSHAKE_MESSAGE = 64 * 1024;

/** Codes in the int32 after the length of a first ("startup-phase") packet. */
export const StartupCode = {
  /** 1234.5679 — https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-SSLREQUEST */
  SSLRequest: 80877103,
  /** 1234.5680 — GSSENCRequest; always answered 'N'. */
  GSSENCRequest: 80877104,
  /** 1234.5678 — CancelRequest, on a fresh connection, no auth. */
  CancelRequest: 80877102,
} as const;

/** Backend message type bytes used during startup. */
export const Backend = {
  Authentication: 0x52, // 'R'
  ErrorResponse: 0x45, // 'E'
  NoticeResponse: 0x4e, // 'N'
  ParameterStatus: 0x53, // 'S'
  BackendKeyData: 0x4b, // 'K'
  ReadyForQuery: 0x5a, // 'Z'
  NegotiateProtocolVersion: 0x76, // 'v'
} as const;

/** Frontend message type bytes the proxy reads during local auth. */
export const Frontend = {
  /** PasswordMessage, SASLInitialResponse and SASLResponse all use 'p'. */
  Password: 0x70, // 'p'
} as const;

/** The int32 in an Authentication ('R') message. */
export const AuthCode = {
  Ok: 0,
  CleartextPassword: 3,
  MD5Password: 5,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

/** TLS record type byte for a ClientHello: a PG17 client using sslnegotiation=direct sends it first. */
export const TLS_HANDSHAKE_BYTE = 0x16;

/** A first packet: length-prefixed, no type byte. */
export interface StartupPacket {
  code: number;
  /** Bytes after the code. */
  body: Buffer;
}

/** Reads one startup-phase packet, rejecting sizes outside 8..MAX_STARTUP_LENGTH before allocating. */
export async function readStartupPacket(reader: SocketReader): Promise<StartupPacket> {
  const head = await reader.read(8);
  const len = head.readInt32BE(0);
  if (len < 8 || len > MAX_STARTUP_LENGTH) {
    // PostgreSQL logs "invalid length of startup packet" and closes without a reply.
    throw new ProxyError(
      ErrorCode.ClientUnframed,
      `invalid startup packet length ${len} (allowed 8..${MAX_STARTUP_LENGTH}); closed without a reply`,
    );
  }
  const code = head.readInt32BE(4);
  const body = len > 8 ? await reader.read(len - 8) : Buffer.alloc(0);
  return { code, body };
}

/** Parses StartupMessage parameters: NUL-terminated name/value pairs, then a final NUL. Order is kept. */
export function parseStartupParams(body: Buffer): [string, string][] {
  const out: [string, string][] = [];
  let i = 0;
  const cstr = (): string => {
    const end = body.indexOf(0, i);
    if (end < 0)
      throw new ProxyError(ErrorCode.ClientProtocol, 'malformed startup packet: unterminated string');
    const s = body.toString('utf8', i, end);
    i = end + 1;
    return s;
  };
  for (;;) {
    if (i >= body.length)
      throw new ProxyError(ErrorCode.ClientProtocol, 'malformed startup packet: missing terminator');
    if (body[i] === 0) {
      if (i !== body.length - 1)
        throw new ProxyError(ErrorCode.ClientProtocol, 'malformed startup packet: data after terminator');
      return out;
    }
    const name = cstr();
    out.push([name, cstr()]);
  }
}

/**
 * Serializes a StartupMessage with the parameters exactly as given (pg-protocol's own
 * serializer adds client_encoding, which would change what the client asked for).
 */
export function buildStartup(version: number, params: [string, string][]): Buffer {
  const parts = params.flatMap(([k, v]) => [Buffer.from(k + '\0'), Buffer.from(v + '\0')]);
  const payload = Buffer.concat([...parts, Buffer.from([0])]);
  const head = Buffer.alloc(8);
  head.writeInt32BE(8 + payload.length, 0);
  head.writeInt32BE(version, 4);
  return Buffer.concat([head, payload]);
}

/** SSLRequest, the first thing sent to the upstream. */
export function sslRequest(): Buffer {
  return serialize.requestSsl();
}

/** CancelRequest with a key of any length (3.0: 4 bytes, 3.2: up to 256). */
export function buildCancel(pid: number, key: Buffer): Buffer {
  const b = Buffer.alloc(12 + key.length);
  b.writeInt32BE(b.length, 0);
  b.writeInt32BE(StartupCode.CancelRequest, 4);
  b.writeInt32BE(pid, 8);
  key.copy(b, 12);
  return b;
}

/** A typed message: one type byte, int32 length (including itself), body. */
export interface Message {
  type: number;
  body: Buffer;
  /** The whole frame, for verbatim relay. */
  raw: Buffer;
}

/**
 * Reads one typed message, checking its length before reading the body. `code` names who is at
 * fault for a bad length (the client by default; upstream readers pass UpstreamProtocol).
 */
export async function readMessage(
  reader: SocketReader,
  maxLength = MAX_HANDSHAKE_MESSAGE,
  code: ErrorCode = ErrorCode.ClientProtocol,
): Promise<Message> {
  const head = await reader.read(5);
  const type = head[0] as number;
  const len = head.readInt32BE(1);
  if (len < 4 || len > maxLength) {
    throw new ProxyError(code, `invalid message length ${len} for type '${String.fromCharCode(type)}'`);
  }
  const body = len > 4 ? await reader.read(len - 4) : Buffer.alloc(0);
  return { type, body, raw: Buffer.concat([head, body]) };
}

/** Builds a typed message. */
export function message(type: number, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head[0] = type;
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

/** Authentication request ('R') with an optional payload after the code. */
export function authMessage(code: number, extra: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(code, 0);
  return message(Backend.Authentication, Buffer.concat([b, extra]));
}

/**
 * ErrorResponse / NoticeResponse field codes.
 * https://www.postgresql.org/docs/current/protocol-error-fields.html
 */
export const Field = {
  Severity: 'S',
  SeverityNonLocalized: 'V',
  Code: 'C',
  Message: 'M',
  Detail: 'D',
  Hint: 'H',
} as const;

/** Serializes an ErrorResponse from fields in insertion order. */
export function errorResponse(fields: Map<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of fields) parts.push(Buffer.from(k + v + '\0', 'utf8'));
  parts.push(Buffer.from([0]));
  return message(Backend.ErrorResponse, Buffer.concat(parts));
}

/** A FATAL error built by the proxy. */
export function fatal(sqlState: string, msg: string, hint?: string): Buffer {
  const f = new Map<string, string>([
    [Field.Severity, 'FATAL'],
    [Field.SeverityNonLocalized, 'FATAL'],
    [Field.Code, sqlState],
    [Field.Message, msg],
  ]);
  if (hint) f.set(Field.Hint, hint);
  return errorResponse(f);
}

/** Parses ErrorResponse / NoticeResponse fields, keeping order and unknown codes. */
export function parseErrorFields(body: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const code = String.fromCharCode(body[i] as number);
    const end = body.indexOf(0, i + 1);
    if (end < 0) break;
    out.set(code, body.toString('utf8', i + 1, end));
    i = end + 1;
  }
  return out;
}

/** BackendKeyData: pid and a secret key of 4 (3.0) to 256 (3.2) bytes. */
export function parseBackendKey(body: Buffer): { pid: number; key: Buffer } {
  if (body.length < 8 || body.length > 4 + 256) {
    throw new ProxyError(ErrorCode.UpstreamProtocol, `BackendKeyData of ${body.length} bytes`);
  }
  return { pid: body.readInt32BE(0), key: Buffer.from(body.subarray(4)) };
}

/** The upstream's authentication request, parsed by pg-protocol. */
export type AuthRequest =
  | { name: 'authenticationOk' }
  | { name: 'authenticationCleartextPassword' }
  | { name: 'authenticationMD5Password'; salt: Buffer }
  | { name: 'authenticationSASL'; mechanisms: string[] }
  | { name: 'authenticationSASLContinue'; data: string }
  | { name: 'authenticationSASLFinal'; data: string }
  | { name: 'other'; code: number };

/** Parses an 'R' frame with pg-protocol; codes it does not know (GSS, SSPI) come back as `other`. */
export function parseAuth(raw: Buffer): AuthRequest {
  if (raw.length < 9)
    throw new ProxyError(ErrorCode.UpstreamProtocol, `authentication message of ${raw.length} bytes`);
  const code = raw.readInt32BE(5);
  if (!Object.values(AuthCode).includes(code as never)) return { name: 'other', code };
  // pg-protocol trusts the code; check the payload size it implies (Ok/Cleartext: none, MD5: a 4-byte salt).
  const extra = raw.length - 9;
  const expected =
    code === AuthCode.Ok || code === AuthCode.CleartextPassword ? 0 : code === AuthCode.MD5Password ? 4 : -1;
  if (expected >= 0 && extra !== expected) {
    throw new ProxyError(
      ErrorCode.UpstreamProtocol,
      `authentication message code ${code} with ${extra} payload bytes (expected ${expected})`,
    );
  }
  let parsed: AuthRequest | undefined;
  new Parser().parse(raw, (msg) => (parsed = msg as unknown as AuthRequest));
  if (!parsed)
    throw new ProxyError(ErrorCode.UpstreamProtocol, `unparseable authentication message (code ${code})`);
  return parsed;
}

/** PasswordMessage (cleartext or MD5 response). */
export function passwordMessage(secret: string): Buffer {
  return serialize.password(secret);
}

/** SASLInitialResponse. */
export function saslInitial(mechanism: string, data: string): Buffer {
  return serialize.sendSASLInitialResponseMessage(mechanism, data);
}

/** SASLResponse. */
export function saslResponse(data: string): Buffer {
  return serialize.sendSCRAMClientFinalMessage(data);
}

/** ParameterStatus is not needed by the proxy; ReadyForQuery 'I' is, for local tests of framing. */
export function readyForQuery(status = 'I'): Buffer {
  return message(Backend.ReadyForQuery, Buffer.from(status));
}
