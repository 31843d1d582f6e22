/**
 * MySQL / MariaDB wire format for both legs: packet framing (plain and compressed), the
 * connection-phase packets the proxy reads and writes, and the protocol's constants.
 * Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase.html
 * MariaDB: https://mariadb.com/kb/en/connection/
 *
 * Every parser here works on one complete packet payload and throws MalformedPacket when a field
 * runs past the end; callers turn that into the ProxyError of their side (client or server).
 */
import { inflateSync } from 'node:zlib';

/**
 * Capability flags, low 32 bits.
 * https://dev.mysql.com/doc/dev/mysql-server/latest/group__group__cs__capabilities__flags.html
 */
export const Cap = {
  /** 0x00000001 CLIENT_LONG_PASSWORD; MariaDB calls it CLIENT_MYSQL: unset = "read my extended capabilities". */
  LONG_PASSWORD: 0x00000001,
  /** 0x00000002 affected rows = found rows. */
  FOUND_ROWS: 0x00000002,
  /** 0x00000004 all column flags. */
  LONG_FLAG: 0x00000004,
  /** 0x00000008 a database name follows in HandshakeResponse41. */
  CONNECT_WITH_DB: 0x00000008,
  NO_SCHEMA: 0x00000010,
  /** 0x00000020 zlib compressed protocol after the OK. */
  COMPRESS: 0x00000020,
  ODBC: 0x00000040,
  /** 0x00000080 LOAD DATA LOCAL INFILE. */
  LOCAL_FILES: 0x00000080,
  IGNORE_SPACE: 0x00000100,
  /** 0x00000200 the 4.1 protocol; the proxy refuses clients without it. */
  PROTOCOL_41: 0x00000200,
  INTERACTIVE: 0x00000400,
  /** 0x00000800 TLS after an SSLRequest. */
  SSL: 0x00000800,
  IGNORE_SIGPIPE: 0x00001000,
  TRANSACTIONS: 0x00002000,
  RESERVED: 0x00004000,
  /** 0x00008000 CLIENT_RESERVED2 / SECURE_CONNECTION: length-prefixed 20-byte scramble. */
  SECURE_CONNECTION: 0x00008000,
  MULTI_STATEMENTS: 0x00010000,
  MULTI_RESULTS: 0x00020000,
  PS_MULTI_RESULTS: 0x00040000,
  /** 0x00080000 auth plugin names in greeting and response; AuthSwitchRequest. */
  PLUGIN_AUTH: 0x00080000,
  /** 0x00100000 connection attributes in HandshakeResponse41 and COM_CHANGE_USER. */
  CONNECT_ATTRS: 0x00100000,
  /** 0x00200000 auth data as a length-encoded string (needed for tokens over 250 bytes). */
  PLUGIN_AUTH_LENENC_CLIENT_DATA: 0x00200000,
  CAN_HANDLE_EXPIRED_PASSWORDS: 0x00400000,
  /** 0x00800000 session state in OK packets. */
  SESSION_TRACK: 0x00800000,
  /** 0x01000000 OK instead of EOF after result sets. */
  DEPRECATE_EOF: 0x01000000,
  OPTIONAL_RESULTSET_METADATA: 0x02000000,
  /** 0x04000000 zstd compression (MySQL 8.0.18+); the proxy strips it. */
  ZSTD_COMPRESSION_ALGORITHM: 0x04000000,
  QUERY_ATTRIBUTES: 0x08000000,
  /** 0x10000000 AuthNextFactor exchanges (MySQL 8.0.27+); the proxy strips it. */
  MULTI_FACTOR_AUTHENTICATION: 0x10000000,
  CAPABILITY_EXTENSION: 0x20000000,
  /** 0x40000000 client-side only. */
  SSL_VERIFY_SERVER_CERT: 0x40000000,
  /** 0x80000000 client-side only. */
  REMEMBER_OPTIONS: 0x80000000,
} as const;

/**
 * MariaDB extended capabilities (bits 32..63), carried in the last 4 of the greeting's reserved
 * bytes and of the response's filler when CLIENT_MYSQL (LONG_PASSWORD) is unset.
 * https://mariadb.com/kb/en/connection/#capabilities
 */
export const MariaDbCap = {
  /** bit 32: progress reports (ERR 0xFFFF packets mid-command). */
  PROGRESS: 0x01,
  /** bit 33: COM_MULTI. */
  COM_MULTI: 0x02,
  /** bit 34: COM_STMT_BULK_EXECUTE. */
  STMT_BULK_OPERATIONS: 0x04,
  /** bit 35: extended type info in column definitions. */
  EXTENDED_METADATA: 0x08,
  /** bit 36: skip unchanged result-set metadata. */
  CACHE_METADATA: 0x10,
  /** bit 37: bulk unit results. */
  BULK_UNIT_RESULTS: 0x20,
} as const;

/** First payload byte of server packets in the connection phase. */
export const Header = {
  /** 0x00 OK_Packet. https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_ok_packet.html */
  OK: 0x00,
  /** 0x01 AuthMoreData: plugin-specific continuation (caching_sha2 fast-auth result, RSA key). */
  AUTH_MORE_DATA: 0x01,
  /** 0x02 AuthNextFactor (multi-factor authentication). */
  AUTH_NEXT_FACTOR: 0x02,
  /** 0x0a protocol version 10: Handshake v10. */
  HANDSHAKE_V10: 0x0a,
  /** 0xfe AuthSwitchRequest (or, 1 byte long, the pre-4.1 "old password" request). */
  AUTH_SWITCH: 0xfe,
  /** 0xff ERR_Packet. https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_err_packet.html */
  ERR: 0xff,
} as const;

/** Command bytes the proxy looks at in the command phase. https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html */
export const Command = {
  /** 0x01 COM_QUIT. */
  QUIT: 0x01,
  /** 0x03 COM_QUERY. */
  QUERY: 0x03,
  /** 0x11 COM_CHANGE_USER: re-authentication, intercepted by the proxy. */
  CHANGE_USER: 0x11,
  /** 0x1f COM_RESET_CONNECTION: passes through. */
  RESET_CONNECTION: 0x1f,
} as const;

/** Authentication plugin names. https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_authentication_methods.html */
export const AuthPlugin = {
  /** SHA1 challenge-response; what the proxy offers local clients. */
  NATIVE: 'mysql_native_password',
  /** SHA256 challenge-response with AuthMoreData fast/full paths (MySQL 8 default). */
  CACHING_SHA2: 'caching_sha2_password',
  /** The password in clear + NUL; RDS IAM (AWSAuthenticationPlugin) and MariaDB PAM with pam_use_cleartext_plugin. */
  CLEAR: 'mysql_clear_password',
  /** MariaDB PAM without pam_use_cleartext_plugin; not answered by the proxy. */
  DIALOG: 'dialog',
} as const;

/** caching_sha2_password AuthMoreData status bytes. */
export const Sha2Status = {
  /** 0x03 fast_auth_success: an OK follows. */
  FAST_AUTH_SUCCESS: 0x03,
  /** 0x04 perform_full_authentication: send the password (clear over TLS). */
  PERFORM_FULL_AUTHENTICATION: 0x04,
} as const;

/**
 * Server error numbers the proxy sends or recognises (server range only: clients reject 2xxx
 * codes from a server as malformed).
 */
export const ErrNo = {
  /** 1040 ER_CON_COUNT_ERROR, SQLSTATE 08004: Too many connections. */
  CON_COUNT: 1040,
  /** 1043 ER_HANDSHAKE_ERROR, SQLSTATE 08S01: Bad handshake. */
  HANDSHAKE: 1043,
  /** 1045 ER_ACCESS_DENIED_ERROR, SQLSTATE 28000. */
  ACCESS_DENIED: 1045,
  /** 1049 ER_BAD_DB_ERROR, SQLSTATE 42000: Unknown database (the login itself was accepted). */
  BAD_DB: 1049,
  /** 1102 ER_WRONG_DB_NAME, SQLSTATE 42000: Incorrect database name. */
  WRONG_DB_NAME: 1102,
  /** 1470 ER_WRONG_STRING_LENGTH, SQLSTATE HY000: String is too long for user name. */
  WRONG_STRING_LENGTH: 1470,
  /** 1053 ER_SERVER_SHUTDOWN, SQLSTATE 08S01. */
  SERVER_SHUTDOWN: 1053,
  /** 1153 ER_NET_PACKET_TOO_LARGE, SQLSTATE 08S01. */
  NET_PACKET_TOO_LARGE: 1153,
  /** 1159 ER_NET_READ_INTERRUPTED, SQLSTATE 08S01: Got timeout reading communication packets. */
  NET_READ_INTERRUPTED: 1159,
  /** 1251 ER_NOT_SUPPORTED_AUTH_MODE, SQLSTATE 08004: client too old for the server's protocol. */
  NOT_SUPPORTED_AUTH_MODE: 1251,
  /** 1429 ER_CONNECT_TO_FOREIGN_DATA_SOURCE: unable to connect; sent with SQLSTATE 08S01 (like client error 2003). */
  CONNECT_TO_FOREIGN_DATA_SOURCE: 1429,
  /** 1815 ER_INTERNAL_ERROR, SQLSTATE HY000. */
  INTERNAL: 1815,
} as const;

/** 4-byte packet header: int<3> payload length, int<1> sequence id. */
export const HEADER_LENGTH = 4;
/** 7-byte compressed header: int<3> compressed length, int<1> compressed sequence id, int<3> length before compression. */
export const COMPRESSED_HEADER_LENGTH = 7;
/** Largest payload of one packet; a payload this long continues in the next packet. */
export const MAX_PAYLOAD = 0xffffff;
/** Largest connection-phase packet accepted from either side: a 4 KB token and 64 KB of attributes fit. */
export const MAX_HANDSHAKE_PACKET = 128 * 1024;
/** Length of the scramble (auth-plugin-data) the proxy generates. */
export const SCRAMBLE_LENGTH = 20;
/** SSLRequest payload: capabilities, max packet, charset, 23 bytes filler. */
export const SSL_REQUEST_LENGTH = 32;

/** Thrown by parsers for a packet that ends early or has an impossible value. */
export class MalformedPacket extends Error {
  constructor(what: string) {
    super(`malformed ${what}`);
    this.name = 'MalformedPacket';
  }
}

/** One packet: its sequence id and payload. */
export interface Packet {
  seq: number;
  payload: Buffer;
}

/** Anything that hands out exact byte counts (SocketReader, the gate's feeds). */
export interface ByteSource {
  read(n: number): Promise<Buffer>;
}

/** Frames one payload (< 16 MB) as a packet. */
export function packet(seq: number, payload: Buffer): Buffer {
  if (payload.length >= MAX_PAYLOAD) throw new RangeError('connection-phase packets are under 16 MB');
  const b = Buffer.allocUnsafe(HEADER_LENGTH + payload.length);
  b.writeUIntLE(payload.length, 0, 3);
  b[3] = seq & 0xff;
  payload.copy(b, HEADER_LENGTH);
  return b;
}

/** Thrown by readPacket for a packet longer than the caller allows (before reading its payload). */
export class PacketTooLarge extends Error {
  constructor(
    readonly length: number,
    readonly limit: number,
  ) {
    super(`packet of ${length} bytes exceeds the ${limit}-byte limit of the connection phase`);
    this.name = 'PacketTooLarge';
  }
}

/**
 * Reads one packet, checking its length before reading the payload. Connection-phase packets
 * never continue in a next packet, so anything over `maxLength` is refused as too large.
 */
export async function readPacket(src: ByteSource, maxLength = MAX_HANDSHAKE_PACKET): Promise<Packet> {
  const head = await src.read(HEADER_LENGTH);
  const len = head.readUIntLE(0, 3);
  const seq = head[3] as number;
  if (len > maxLength) throw new PacketTooLarge(len, maxLength);
  const payload = len > 0 ? Buffer.from(await src.read(len)) : Buffer.alloc(0);
  return { seq, payload };
}

/** Wraps a framed packet in one uncompressed compressed-protocol frame (length before compression 0). */
export function compressedFrame(compSeq: number, data: Buffer): Buffer {
  const h = Buffer.allocUnsafe(COMPRESSED_HEADER_LENGTH);
  h.writeUIntLE(data.length, 0, 3);
  h[3] = compSeq & 0xff;
  h.writeUIntLE(0, 4, 3);
  return Buffer.concat([h, data]);
}

/** Parsed compressed-frame header. */
export interface CompressedHeader {
  compressedLength: number;
  seq: number;
  /** 0 when the body is stored uncompressed. */
  uncompressedLength: number;
}

export function parseCompressedHeader(b: Buffer, at = 0): CompressedHeader {
  return {
    compressedLength: b.readUIntLE(at, 3),
    seq: b[at + 3] as number,
    uncompressedLength: b.readUIntLE(at + 4, 3),
  };
}

/** The plain bytes of a compressed frame's body; zlib bodies are inflated with the announced size as the limit. */
export function inflateFrame(h: CompressedHeader, body: Buffer): Buffer {
  if (h.uncompressedLength === 0) return body;
  let out: Buffer;
  try {
    out = inflateSync(body, { maxOutputLength: h.uncompressedLength });
  } catch {
    throw new MalformedPacket('compressed packet (zlib)');
  }
  if (out.length !== h.uncompressedLength) throw new MalformedPacket('compressed packet (length)');
  return out;
}

/** Sequential reader over one payload; every read is bounds-checked. */
export class Cursor {
  pos = 0;
  constructor(
    readonly buf: Buffer,
    private readonly what: string,
  ) {}

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): void {
    if (n < 0 || this.pos + n > this.buf.length) throw new MalformedPacket(this.what);
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++] as number;
  }

  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }

  u24(): number {
    this.need(3);
    const v = this.buf.readUIntLE(this.pos, 3);
    this.pos += 3;
    return v;
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  bytes(n: number): Buffer {
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  /** NUL-terminated bytes (the NUL is consumed, not returned). */
  cbytes(): Buffer {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0) throw new MalformedPacket(this.what);
    const b = this.buf.subarray(this.pos, end);
    this.pos = end + 1;
    return b;
  }

  cstr(): string {
    return this.cbytes().toString('utf8');
  }

  /** NUL-terminated string, or the rest of the payload when the NUL is missing (seen from older servers). */
  cstrOrRest(): string {
    const end = this.buf.indexOf(0, this.pos);
    const stop = end < 0 ? this.buf.length : end;
    const s = this.buf.toString('utf8', this.pos, stop);
    this.pos = end < 0 ? stop : end + 1;
    return s;
  }

  /** Length-encoded integer. https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_dt_integers.html */
  lenenc(): number {
    const first = this.u8();
    if (first < 0xfb) return first;
    if (first === 0xfc) return this.u16();
    if (first === 0xfd) return this.u24();
    if (first === 0xfe) {
      const lo = this.u32();
      const hi = this.u32();
      if (hi > 0x1fffff) throw new MalformedPacket(this.what);
      return hi * 0x100000000 + lo;
    }
    throw new MalformedPacket(this.what); // 0xfb is NULL, 0xff is not an integer
  }

  lenencBytes(): Buffer {
    return this.bytes(this.lenenc());
  }

  rest(): Buffer {
    const b = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return b;
  }
}

/** Length-encoded integer bytes. */
export function lenencInt(n: number): Buffer {
  if (n < 0xfb) return Buffer.from([n]);
  if (n <= 0xffff) {
    const b = Buffer.alloc(3);
    b[0] = 0xfc;
    b.writeUInt16LE(n, 1);
    return b;
  }
  if (n <= 0xffffff) {
    const b = Buffer.alloc(4);
    b[0] = 0xfd;
    b.writeUIntLE(n, 1, 3);
    return b;
  }
  const b = Buffer.alloc(9);
  b[0] = 0xfe;
  b.writeUInt32LE(n % 0x100000000, 1);
  b.writeUInt32LE(Math.floor(n / 0x100000000), 5);
  return b;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n & 0xffff);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

function cstring(s: string | Buffer): Buffer {
  return Buffer.concat([Buffer.isBuffer(s) ? s : Buffer.from(s, 'utf8'), Buffer.from([0])]);
}

const has = (caps: number, flag: number): boolean => (caps & flag) !== 0;

/**
 * Initial Handshake Packet, protocol version 10.
 * https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_handshake_v10.html
 */
export interface Greeting {
  serverVersion: string;
  connectionId: number;
  /** auth-plugin-data parts 1 and 2 joined, without the trailing NUL. */
  scramble: Buffer;
  capabilities: number;
  /** MariaDB extended capabilities (0 for MySQL servers, which set CLIENT_LONG_PASSWORD). */
  mariadbCapabilities: number;
  charset: number;
  status: number;
  authPlugin: string;
}

export function parseGreeting(payload: Buffer): Greeting {
  const c = new Cursor(payload, 'server greeting');
  const protocol = c.u8();
  if (protocol !== Header.HANDSHAKE_V10)
    throw new MalformedPacket(`server greeting (protocol version ${protocol}, expected 10)`);
  const serverVersion = c.cstr();
  const connectionId = c.u32();
  const part1 = c.bytes(8);
  c.u8(); // filler
  let capabilities = c.u16();
  let charset = 0;
  let status = 0;
  let mariadbCapabilities = 0;
  let authDataLength = 0;
  let part2: Buffer = Buffer.alloc(0);
  let authPlugin = '';
  if (c.remaining > 0) {
    charset = c.u8();
    status = c.u16();
    capabilities = (capabilities | (c.u16() << 16)) >>> 0;
    authDataLength = c.u8();
    const reserved = c.bytes(10);
    if (!has(capabilities, Cap.LONG_PASSWORD)) mariadbCapabilities = reserved.readUInt32LE(6);
    if (has(capabilities, Cap.SECURE_CONNECTION)) {
      const len = Math.max(13, authDataLength - 8);
      part2 = c.bytes(Math.min(len, c.remaining));
      if (part2.length > 0 && part2[part2.length - 1] === 0) part2 = part2.subarray(0, part2.length - 1);
    }
    if (has(capabilities, Cap.PLUGIN_AUTH)) authPlugin = c.cstrOrRest();
  }
  return {
    serverVersion,
    connectionId,
    scramble: Buffer.concat([part1, part2]),
    capabilities,
    mariadbCapabilities,
    charset,
    status,
    authPlugin,
  };
}

/** Builds a Handshake v10 payload; the scramble must be 20 bytes without NUL bytes. */
export function buildGreeting(g: Greeting): Buffer {
  if (g.scramble.length < 8) throw new RangeError('scramble too short');
  const plugin = has(g.capabilities, Cap.PLUGIN_AUTH);
  const secure = has(g.capabilities, Cap.SECURE_CONNECTION);
  const reserved = Buffer.alloc(10);
  if (!has(g.capabilities, Cap.LONG_PASSWORD)) reserved.writeUInt32LE(g.mariadbCapabilities >>> 0, 6);
  const part2 = g.scramble.subarray(8);
  return Buffer.concat([
    Buffer.from([Header.HANDSHAKE_V10]),
    cstring(g.serverVersion),
    u32(g.connectionId),
    g.scramble.subarray(0, 8),
    Buffer.from([0]),
    u16(g.capabilities & 0xffff),
    Buffer.from([g.charset & 0xff]),
    u16(g.status),
    u16(g.capabilities >>> 16),
    Buffer.from([plugin ? g.scramble.length + 1 : 0]),
    reserved,
    secure
      ? cstring(part2.length >= 12 ? part2 : Buffer.concat([part2, Buffer.alloc(12 - part2.length)]))
      : Buffer.alloc(0),
    plugin ? cstring(g.authPlugin) : Buffer.alloc(0),
  ]);
}

/**
 * HandshakeResponse41 (and the SSLRequest, which is its first 32 bytes).
 * https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_handshake_response.html
 */
export interface HandshakeResponse {
  capabilities: number;
  /** MariaDB extended capabilities (from the filler; 0 when CLIENT_MYSQL is set). */
  mariadbCapabilities: number;
  maxPacketSize: number;
  charset: number;
  user: string;
  authData: Buffer;
  /** Present when CLIENT_CONNECT_WITH_DB is set and the field was sent. */
  database?: string;
  /** Present when CLIENT_PLUGIN_AUTH is set and the field was sent. */
  authPlugin?: string;
  /** The attribute key/value bytes, without their total length, forwarded verbatim. */
  attributes?: Buffer;
  /** CLIENT_ZSTD_COMPRESSION_ALGORITHM level; read, never forwarded. */
  zstdLevel?: number;
}

/** True when a client's first packet is an SSLRequest rather than a full response. */
export function isSslRequest(payload: Buffer): boolean {
  return payload.length === SSL_REQUEST_LENGTH && has(payload.readUInt32LE(0), Cap.SSL);
}

/** Capability flags of a client's first packet (the low 16 bits are all a pre-4.1 client sends). */
export function peekClientCapabilities(payload: Buffer): number {
  if (payload.length >= 4) return payload.readUInt32LE(0);
  if (payload.length >= 2) return payload.readUInt16LE(0);
  throw new MalformedPacket('handshake response');
}

export function parseHandshakeResponse(payload: Buffer): HandshakeResponse {
  const c = new Cursor(payload, 'handshake response');
  const capabilities = c.u32();
  const maxPacketSize = c.u32();
  const charset = c.u8();
  const filler = c.bytes(23);
  const mariadbCapabilities = has(capabilities, Cap.LONG_PASSWORD) ? 0 : filler.readUInt32LE(19);
  const r: HandshakeResponse = {
    capabilities,
    mariadbCapabilities,
    maxPacketSize,
    charset,
    user: c.cstr(),
    authData: Buffer.alloc(0),
  };
  if (has(capabilities, Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA)) r.authData = Buffer.from(c.lenencBytes());
  else if (has(capabilities, Cap.SECURE_CONNECTION)) r.authData = Buffer.from(c.bytes(c.u8()));
  else r.authData = Buffer.from(c.cbytes());
  if (has(capabilities, Cap.CONNECT_WITH_DB) && c.remaining > 0) r.database = c.cstr();
  if (has(capabilities, Cap.PLUGIN_AUTH) && c.remaining > 0) r.authPlugin = c.cstrOrRest();
  if (has(capabilities, Cap.CONNECT_ATTRS) && c.remaining > 0) r.attributes = Buffer.from(c.lenencBytes());
  if (has(capabilities, Cap.ZSTD_COMPRESSION_ALGORITHM) && c.remaining > 0) r.zstdLevel = c.u8();
  return r;
}

/** The 32-byte prefix shared by SSLRequest and HandshakeResponse41. */
function responsePrefix(caps: number, mariadbCaps: number, maxPacketSize: number, charset: number): Buffer {
  const b = Buffer.alloc(SSL_REQUEST_LENGTH);
  b.writeUInt32LE(caps >>> 0, 0);
  b.writeUInt32LE(maxPacketSize >>> 0, 4);
  b[8] = charset & 0xff;
  if (!has(caps, Cap.LONG_PASSWORD)) b.writeUInt32LE(mariadbCaps >>> 0, 28);
  return b;
}

/** SSLRequest. https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_ssl_request.html */
export function buildSslRequest(
  caps: number,
  mariadbCaps: number,
  maxPacketSize: number,
  charset: number,
): Buffer {
  return responsePrefix(caps | Cap.SSL, mariadbCaps, maxPacketSize, charset);
}

/** Builds HandshakeResponse41; fields are written according to `capabilities` (zstd level never). */
export function buildHandshakeResponse(r: HandshakeResponse): Buffer {
  const caps = r.capabilities;
  let auth: Buffer;
  if (has(caps, Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA))
    auth = Buffer.concat([lenencInt(r.authData.length), r.authData]);
  else if (has(caps, Cap.SECURE_CONNECTION)) {
    if (r.authData.length > 255)
      throw new RangeError('auth data over 255 bytes needs CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA');
    auth = Buffer.concat([Buffer.from([r.authData.length]), r.authData]);
  } else auth = cstring(r.authData);
  const attrs = r.attributes ?? Buffer.alloc(0);
  return Buffer.concat([
    responsePrefix(caps, r.mariadbCapabilities, r.maxPacketSize, r.charset),
    cstring(r.user),
    auth,
    has(caps, Cap.CONNECT_WITH_DB) ? cstring(r.database ?? '') : Buffer.alloc(0),
    has(caps, Cap.PLUGIN_AUTH) ? cstring(r.authPlugin ?? '') : Buffer.alloc(0),
    has(caps, Cap.CONNECT_ATTRS) ? Buffer.concat([lenencInt(attrs.length), attrs]) : Buffer.alloc(0),
  ]);
}

/** Splits connection attributes into key/value pairs (for logs and tests). */
export function parseAttributes(b: Buffer): [string, string][] {
  const c = new Cursor(b, 'connection attributes');
  const out: [string, string][] = [];
  while (c.remaining > 0) out.push([c.lenencBytes().toString('utf8'), c.lenencBytes().toString('utf8')]);
  return out;
}

export function buildAttributes(pairs: [string, string][]): Buffer {
  return Buffer.concat(
    pairs.flatMap(([k, v]) => {
      const kb = Buffer.from(k, 'utf8');
      const vb = Buffer.from(v, 'utf8');
      return [lenencInt(kb.length), kb, lenencInt(vb.length), vb];
    }),
  );
}

/** ERR_Packet fields. */
export interface ErrFields {
  errno: number;
  /** Five characters; absent when the sender did not include the '#' marker. */
  sqlState?: string;
  message: string;
}

/**
 * ERR_Packet payload. The SQLSTATE marker is written when `sqlState` is given; clients that
 * know 4.1 read it even before the greeting (mysql2, Connector/C, Connector/J).
 */
export function buildErr(e: ErrFields): Buffer {
  const head = Buffer.alloc(3);
  head[0] = Header.ERR;
  head.writeUInt16LE(e.errno & 0xffff, 1);
  const state = e.sqlState
    ? Buffer.from('#' + e.sqlState.padEnd(5, '0').slice(0, 5), 'latin1')
    : Buffer.alloc(0);
  return Buffer.concat([head, state, Buffer.from(e.message, 'utf8')]);
}

export function parseErr(payload: Buffer): ErrFields {
  const c = new Cursor(payload, 'ERR packet');
  if (c.u8() !== Header.ERR) throw new MalformedPacket('ERR packet');
  const errno = c.u16();
  let sqlState: string | undefined;
  if (c.remaining >= 6 && payload[c.pos] === 0x23 /* '#' */) {
    c.u8();
    sqlState = c.bytes(5).toString('latin1');
  }
  return { errno, ...(sqlState ? { sqlState } : {}), message: c.rest().toString('utf8') };
}

/** AuthSwitchRequest: plugin name and its data (the scramble, usually NUL-terminated). */
export interface AuthSwitch {
  plugin: string;
  data: Buffer;
}

/** https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_auth_switch_request.html */
export function parseAuthSwitch(payload: Buffer): AuthSwitch {
  const c = new Cursor(payload, 'AuthSwitchRequest');
  if (c.u8() !== Header.AUTH_SWITCH || c.remaining === 0) throw new MalformedPacket('AuthSwitchRequest');
  const plugin = c.cstrOrRest();
  return { plugin, data: Buffer.from(c.rest()) };
}

export function buildAuthSwitch(plugin: string, data: Buffer): Buffer {
  return Buffer.concat([Buffer.from([Header.AUTH_SWITCH]), cstring(plugin), data]);
}

/** The scramble in an AuthSwitchRequest's data, without the trailing NUL. */
export function switchScramble(data: Buffer): Buffer {
  return data.length > 0 && data[data.length - 1] === 0 ? data.subarray(0, data.length - 1) : data;
}

/** AuthMoreData payload. */
export function buildAuthMoreData(data: Buffer): Buffer {
  return Buffer.concat([Buffer.from([Header.AUTH_MORE_DATA]), data]);
}

/**
 * COM_CHANGE_USER. https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_change_user.html
 * The auth response is at most 255 bytes (int<1> length), so an IAM token never fits: the
 * proxy sends an empty response and answers the server's AuthSwitchRequest instead.
 */
export interface ChangeUser {
  user: string;
  authData: Buffer;
  database: string;
  /** Absent when the client stopped after the database. */
  charset?: number;
  authPlugin?: string;
  attributes?: Buffer;
}

export function parseChangeUser(payload: Buffer, caps: number): ChangeUser {
  const c = new Cursor(payload, 'COM_CHANGE_USER');
  if (c.u8() !== Command.CHANGE_USER) throw new MalformedPacket('COM_CHANGE_USER');
  const user = c.cstr();
  const authData = Buffer.from(has(caps, Cap.SECURE_CONNECTION) ? c.bytes(c.u8()) : c.cbytes());
  const r: ChangeUser = { user, authData, database: c.remaining > 0 ? c.cstrOrRest() : '' };
  if (c.remaining >= 2) r.charset = c.u16();
  if (has(caps, Cap.PLUGIN_AUTH) && c.remaining > 0) r.authPlugin = c.cstrOrRest();
  if (has(caps, Cap.CONNECT_ATTRS) && c.remaining > 0) r.attributes = Buffer.from(c.lenencBytes());
  return r;
}

export function buildChangeUser(r: ChangeUser, caps: number): Buffer {
  if (r.authData.length > 255) throw new RangeError('COM_CHANGE_USER auth data is at most 255 bytes');
  const parts = [Buffer.from([Command.CHANGE_USER]), cstring(r.user)];
  parts.push(
    has(caps, Cap.SECURE_CONNECTION)
      ? Buffer.concat([Buffer.from([r.authData.length]), r.authData])
      : cstring(r.authData),
  );
  parts.push(cstring(r.database));
  if (r.charset !== undefined) {
    parts.push(u16(r.charset));
    if (has(caps, Cap.PLUGIN_AUTH)) parts.push(cstring(r.authPlugin ?? ''));
    if (has(caps, Cap.CONNECT_ATTRS)) {
      const attrs = r.attributes ?? Buffer.alloc(0);
      parts.push(lenencInt(attrs.length), attrs);
    }
  }
  return Buffer.concat(parts);
}
