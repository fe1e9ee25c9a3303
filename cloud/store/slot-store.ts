// The object storage under the DR slots: R2 in the Worker, any S3-compatible bucket on Node.

/** A stored object's size. */
export interface StoredObject {
  size: number;
}

/** One object as a listing shows it. */
export interface ListedObject {
  key: string;
  size: number;
  /** when storage finished storing it */
  uploaded: Date;
}

/** Thrown when the bytes received do not match the signed sha256 or length; nothing was stored. */
export class ContentMismatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ContentMismatchError';
  }
}

/**
 * Where backups live. Keys are chosen by the cloud (`slots/<hash>/b-…`); an object appears under its
 * key only once complete, so a half-received upload is never visible.
 */
export interface SlotStore {
  /** stores exactly `length` bytes whose sha256 must be `sha256Hex`, else ContentMismatchError and nothing stored */
  put(key: string, body: ReadableStream<Uint8Array>, length: number, sha256Hex: string): Promise<void>;
  head(key: string): Promise<StoredObject | null>;
  /** the object's bytes, or the first `firstBytes` of them */
  get(key: string, firstBytes?: number): Promise<{ body: ReadableStream<Uint8Array>; size: number } | null>;
  delete(key: string): Promise<void>;
  /**
   * The objects whose keys start with `prefix`, in key order, at most `limit` of them (pages are
   * followed until then). In-progress multipart uploads are not objects and are not listed.
   */
  list(prefix: string, limit?: number): Promise<ListedObject[]>;
  createMultipart(key: string): Promise<string>;
  /** stores one part, checking its length and sha256 (ContentMismatchError otherwise) */
  uploadPart(
    key: string,
    uploadId: string,
    n: number,
    body: ReadableStream<Uint8Array>,
    length: number,
    sha256Hex: string,
  ): Promise<{ etag: string }>;
  completeMultipart(
    key: string,
    uploadId: string,
    parts: { n: number; etag: string }[],
  ): Promise<StoredObject>;
  /** aborts an upload; one storage no longer knows (aborted or completed already) counts as aborted */
  abortMultipart(key: string, uploadId: string): Promise<void>;
}

/** How many keys a listing answers at most unless told otherwise: far more than one slot ever holds. */
export const LIST_LIMIT = 10_000;
