// The slot store over an R2 bucket binding (the Worker).
import { toHex } from '../../shared/signing';
import { storageUnavailable } from '../errors';
import {
  ContentMismatchError,
  LIST_LIMIT,
  type ListedObject,
  type SlotStore,
  type StoredObject,
} from './slot-store';

/** Slot storage over R2: R2 itself checks the sha256 of single puts; parts are hashed as they stream. */
export class R2SlotStore implements SlotStore {
  constructor(private readonly bucket: R2Bucket) {}

  async put(key: string, body: ReadableStream<Uint8Array>, length: number, sha256Hex: string): Promise<void> {
    // R2 refuses a body whose sha256 or length differs from the declared one, storing nothing. It
    // refuses the same way when it is itself failing, so the bytes are counted and hashed on their
    // way through too: only a body that really differs is the client's fault (400, final).
    const digest = newDigest();
    let received = 0;
    let ended = false;
    let broken = false;
    const hashing = hashedPieces(
      body,
      length,
      digest.getWriter(),
      (bytes) => {
        received += bytes;
      },
      () => {
        ended = true;
      },
      () => {
        broken = true;
      },
    );
    try {
      await this.bucket.put(key, withLength(hashing, length), { sha256: sha256Hex });
    } catch (err) {
      await this.bucket.delete(key).catch(() => {});
      // The digest is final only once the whole body went through; before that storage gave up first.
      if (broken || received > length || (ended && received !== length)) {
        throw new ContentMismatchError(`received ${received} of ${length} bytes`);
      }
      if (ended && toHex(new Uint8Array(await digest.digest)) !== sha256Hex) {
        throw new ContentMismatchError('the body does not match its signed sha256');
      }
      throw storageUnavailable('storing a backup', err);
    }
  }

  async head(key: string): Promise<StoredObject | null> {
    const obj = await this.bucket.head(key);
    return obj ? { size: obj.size } : null;
  }

  async get(key: string, firstBytes?: number) {
    const obj = await this.bucket.get(
      key,
      firstBytes ? { range: { offset: 0, length: firstBytes } } : undefined,
    );
    return obj ? { body: obj.body, size: obj.size } : null;
  }

  async delete(key: string): Promise<void> {
    await this.bucket.delete(key);
  }

  async list(prefix: string, limit = LIST_LIMIT): Promise<ListedObject[]> {
    const listed: ListedObject[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.bucket.list({ prefix, cursor, limit: Math.min(1000, limit - listed.length) });
      for (const o of page.objects) listed.push({ key: o.key, size: o.size, uploaded: new Date(o.uploaded) });
      cursor = page.truncated ? page.cursor : undefined;
    } while (cursor && listed.length < limit);
    return listed;
  }

  async createMultipart(key: string): Promise<string> {
    return (await this.bucket.createMultipartUpload(key)).uploadId;
  }

  async uploadPart(
    key: string,
    uploadId: string,
    n: number,
    body: ReadableStream<Uint8Array>,
    length: number,
    sha256Hex: string,
  ): Promise<{ etag: string }> {
    // R2 has no checksum option for parts: hash the bytes on their way through, and refuse the part
    // if they differ. R2 has stored them under n by then, over any earlier part n: the route
    // un-records part n, so complete waits until it is sent again.
    const digest = newDigest();
    let received = 0;
    const hashing = hashedPieces(body, length, digest.getWriter(), (bytes) => {
      received += bytes;
    });
    let part: R2UploadedPart;
    try {
      part = await this.bucket
        .resumeMultipartUpload(key, uploadId)
        .uploadPart(n, withLength(hashing, length));
    } catch (err) {
      if (received !== length)
        throw new ContentMismatchError(`part ${n}: received ${received} of ${length} bytes`);
      throw err;
    }
    const actual = toHex(new Uint8Array(await digest.digest));
    if (actual !== sha256Hex) throw new ContentMismatchError(`part ${n} does not match its signed sha256`);
    return { etag: part.etag };
  }

  async completeMultipart(key: string, uploadId: string, parts: { n: number; etag: string }[]) {
    const obj = await this.bucket
      .resumeMultipartUpload(key, uploadId)
      .complete(parts.map((p) => ({ partNumber: p.n, etag: p.etag })));
    return { size: obj.size };
  }

  async abortMultipart(key: string, uploadId: string): Promise<void> {
    try {
      await this.bucket.resumeMultipartUpload(key, uploadId).abort();
    } catch (err) {
      // Already aborted or completed (R2 error 10024, NoSuchUpload): nothing of it is left to abort.
      const message = err instanceof Error ? err.message : String(err);
      if (/NoSuchUpload|10024/.test(message)) return;
      throw err;
    }
  }
}

/** A SHA-256 sink for a body's bytes (workerd only). */
function newDigest(): InstanceType<NonNullable<typeof crypto.DigestStream>> {
  const DigestStream = crypto.DigestStream;
  if (!DigestStream) throw new Error('crypto.DigestStream is not available outside workerd');
  return new DigestStream('SHA-256');
}

/** How much of a part's body is read, hashed and passed on at a time. */
const PIECE_BYTES = 256 * 1024;

/** workerd's BYOB reader can wait for at least `min` bytes instead of handing back what one socket read gave. */
type PieceReader = ReadableStreamBYOBReader & {
  readAtLeast?(min: number, view: Uint8Array): Promise<ReadableStreamReadResult<Uint8Array>>;
};

/**
 * The body again, in pieces of up to PIECE_BYTES, each written to `digest` before it is passed on.
 * A plain read of a request body yields 4 KiB chunks, and a TransformStream pays several promise
 * turns per chunk: for a 32 MiB part that was ~8,500 turns and about half of the Worker's CPU.
 * Reading into 256 KiB views takes ~130. At most one piece is read ahead (the stream's default
 * high-water mark), so memory per part stays a few pieces.
 */
function hashedPieces(
  body: ReadableStream<Uint8Array>,
  length: number,
  digest: WritableStreamDefaultWriter<Uint8Array>,
  onBytes: (bytes: number) => void,
  onEnd: () => void = () => {},
  onBroken: () => void = () => {},
): ReadableStream<Uint8Array> {
  const reader = body.getReader({ mode: 'byob' }) as PieceReader;
  let received = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      // Wait for a whole piece, or the rest of the declared length; a longer body still shows past it.
      const min = Math.max(1, Math.min(PIECE_BYTES, length - received));
      const view = new Uint8Array(PIECE_BYTES);
      let read: ReadableStreamReadResult<Uint8Array>;
      try {
        read = reader.readAtLeast ? await reader.readAtLeast(min, view) : await reader.read(view);
      } catch (error) {
        // The client's body broke off (its connection ended short): the client's fault, not storage's.
        onBroken();
        throw error;
      }
      const { value, done } = read;
      if (done || !value) {
        onEnd();
        await digest.close();
        controller.close();
        return;
      }
      received += value.byteLength;
      onBytes(value.byteLength);
      await digest.write(value);
      controller.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

/** R2 needs a known length to stream: FixedLengthStream also fails the upload on a short or long body. */
function withLength(body: ReadableStream<Uint8Array>, length: number): ReadableStream<Uint8Array> {
  const fixed = new FixedLengthStream(length);
  body.pipeTo(fixed.writable).catch(() => {});
  return fixed.readable;
}
