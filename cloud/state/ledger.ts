// One installation's durable state: its enrolled key, seen request ids, the slot pointer and open uploads.
import type { JWK } from 'jose';
import type { SlotMetadata } from '../../shared/api/cloud';
import type { SlotStore } from '../store/slot-store';

/** The slot's metadata plus the object key that holds the backup. */
export interface SlotRecord extends SlotMetadata {
  objectKey: string;
}

/** An open multipart upload. */
export interface UploadRecord {
  uploadId: string;
  objectKey: string;
  storeUploadId: string;
  size: number;
  sha256: string;
  createdAt: string;
  agentVersion: string;
  partSize: number;
  parts: Record<string, { size: number; etag: string }>;
  lastActivityAt: number;
  /** set while a completion is under way (ms since epoch), so that a second one waits its turn */
  completingSince?: number;
}

/** A completion that crashed half way no longer blocks the next one after this long. */
const COMPLETING_MS = 10 * 60_000;

/** What the ledger needs from its storage: the Durable Object's storage API, or a stand-in on Node. */
export interface LedgerStorage {
  get<T>(key: string): Promise<T | undefined>;
  put<T>(key: string, value: T): Promise<void>;
  delete(key: string): Promise<unknown>;
  list<T>(prefix: string): Promise<Map<string, T>>;
  /** make sure a sweep runs no later than `atMs` */
  wakeBy(atMs: number): Promise<void>;
}

export type EnrollOutcome = 'created' | 'same' | 'conflict';
export type CommitOutcome =
  | { accepted: true; replacedKey: string | null }
  | { accepted: false; current: SlotMetadata }
  /** the put's record was revoked (by an orphan sweep or an opt-out): its object may be gone */
  | { accepted: false; revoked: true };

/** The methods the routes call; the Durable Object exposes exactly these over RPC. */
export interface InstallationStateApi {
  /** binds the installation (whose id hashes to this state's name) to `publicKey` */
  enroll(publicKey: JWK): Promise<EnrollOutcome>;
  publicKey(): Promise<JWK | null>;
  /** records a request id until `expiresAtMs`; false when it was already seen (a replay) */
  admitRequest(jti: string, expiresAtMs: number): Promise<boolean>;
  slot(): Promise<SlotRecord | null>;
  /**
   * records that a single-request put of `objectKey` began at `atMs`: until its commit, an orphan
   * sweep begun earlier keeps the object, and one begun later revokes the record (the commit is then refused)
   */
  beginPut(objectKey: string, atMs: number): Promise<void>;
  /**
   * switches the slot to `next` unless the slot holds a backup created later; with `put`, only if
   * the put's record (beginPut) is still there, and the record is forgotten
   */
  commitSlot(next: SlotRecord, opts?: { put?: boolean }): Promise<CommitOutcome>;
  /**
   * Of `keys` (the objects listed under the installation's prefix), those nothing refers to any
   * more: not the slot's, not an open upload's, not a put begun at or after `sinceMs`. The records
   * of older puts among them are revoked, so their commit is refused instead of pointing at nothing.
   */
  claimOrphans(keys: string[], sinceMs: number): Promise<string[]>;
  /** revokes every put not committed yet and answers their keys (opt-out) */
  revokePuts(): Promise<string[]>;
  /** empties the slot if it still points at `objectKey` (the caller deleted that object first) */
  clearSlot(objectKey: string): Promise<boolean>;
  createUpload(upload: UploadRecord): Promise<void>;
  upload(uploadId: string): Promise<UploadRecord | null>;
  recordPart(uploadId: string, n: number, part: { size: number; etag: string }): Promise<UploadRecord | null>;
  /** un-records part n (storage may hold other bytes under it now); the upload, or null if gone */
  forgetPart(uploadId: string, n: number): Promise<UploadRecord | null>;
  /** marks the upload as being completed and answers it; null when gone or already being completed */
  claimUpload(uploadId: string): Promise<UploadRecord | null>;
  /** ends a claim whose completion failed, keeping the upload; false when the upload is gone */
  releaseUpload(uploadId: string): Promise<boolean>;
  /** forgets the upload and commits `next` to the slot in one step; null when the upload is gone */
  finishUpload(uploadId: string, next: SlotRecord): Promise<CommitOutcome | null>;
  /** forgets an upload (completed or aborted) and answers it */
  takeUpload(uploadId: string): Promise<UploadRecord | null>;
  /** forgets every open upload and answers them (opt-out: their stored parts are to be aborted) */
  takeUploads(): Promise<UploadRecord[]>;
}

const KEY = 'key';
const SLOT = 'slot';
const JTI = 'jti:';
const UPLOAD = 'upload:';
const PUT = 'put:';

/** The ledger over some storage; every method is a short run of storage calls without other I/O. */
export class InstallationLedger implements InstallationStateApi {
  constructor(
    private readonly storage: LedgerStorage,
    private readonly uploadIdleMs: number,
  ) {}

  /**
   * Keeps the public key only: the installation id is the recovery credential, and this state is
   * stored under its hash so that storage reveals no id (on Node, in the bucket beside the slots).
   */
  async enroll(publicKey: JWK): Promise<EnrollOutcome> {
    const current = await this.storage.get<{ publicKey: JWK }>(KEY);
    if (current) return current.publicKey.x === publicKey.x ? 'same' : 'conflict';
    await this.storage.put(KEY, { publicKey: { kty: 'OKP', crv: 'Ed25519', x: publicKey.x } });
    return 'created';
  }

  async publicKey(): Promise<JWK | null> {
    return (await this.storage.get<{ publicKey: JWK }>(KEY))?.publicKey ?? null;
  }

  async admitRequest(jti: string, expiresAtMs: number): Promise<boolean> {
    const seen = await this.storage.get<number>(JTI + jti);
    if (seen !== undefined) return false;
    // Enrollments once stored the installation id beside the key: forget it at the next signed request.
    const enrolled = await this.storage.get<{ installationId?: string; publicKey: JWK }>(KEY);
    if (enrolled?.installationId !== undefined)
      await this.storage.put(KEY, { publicKey: enrolled.publicKey });
    await this.storage.put(JTI + jti, expiresAtMs);
    await this.storage.wakeBy(expiresAtMs);
    return true;
  }

  async slot(): Promise<SlotRecord | null> {
    return (await this.storage.get<SlotRecord>(SLOT)) ?? null;
  }

  async beginPut(objectKey: string, atMs: number): Promise<void> {
    await this.storage.put(PUT + objectKey, atMs);
    await this.storage.wakeBy(atMs + this.uploadIdleMs);
  }

  async commitSlot(next: SlotRecord, opts: { put?: boolean } = {}): Promise<CommitOutcome> {
    if (opts.put) {
      if ((await this.storage.get<number>(PUT + next.objectKey)) === undefined) {
        return { accepted: false, revoked: true };
      }
      await this.storage.delete(PUT + next.objectKey);
    }
    const current = await this.slot();
    if (current && Date.parse(current.createdAt) > Date.parse(next.createdAt)) {
      return { accepted: false, current: toMetadata(current) };
    }
    await this.storage.put(SLOT, next);
    return {
      accepted: true,
      replacedKey: current && current.objectKey !== next.objectKey ? current.objectKey : null,
    };
  }

  async claimOrphans(keys: string[], sinceMs: number): Promise<string[]> {
    const named = new Set<string>();
    const slot = await this.slot();
    if (slot) named.add(slot.objectKey);
    for (const upload of (await this.storage.list<UploadRecord>(UPLOAD)).values())
      named.add(upload.objectKey);
    const orphans: string[] = [];
    for (const key of keys) {
      if (named.has(key)) continue;
      const begunAt = await this.storage.get<number>(PUT + key);
      if (begunAt !== undefined) {
        if (begunAt >= sinceMs) continue;
        await this.storage.delete(PUT + key);
      }
      orphans.push(key);
    }
    return orphans;
  }

  async revokePuts(): Promise<string[]> {
    const keys: string[] = [];
    for (const key of (await this.storage.list<number>(PUT)).keys()) {
      await this.storage.delete(key);
      keys.push(key.slice(PUT.length));
    }
    return keys;
  }

  async clearSlot(objectKey: string): Promise<boolean> {
    const current = await this.slot();
    if (current?.objectKey !== objectKey) return false;
    await this.storage.delete(SLOT);
    return true;
  }

  async createUpload(upload: UploadRecord): Promise<void> {
    await this.storage.put(UPLOAD + upload.uploadId, upload);
    await this.storage.wakeBy(upload.lastActivityAt + this.uploadIdleMs);
  }

  async upload(uploadId: string): Promise<UploadRecord | null> {
    return (await this.storage.get<UploadRecord>(UPLOAD + uploadId)) ?? null;
  }

  async recordPart(
    uploadId: string,
    n: number,
    part: { size: number; etag: string },
  ): Promise<UploadRecord | null> {
    const upload = await this.upload(uploadId);
    if (!upload) return null;
    upload.parts[String(n)] = part;
    upload.lastActivityAt = Date.now();
    await this.storage.put(UPLOAD + uploadId, upload);
    await this.storage.wakeBy(upload.lastActivityAt + this.uploadIdleMs);
    return upload;
  }

  async forgetPart(uploadId: string, n: number): Promise<UploadRecord | null> {
    const upload = await this.upload(uploadId);
    if (!upload) return null;
    delete upload.parts[String(n)];
    await this.storage.put(UPLOAD + uploadId, upload);
    return upload;
  }

  async claimUpload(uploadId: string): Promise<UploadRecord | null> {
    const upload = await this.upload(uploadId);
    const now = Date.now();
    if (!upload || (upload.completingSince !== undefined && now - upload.completingSince < COMPLETING_MS)) {
      return null;
    }
    upload.completingSince = now;
    upload.lastActivityAt = now;
    await this.storage.put(UPLOAD + uploadId, upload);
    await this.storage.wakeBy(upload.lastActivityAt + this.uploadIdleMs);
    return upload;
  }

  async releaseUpload(uploadId: string): Promise<boolean> {
    const upload = await this.upload(uploadId);
    if (!upload) return false;
    delete upload.completingSince;
    upload.lastActivityAt = Date.now();
    await this.storage.put(UPLOAD + uploadId, upload);
    await this.storage.wakeBy(upload.lastActivityAt + this.uploadIdleMs);
    return true;
  }

  async finishUpload(uploadId: string, next: SlotRecord): Promise<CommitOutcome | null> {
    if (!(await this.upload(uploadId))) return null;
    await this.storage.delete(UPLOAD + uploadId);
    return this.commitSlot(next);
  }

  async takeUpload(uploadId: string): Promise<UploadRecord | null> {
    const upload = await this.upload(uploadId);
    if (upload) await this.storage.delete(UPLOAD + uploadId);
    return upload;
  }

  async takeUploads(): Promise<UploadRecord[]> {
    const uploads: UploadRecord[] = [];
    for (const [key, upload] of await this.storage.list<UploadRecord>(UPLOAD)) {
      await this.storage.delete(key);
      uploads.push(upload);
    }
    return uploads;
  }

  /**
   * Forgets expired request ids, idle uploads and puts never committed within the idle limit;
   * answers the uploads whose stored parts the caller must abort, the keys of those puts (objects
   * the caller deletes), and when the next sweep is due (null: nothing left to expire).
   */
  async sweep(
    nowMs: number,
  ): Promise<{ abandoned: UploadRecord[]; stalePuts: string[]; nextAtMs: number | null }> {
    let next: number | null = null;
    const later = (t: number) => {
      next = next === null ? t : Math.min(next, t);
    };
    for (const [key, expiresAt] of await this.storage.list<number>(JTI)) {
      if (expiresAt <= nowMs) await this.storage.delete(key);
      else later(expiresAt);
    }
    const abandoned: UploadRecord[] = [];
    for (const [key, upload] of await this.storage.list<UploadRecord>(UPLOAD)) {
      const idleUntil = upload.lastActivityAt + this.uploadIdleMs;
      if (idleUntil <= nowMs) {
        await this.storage.delete(key);
        abandoned.push(upload);
      } else later(idleUntil);
    }
    const stalePuts: string[] = [];
    for (const [key, begunAt] of await this.storage.list<number>(PUT)) {
      const staleAt = begunAt + this.uploadIdleMs;
      if (staleAt <= nowMs) {
        await this.storage.delete(key);
        stalePuts.push(key.slice(PUT.length));
      } else later(staleAt);
    }
    return { abandoned, stalePuts, nextAtMs: next };
  }
}

/**
 * Aborts the stored parts of uploads taken out of the state (idle past the limit, or refused at their
 * completion). One whose abort fails is recorded again, idle from now, so the next sweep (or the agent's
 * own abort) tries again: forgotten, its parts would stay in the bucket with nothing left to name them.
 */
export async function abortDropped(
  store: Pick<SlotStore, 'abortMultipart'>,
  uploads: UploadRecord[],
  recordAgain: (upload: UploadRecord) => Promise<void>,
): Promise<void> {
  for (const upload of uploads) {
    try {
      await store.abortMultipart(upload.objectKey, upload.storeUploadId);
    } catch (err) {
      console.error(
        'cloud: aborting a multipart upload failed; it stays recorded for the next sweep',
        err instanceof Error ? err.message : String(err),
      );
      const { completingSince: _, ...kept } = upload;
      await recordAgain({ ...kept, lastActivityAt: Date.now() }).catch(() => {});
    }
  }
}

/** The public part of a slot record. */
export function toMetadata(slot: SlotRecord): SlotMetadata {
  return {
    createdAt: slot.createdAt,
    size: slot.size,
    sha256: slot.sha256,
    agentVersion: slot.agentVersion,
    uploadedAt: slot.uploadedAt,
  };
}
