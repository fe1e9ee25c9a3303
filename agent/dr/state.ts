/** The DR client's memory in the data dir (dr-state.json, 0600): enrollment, pinned escrow key, last push, pending work. */
import type { JWK } from 'jose';
import { JsonStateFile } from '../system/json-state';

/** One push attempt as the status reports it. */
export interface DrPushRecord {
  at: string;
  trigger: 'nightly' | 'manual';
  outcome: 'succeeded' | 'failed' | 'skipped';
  /** Bytes sent to the slot (header + payload). */
  size?: number;
  /** Hex sha256 of exactly those bytes: the slot's metadata must show the same. */
  sha256?: string;
  /** The pushed backup's created-at, as signed with the upload. */
  createdAt?: string;
  backup?: string;
  /** True if an existing local backup (younger than 24 h) was uploaded as is. */
  reused?: boolean;
  multipart?: boolean;
  reason?: string;
  error?: { code: string; message: string };
}

/** The cloud copy a finished recovery restored: when, its created-at (as in the slot), its local name. */
export interface DrRecoveredCopy {
  at: string;
  createdAt: string;
  backup: string;
}

/** A multipart upload in progress: enough to resume it on a fresh attempt with the same bytes. */
export interface DrUploadInProgress {
  uploadId: string;
  backupName: string;
  /** The backup was made for this push and goes once the upload completes. */
  temporary: boolean;
  installationId: string;
  size: number;
  sha256: string;
  createdAt: string;
  partSize: number;
  /** The escrow header sent in front of the payload (base64): re-wrapping again would give other bytes. */
  header: string;
  oldHeaderLength: number;
}

export interface DrState {
  enrollment?: { installationId: string; publicKeyX: string; at: string };
  escrow?: { kid: string; publicJwk: JWK; pinnedAt: string };
  lastPush?: DrPushRecord;
  lastSuccess?: DrPushRecord;
  /**
   * The cloud copy this box was recovered from (`dr recover`, finished): the slot's backup as it was
   * then, until a push from here replaces it. `backup`: its local name here.
   */
  recovered?: DrRecoveredCopy;
  /** Set when Cloud DR was turned off: the slot must be deleted; cleared only when the cloud confirms. */
  pendingDeletion?: {
    since: string;
    attempts: number;
    lastAttemptAt?: string;
    lastError?: { code: string; message: string };
  };
  upload?: DrUploadInProgress;
}

/** Reads and updates dr-state.json; updates are serialized and written temp-then-rename. */
export class DrStateStore extends JsonStateFile<DrState> {
  constructor(path: string) {
    super(path, () => ({}));
  }
}
