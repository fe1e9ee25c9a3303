// Gunzip for backups: stored (level 0) deflate blocks pass through as views of the input, anything else goes to zlib.
import { Transform, type TransformCallback } from 'node:stream';
import { crc32, createInflateRaw, type InflateRaw } from 'node:zlib';

/** zlib's output buffer when a file has compressed blocks (1 MiB: few large writes downstream). */
const INFLATE_CHUNK_SIZE = 1 << 20;
/** Deflate's back-reference window: what a compressed block after stored ones may refer to. */
const WINDOW = 32 * 1024;
/** A file name or comment in a gzip header longer than this is not one of ours. */
const MAX_HEADER_FIELD = 64 * 1024;

const FHCRC = 0x02;
const FEXTRA = 0x04;
const FNAME = 0x08;
const FCOMMENT = 0x10;

type State = 'header' | 'block' | 'stored' | 'trailer' | 'end';

/**
 * Where the CRC-32 may be computed instead of on this thread (member-hasher.ts: a worker that sees
 * every byte of the plaintext anyway). write() gets each piece in order; crc() promises the CRC of
 * the pieces since its previous call; drained() is a promise while pieces wait to be taken.
 */
interface CrcOffload {
  write(bytes: Uint8Array): void;
  drained(): Promise<void> | undefined;
  crc(): Promise<number>;
}

/** A zlib-style error, so callers treat it like createGunzip's (code Z_DATA_ERROR / Z_BUF_ERROR). */
function zError(code: 'Z_DATA_ERROR' | 'Z_BUF_ERROR', message: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * A Transform from gzip bytes to their plaintext, checking CRC-32 and size like createGunzip. Backups
 * are gzip level 0, i.e. stored blocks: copying them through zlib (a fresh buffer and a thread-pool
 * round trip per MiB) was a large share of verify's time, so their bytes are handed on as views of
 * the input. The first compressed block (older or foreign files) switches the rest of the stream to
 * zlib's raw inflate, primed with the last 32 KiB of output as its window; in that mode only a
 * single-member file is read (the trailer is taken as the last 8 bytes).
 */
class BackupGunzip extends Transform {
  private state: State = 'header';
  /** Bytes not yet parsed (a partial header or trailer; small). */
  private held: Buffer = Buffer.alloc(0);
  private storedLeft = 0;
  private finalBlock = false;
  private crc = 0;
  private size = 0;
  /** The latest output pieces, covering at least the last WINDOW bytes (for a switch to zlib). */
  private recent: Buffer[] = [];
  private recentBytes = 0;
  private inflater: InflateRaw | undefined;
  /** CRC checks handed to the offload, not yet answered (checked() waits for them). */
  private readonly crcChecks: Promise<void>[] = [];

  constructor(private readonly offload?: CrcOffload) {
    super({ readableHighWaterMark: 1 << 20 });
  }

  /**
   * With an offload, the CRC checks are answered after the bytes passed: this settles once every
   * gzip member's CRC was compared (rejects with the same Z_DATA_ERROR as an inline check). The
   * plaintext must not be trusted as a whole before it settles.
   */
  async checked(): Promise<void> {
    await Promise.all(this.crcChecks);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.inflater) {
      this.feedInflater(chunk, callback);
      return;
    }
    try {
      this.held = this.held.length === 0 ? chunk : Buffer.concat([this.held, chunk]);
      this.parse();
    } catch (error) {
      callback(error as Error);
      return;
    }
    if (this.inflater) this.feedInflater(Buffer.alloc(0), callback);
    else this.afterDrain(callback);
  }

  /** Calls back once the offload took every piece (so memory waiting for it stays bounded). */
  private afterDrain(callback: TransformCallback): void {
    const waiting = this.offload?.drained();
    if (waiting) waiting.then(() => callback(), callback);
    else callback();
  }

  override _flush(callback: TransformCallback): void {
    if (this.inflater) {
      this.finishInflater(callback);
      return;
    }
    if (this.state !== 'end' || this.held.length > 0) {
      callback(zError('Z_BUF_ERROR', 'unexpected end of file'));
      return;
    }
    callback();
  }

  /** Consumes as much of `held` as the stored-block fast path can. */
  private parse(): void {
    for (;;) {
      const buf = this.held;
      if (this.state === 'stored') {
        const n = Math.min(this.storedLeft, buf.length);
        if (n > 0) this.emit_(buf.subarray(0, n));
        this.storedLeft -= n;
        this.held = buf.subarray(n);
        if (this.storedLeft > 0) return;
        this.state = this.finalBlock ? 'trailer' : 'block';
        continue;
      }
      if (buf.length === 0) return;
      if (this.state === 'end') {
        // Another gzip member may follow (RFC 1952 allows several); anything else is damage.
        if (buf[0] !== 0x1f) throw zError('Z_DATA_ERROR', 'unknown compression method');
        this.state = 'header';
        continue;
      }
      if (this.state === 'header') {
        const length = headerLength(buf);
        if (length === undefined) return;
        this.held = buf.subarray(length);
        this.crc = 0;
        this.size = 0;
        this.state = 'block';
        continue;
      }
      if (this.state === 'block') {
        const type = (buf[0]! >> 1) & 3;
        if (type !== 0) {
          this.startInflater();
          return;
        }
        if (buf.length < 5) return;
        const len = buf.readUInt16LE(1);
        if ((len ^ buf.readUInt16LE(3)) !== 0xffff)
          throw zError('Z_DATA_ERROR', 'invalid stored block lengths');
        this.finalBlock = (buf[0]! & 1) === 1;
        this.storedLeft = len;
        this.held = buf.subarray(5);
        this.state = 'stored';
        continue;
      }
      // trailer
      if (buf.length < 8) return;
      this.checkTrailer(buf.subarray(0, 8));
      this.held = buf.subarray(8);
      this.state = 'end';
    }
  }

  private checkTrailer(trailer: Buffer): void {
    const expected = trailer.readUInt32LE(0);
    if (this.offload) {
      const check = this.offload.crc().then((crc) => {
        if (crc !== expected) throw zError('Z_DATA_ERROR', 'incorrect data check');
      });
      check.catch(() => {}); // reported by checked()
      this.crcChecks.push(check);
    } else if (expected !== this.crc) throw zError('Z_DATA_ERROR', 'incorrect data check');
    if (trailer.readUInt32LE(4) !== this.size % 2 ** 32)
      throw zError('Z_DATA_ERROR', 'incorrect length check');
  }

  /** Hands on one piece of plaintext, counting it into the member's CRC and size. */
  private emit_(piece: Buffer): boolean {
    if (this.offload) this.offload.write(piece);
    else this.crc = crc32(piece, this.crc);
    this.size += piece.length;
    if (!this.inflater) {
      this.recent.push(piece);
      this.recentBytes += piece.length;
      while (this.recent.length > 1 && this.recentBytes - this.recent[0]!.length >= WINDOW)
        this.recentBytes -= this.recent.shift()!.length;
    }
    return this.push(piece);
  }

  override _read(size: number): void {
    this.inflater?.resume();
    super._read(size);
  }

  /** A compressed block: zlib inflates the rest, starting from this byte with the window so far. */
  private startInflater(): void {
    const window = Buffer.concat(this.recent).subarray(-WINDOW);
    this.recent = [];
    const inflater = createInflateRaw({
      chunkSize: INFLATE_CHUNK_SIZE,
      ...(window.length > 0 ? { dictionary: window } : {}),
    });
    inflater.on('data', (piece: Buffer) => {
      // Only as fast as our reader takes the plaintext: _read resumes it.
      if (!this.emit_(piece)) inflater.pause();
      const waiting = this.offload?.drained();
      if (waiting) {
        inflater.pause();
        waiting.then(
          () => inflater.resume(),
          (error: Error) => this.destroy(error),
        );
      }
    });
    inflater.on('error', (error) => this.destroy(error));
    this.inflater = inflater;
  }

  /** Writes all but the last 8 bytes seen so far (the trailer candidate) to zlib. */
  private feedInflater(chunk: Buffer, callback: TransformCallback): void {
    const all = this.held.length === 0 ? chunk : Buffer.concat([this.held, chunk]);
    const cut = Math.max(0, all.length - 8);
    this.held = all.subarray(cut);
    if (cut === 0 || this.inflater!.write(all.subarray(0, cut))) callback();
    else this.inflater!.once('drain', () => callback());
  }

  private finishInflater(callback: TransformCallback): void {
    const inflater = this.inflater!;
    inflater.once('end', () => {
      try {
        if (this.held.length < 8) throw zError('Z_BUF_ERROR', 'unexpected end of file');
        this.checkTrailer(this.held);
        callback();
      } catch (error) {
        callback(error as Error);
      }
    });
    inflater.end();
  }
}

/** The length of the gzip member header at the start of `buf`, or undefined if more bytes are needed. */
function headerLength(buf: Buffer): number | undefined {
  if (buf.length < 10) {
    if ((buf.length >= 1 && buf[0] !== 0x1f) || (buf.length >= 2 && buf[1] !== 0x8b))
      throw zError('Z_DATA_ERROR', 'incorrect header check');
    return undefined;
  }
  if (buf[0] !== 0x1f || buf[1] !== 0x8b) throw zError('Z_DATA_ERROR', 'incorrect header check');
  if (buf[2] !== 8) throw zError('Z_DATA_ERROR', 'unknown compression method');
  const flags = buf[3]!;
  if (flags & 0xe0) throw zError('Z_DATA_ERROR', 'unknown header flags set');
  let at = 10;
  if (flags & FEXTRA) {
    if (buf.length < at + 2) return undefined;
    at += 2 + buf.readUInt16LE(at);
    if (buf.length < at) return undefined;
  }
  for (const flag of [FNAME, FCOMMENT]) {
    if (!(flags & flag)) continue;
    const zero = buf.indexOf(0, at);
    if (zero < 0) {
      if (buf.length - at > MAX_HEADER_FIELD) throw zError('Z_DATA_ERROR', 'gzip header field too long');
      return undefined;
    }
    at = zero + 1;
  }
  if (!(flags & FHCRC)) return buf.length >= at ? at : undefined;
  if (buf.length < at + 2) return undefined;
  if (buf.readUInt16LE(at) !== (crc32(buf.subarray(0, at)) & 0xffff))
    throw zError('Z_DATA_ERROR', 'header crc mismatch');
  return at + 2;
}

/** A gunzip Transform for backup files (stored blocks without a copy; see BackupGunzip). */
export function createBackupGunzip(offload?: CrcOffload): BackupGunzip {
  return new BackupGunzip(offload);
}
