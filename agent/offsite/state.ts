// What happened at each destination lately (last upload, last sync), in offsite-state.json in the data dir.
import { join } from 'node:path';
import type { Logger } from '../log';
import { JsonStateFile } from '../system/json-state';
import type { OffsiteKind } from './destinations';
import type { DestinationSkip } from './messages';

/** One upload of a backup to a destination (auto-upload after a backup, or the newest one a sync sent). */
export interface UploadRecord {
  at: string;
  backup: string;
  ok: boolean;
  size?: number;
  /** Sent by Sync Now (absent: the auto-upload after a backup). */
  via?: 'sync';
  /** Remote backups removed by retention after the upload. */
  pruned?: string[];
  error?: { code: string; message: string };
  /** The destination was turned off (or changed) during the job: left alone from then on (no size: not uploaded). */
  skipped?: DestinationSkip;
  /** The number of backups kept was raised during the job: it deleted nothing more (keptRaisedMessage). */
  pruneStopped?: string;
}

/** One Sync Now run. */
export interface SyncRecord {
  at: string;
  ok: boolean;
  uploaded: string[];
  downloaded: string[];
  deleted: { remote: string[]; local: string[] };
  error?: { code: string; message: string };
  /** The destination was turned off (or changed) during the sync: it stopped there, nothing pruned. */
  skipped?: DestinationSkip;
  /** The number of backups kept was raised during the sync: it deleted nothing more (keptRaisedMessage). */
  pruneStopped?: string;
}

export interface DestinationState {
  lastUpload?: UploadRecord;
  /** The last upload that succeeded (kept when a later one fails). */
  lastSuccessfulUpload?: UploadRecord;
  lastSync?: SyncRecord;
}

type OffsiteState = Partial<Record<OffsiteKind, DestinationState>>;

const OFFSITE_STATE_FILE = 'offsite-state.json';

/** Reads and updates offsite-state.json; updates are serialized and written temp-then-rename. */
export class OffsiteStateStore extends JsonStateFile<OffsiteState> {
  /** Damaged, it is set aside (told to `log`): the last uploads and syncs are forgotten, nothing else. */
  constructor(dataDir: string, log: Logger) {
    super(join(dataDir, OFFSITE_STATE_FILE), () => ({}), { setAsideDamaged: { log } });
  }

  /** Merges `patch` into one destination's state. */
  async merge(kind: OffsiteKind, patch: Partial<DestinationState>): Promise<void> {
    await this.update((state) => {
      state[kind] = { ...state[kind], ...patch };
    });
  }

  /** Records an upload (and, if it succeeded, as the last successful one; one skipped before it landed is not). */
  recordUpload(kind: OffsiteKind, record: UploadRecord): Promise<void> {
    const landed = record.ok && !(record.skipped && record.size === undefined);
    return this.merge(
      kind,
      landed ? { lastUpload: record, lastSuccessfulUpload: record } : { lastUpload: record },
    );
  }

  /**
   * Records the newest backup a sync uploaded, as an upload: it becomes the last (successful) upload
   * unless the one recorded is of a newer backup (a sync that filled in an older gap says nothing
   * about the newest one). Names sort by creation time (gem-backup-YYYY-MM-DD-HHMMSS).
   */
  async recordSyncUpload(kind: OffsiteKind, record: UploadRecord): Promise<void> {
    await this.update((state) => {
      const d = { ...state[kind] };
      if (!d.lastSuccessfulUpload || d.lastSuccessfulUpload.backup <= record.backup)
        d.lastSuccessfulUpload = record;
      if (!d.lastUpload || d.lastUpload.backup <= record.backup) d.lastUpload = record;
      state[kind] = d;
    });
  }
}
