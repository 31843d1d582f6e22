/**
 * The command phase. After the login the proxy moves bytes, except for one command it must
 * see: COM_CHANGE_USER (0x11) re-authenticates, and the client would answer the server's
 * mysql_clear_password request with its local password instead of an IAM token. So the
 * client->server direction passes through a light packet scanner (commands are small; bytes are
 * forwarded as they arrive, only a packet header split across reads is held back), and a
 * COM_CHANGE_USER at the start of a command is taken out of the stream and handled by the
 * proxy (see changeUser.ts). The server->client direction is not parsed.
 *
 * CommandGate is the `upstream` Duplex handed to the splice: what the splice writes into it
 * goes to the server through the scanner, and what the server sends comes out of it. The
 * splice keeps its contract (bytes both ways, backpressure, one teardown) and needs no MySQL
 * knowledge.
 *
 * Compression (CLIENT_COMPRESS, zlib): both legs switch to compressed framing right after the
 * OK, identically, so the bytes still splice unchanged. The scanner then reads compressed
 * frames whole, inflates them to find command starts, and forwards the original frames. A
 * COM_CHANGE_USER must start its compressed frame (every client library sends one command per
 * frame); the proxy's own packets during the exchange are sent as uncompressed frames
 * ("length before compression" 0), with compressed sequence ids continuing the peer's.
 * https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_compression.html
 */
import { Duplex } from 'node:stream';
import { ByteQueue, PeerClosedError } from '../../net/reader';
import type { PacketIO } from './upstream';
import {
  type ByteSource,
  Command,
  COMPRESSED_HEADER_LENGTH,
  compressedFrame,
  HEADER_LENGTH,
  inflateFrame,
  MalformedPacket,
  MAX_HANDSHAKE_PACKET,
  MAX_PAYLOAD,
  type Packet,
  packet,
  parseCompressedHeader,
  readPacket,
} from './wire';

/** What one scan of client bytes found. */
export interface ScanResult {
  /** Bytes to send upstream now, in order. */
  forward: Buffer[];
  /** When a COM_CHANGE_USER starts: every byte from its first header byte on (not forwarded). */
  intercept?: Buffer;
}

/**
 * Finds command starts in the client->server packet stream (uncompressed framing).
 * A command is a packet with sequence id 0 that is not the continuation of a 16 MB packet.
 * LOAD DATA LOCAL INFILE contents are packets with sequence ids counting up from 2 and
 * wrapping through 0, ended by an empty packet: they are followed so that a wrapped sequence
 * id 0 is not taken for a command.
 */
export class CommandScanner {
  /** Bytes of a header not yet complete (at most 4). */
  private held: Buffer | undefined;
  /** Payload bytes of the current packet still to pass. */
  private remaining = 0;
  /** The current packet was 16 MB - 1 long: the next one continues it. */
  private continued = false;
  /** Inside a sub-exchange (LOAD DATA LOCAL INFILE contents). */
  private inSub = false;
  private expectedSeq = 0;

  reset(): void {
    this.held = undefined;
    this.remaining = 0;
    this.continued = false;
    this.inSub = false;
    this.expectedSeq = 0;
  }

  /** True when no partial packet is pending (a command may start next). */
  get atBoundary(): boolean {
    return this.held === undefined && this.remaining === 0 && !this.continued;
  }

  scan(chunk: Buffer): ScanResult {
    const data = this.held ? Buffer.concat([this.held, chunk]) : chunk;
    this.held = undefined;
    let pos = 0;
    while (pos < data.length) {
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, data.length - pos);
        pos += n;
        this.remaining -= n;
        continue;
      }
      if (data.length - pos < HEADER_LENGTH) break;
      const len = data.readUIntLE(pos, 3);
      const seq = data[pos + 3] as number;
      const continuation = this.continued;
      const subPacket = !continuation && this.inSub && seq === this.expectedSeq;
      const commandStart = !continuation && !subPacket && seq === 0;
      if (commandStart && len > 0) {
        if (data.length - pos < HEADER_LENGTH + 1) break;
        if (data[pos + HEADER_LENGTH] === Command.CHANGE_USER) {
          return { forward: pos > 0 ? [data.subarray(0, pos)] : [], intercept: data.subarray(pos) };
        }
      }
      if (commandStart) this.inSub = false;
      else if (subPacket) this.inSub = len !== 0;
      else if (!continuation) this.inSub = len !== 0; // first packet of a sub-exchange
      this.expectedSeq = (seq + 1) & 0xff;
      this.continued = len === MAX_PAYLOAD;
      this.remaining = len;
      pos += HEADER_LENGTH;
    }
    if (pos < data.length) this.held = Buffer.from(data.subarray(pos));
    return { forward: pos > 0 ? [pos === data.length ? data : data.subarray(0, pos)] : [] };
  }
}

/**
 * The same over compressed framing: whole compressed frames are held until complete, inflated
 * and scanned; the original frames are forwarded.
 */
export class CompressedCommandScanner {
  private readonly inner = new CommandScanner();
  private held: Buffer | undefined;

  reset(): void {
    this.inner.reset();
    this.held = undefined;
  }

  scan(chunk: Buffer): ScanResult {
    const data = this.held ? Buffer.concat([this.held, chunk]) : chunk;
    this.held = undefined;
    let pos = 0;
    while (data.length - pos >= COMPRESSED_HEADER_LENGTH) {
      const h = parseCompressedHeader(data, pos);
      const end = pos + COMPRESSED_HEADER_LENGTH + h.compressedLength;
      if (end > data.length) break;
      const plain = inflateFrame(h, data.subarray(pos + COMPRESSED_HEADER_LENGTH, end));
      const r = this.inner.scan(plain);
      if (r.intercept) {
        if (r.intercept.length !== plain.length)
          throw new MalformedPacket('compressed packet: COM_CHANGE_USER must start its compressed packet');
        return { forward: pos > 0 ? [data.subarray(0, pos)] : [], intercept: data.subarray(pos) };
      }
      pos = end;
    }
    if (pos < data.length) this.held = Buffer.from(data.subarray(pos));
    return { forward: pos > 0 ? [pos === data.length ? data : data.subarray(0, pos)] : [] };
  }
}

/** Packet I/O over one direction pair of the gate, with or without compressed framing. */
export class GateChannel implements PacketIO {
  /** Inflated bytes not yet consumed (compressed mode). */
  private plain: Buffer = Buffer.alloc(0);
  /** Last compressed sequence id seen or sent on this leg; the next frame sent uses +1. */
  private compSeq = -1;
  private readonly plainSource: ByteSource = { read: (n) => this.readPlain(n) };

  constructor(
    private readonly feed: ByteQueue,
    private readonly sink: (b: Buffer) => void,
    private readonly compressed: boolean,
  ) {}

  read(): Promise<Packet> {
    return readPacket(this.compressed ? this.plainSource : this.feed, MAX_HANDSHAKE_PACKET);
  }

  write(seq: number, payload: Buffer): void {
    const p = packet(seq, payload);
    if (!this.compressed) return this.sink(p);
    this.compSeq = (this.compSeq + 1) & 0xff;
    this.sink(compressedFrame(this.compSeq, p));
  }

  /** Bytes read from the feed but not consumed, as raw stream bytes. */
  leftover(): Buffer {
    if (this.plain.length > 0)
      throw new MalformedPacket('compressed packet: data after the change-user exchange in the same frame');
    return this.feed.drain();
  }

  private async readPlain(n: number): Promise<Buffer> {
    while (this.plain.length < n) {
      const h = parseCompressedHeader(await this.feed.read(COMPRESSED_HEADER_LENGTH));
      const body = await this.feed.read(h.compressedLength);
      this.compSeq = h.seq;
      this.plain = Buffer.concat([this.plain, inflateFrame(h, body)]);
    }
    const out = this.plain.subarray(0, n);
    this.plain = this.plain.subarray(n);
    return out;
  }
}

/** What the exchange decided: keep splicing, or close (an ERR has been sent to the client). */
export type ExchangeOutcome = 'continue' | 'close';

/** Runs one intercepted COM_CHANGE_USER: `client` starts with that packet. */
export type ChangeUserHandler = (client: PacketIO, server: PacketIO) => Promise<ExchangeOutcome>;

/** Gate modes. */
export const GateMode = {
  /** Bytes flow; client bytes are scanned for COM_CHANGE_USER. */
  Pass: 'pass',
  /** A COM_CHANGE_USER is being handled: both directions go to the handler. */
  Exchange: 'exchange',
  /** The handler closed the session: the last ERR drains, then everything closes. */
  Closing: 'closing',
} as const;
export type GateMode = (typeof GateMode)[keyof typeof GateMode];

/** Most bytes a peer may send while an exchange runs (it should send one small packet). */
const EXCHANGE_BUFFER_LIMIT = 4 * MAX_HANDSHAKE_PACKET;

/** The upstream side of a MySQL splice; see the module comment. Owns `up`. */
export class CommandGate extends Duplex {
  private mode: GateMode = GateMode.Pass;
  private readonly scanner: CommandScanner | CompressedCommandScanner;
  private clientFeed: ByteQueue | undefined;
  private serverFeed: ByteQueue | undefined;

  private readonly onUpData = (chunk: Buffer): void => {
    if (this.mode === GateMode.Exchange) this.serverFeed?.push(chunk);
    else if (this.mode === GateMode.Pass && !this.push(chunk)) this.up.pause();
  };
  private readonly onUpEnd = (): void => {
    if (this.mode === GateMode.Exchange) this.serverFeed?.fail(new PeerClosedError('server'));
    else this.push(null);
  };
  private readonly onUpError = (err: Error): void => {
    if (this.mode === GateMode.Exchange) this.serverFeed?.fail(new PeerClosedError('server', err));
    else this.destroy(err);
  };
  private readonly onUpClose = (): void => {
    if (this.mode === GateMode.Exchange) this.serverFeed?.fail(new PeerClosedError('server'));
    else this.destroy();
  };

  constructor(
    private readonly up: Duplex,
    private readonly compressed: boolean,
    private readonly onChangeUser: ChangeUserHandler,
    /** Told about an exchange that failed unexpectedly (the session is then closed). */
    private readonly onFailure: (err: unknown) => void,
  ) {
    super();
    this.scanner = compressed ? new CompressedCommandScanner() : new CommandScanner();
    up.on('data', this.onUpData);
    up.on('end', this.onUpEnd);
    up.on('error', this.onUpError);
    up.on('close', this.onUpClose);
  }

  override _read(): void {
    if (this.mode === GateMode.Pass) this.up.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.mode === GateMode.Exchange) {
      this.clientFeed?.push(chunk);
      cb();
      return;
    }
    if (this.mode === GateMode.Closing) {
      cb();
      return;
    }
    if (this.forward(chunk)) cb();
    else this.up.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.mode === GateMode.Exchange) this.clientFeed?.fail(new PeerClosedError('client'));
    else this.up.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.detachUp();
    this.up.destroy();
    this.clientFeed?.fail(new PeerClosedError('client'));
    this.serverFeed?.fail(new PeerClosedError('server'));
    cb(err);
  }

  /** Scans and forwards client bytes; false when the upstream asks to wait for 'drain'. */
  private forward(chunk: Buffer): boolean {
    let r: ScanResult;
    try {
      r = this.scanner.scan(chunk);
    } catch (err) {
      this.onFailure(err);
      this.destroy();
      return true;
    }
    let ok = true;
    for (const b of r.forward) ok = this.up.write(b) && ok;
    if (r.intercept) this.beginExchange(r.intercept);
    return ok;
  }

  private beginExchange(first: Buffer): void {
    this.mode = GateMode.Exchange;
    const clientFeed = (this.clientFeed = new ByteQueue(EXCHANGE_BUFFER_LIMIT));
    const serverFeed = (this.serverFeed = new ByteQueue(EXCHANGE_BUFFER_LIMIT));
    clientFeed.push(Buffer.from(first));
    this.up.resume();
    const client = new GateChannel(clientFeed, (b) => this.push(b), this.compressed);
    const server = new GateChannel(serverFeed, (b) => this.up.write(b), this.compressed);
    this.onChangeUser(client, server).then(
      (outcome) => this.endExchange(outcome, client, server),
      (err: unknown) => {
        this.onFailure(err);
        this.destroy();
      },
    );
  }

  private endExchange(outcome: ExchangeOutcome, client: GateChannel, server: GateChannel): void {
    if (this.destroyed) return;
    if (outcome === 'close') {
      this.mode = GateMode.Closing;
      this.detachUp();
      this.up.destroy();
      this.push(null); // the client gets the ERR, then end of stream
      setTimeout(() => this.destroy(), 1000).unref();
      return;
    }
    let fromClient: Buffer;
    let fromServer: Buffer;
    try {
      fromClient = client.leftover();
      fromServer = server.leftover();
    } catch (err) {
      this.onFailure(err);
      this.destroy();
      return;
    }
    this.mode = GateMode.Pass;
    this.clientFeed = undefined;
    this.serverFeed = undefined;
    this.scanner.reset();
    if (fromServer.length > 0 && !this.push(fromServer)) this.up.pause();
    if (fromClient.length > 0) this.forward(fromClient);
  }

  private detachUp(): void {
    this.up.off('data', this.onUpData);
    this.up.off('end', this.onUpEnd);
    this.up.off('error', this.onUpError);
    this.up.off('close', this.onUpClose);
    this.up.on('error', () => undefined);
  }
}
