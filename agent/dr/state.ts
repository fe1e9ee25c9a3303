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

/** What dr-state.json knows of one installation id's slot: its enrollment, pushes, recovery, work owed. */
export interface DrSlotState {
  enrollment?: { installationId: string; publicKeyX: string; at: string };
  lastPush?: DrPushRecord;
  lastSuccess?: DrPushRecord;
  /**
   * The cloud copy this box was recovered from (`dr recover`, finished): the slot's backup as it was
   * then, until a push from here replaces it. `backup`: its local name here.
   */
  recovered?: DrRecoveredCopy;
  /**
   * Set when Cloud DR was turned off: the slot must be deleted; cleared only when the cloud confirms.
   * `refused`: the cloud refused it for good (a 4xx such as 401 bad_signature, or the id's key is gone):
   * not retried until the next start, shown in the status and health.
   */
  pendingDeletion?: {
    since: string;
    attempts: number;
    lastAttemptAt?: string;
    lastError?: { code: string; message: string };
    refused?: boolean;
  };
  upload?: DrUploadInProgress;
  /** The last look at the slot (HEAD) against the copy this box pushed or recovered (`copyAt`: its time). */
  cloudCheck?: DrCloudCheck;
}

/** What the slot held when looked at: the copy this box knows (`ok`), another (`problem` says how), or unknown. */
export interface DrCloudCheck {
  at: string;
  /** The push (or recovery) the slot was compared with: a later one makes this check stale. */
  copyAt: string;
  /** null: the cloud could not be asked (`problem` says why). */
  ok: boolean | null;
  problem?: string;
}

/** The fields of DrSlotState: what follows the installation id. */
const SLOT_FIELDS = [
  'enrollment',
  'lastPush',
  'lastSuccess',
  'recovered',
  'pendingDeletion',
  'upload',
  'cloudCheck',
] as const;

export interface DrState extends DrSlotState {
  /**
   * The installation id the slot fields belong to (files from before it: the enrollment's or the
   * upload's). A keys import or a recovery changes the id: those fields move to `former`.
   */
  installationId?: string;
  escrow?: { kid: string; publicJwk: JWK; pinnedAt: string };
  /**
   * The slot state of ids this box had before (a keys import, a recovery), by id: a cloud copy pushed
   * under one stays in the cloud until the opt-out deletes it, signed with that id's retired key.
   */
  former?: Record<string, DrSlotState>;
}

/** Whose slot fields `s` holds: its installationId, or in older files the enrollment's or upload's id. */
function ownerOf(s: DrState): string | undefined {
  return s.installationId ?? s.enrollment?.installationId ?? s.upload?.installationId;
}

/**
 * Makes `s` (in place) the state of installation `id`: when its slot fields belong to another id, they
 * move to `former` and the fields `former` kept for `id` (an id this box had before) come back.
 */
export function bindToInstallation(s: DrState, id: string): DrState {
  const owner = ownerOf(s);
  if (owner !== undefined && owner !== id) {
    const former = { ...s.former };
    const theirs: Record<string, unknown> = {};
    for (const field of SLOT_FIELDS) {
      if (s[field] !== undefined) theirs[field] = s[field];
      delete s[field];
    }
    if (Object.keys(theirs).length > 0) former[owner] = theirs as DrSlotState;
    Object.assign(s, former[id]);
    delete former[id];
    if (Object.keys(former).length > 0) s.former = former;
    else delete s.former;
  }
  s.installationId = id;
  return s;
}

/** The slot fields of installation `id` inside `s` (the current ones, or a former id's), if any. */
export function slotStateOf(s: DrState, id: string): DrSlotState | undefined {
  return s.installationId === id ? s : s.former?.[id];
}

/**
 * Reads and updates dr-state.json; updates are serialized and written temp-then-rename. Given the
 * installation id (read at each use), what it returns is that id's: see bindToInstallation.
 */
export class DrStateStore extends JsonStateFile<DrState> {
  constructor(
    path: string,
    private readonly installationId?: () => string,
  ) {
    super(path, () => ({}));
  }

  override async get(): Promise<DrState> {
    const s = await super.get();
    return this.installationId ? bindToInstallation(s, this.installationId()) : s;
  }

  override update(change: (state: DrState) => void): Promise<DrState> {
    return super.update((s) => {
      if (this.installationId) bindToInstallation(s, this.installationId());
      change(s);
    });
  }
}
