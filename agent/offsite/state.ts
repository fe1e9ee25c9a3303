// What happened at each destination lately (last upload, last sync), in offsite-state.json in the data dir.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeSmallFileAtomic } from '../system/atomic-file';
import type { OffsiteKind } from './destinations';

/** One upload of a new backup to a destination (auto-upload after a backup). */
export interface UploadRecord {
  at: string;
  backup: string;
  ok: boolean;
  size?: number;
  /** Remote backups removed by retention after the upload. */
  pruned?: string[];
  error?: { code: string; message: string };
}

/** One Sync Now run. */
export interface SyncRecord {
  at: string;
  ok: boolean;
  uploaded: string[];
  downloaded: string[];
  deleted: { remote: string[]; local: string[] };
  error?: { code: string; message: string };
}

export interface DestinationState {
  lastUpload?: UploadRecord;
  /** The last upload that succeeded (kept when a later one fails). */
  lastSuccessfulUpload?: UploadRecord;
  lastSync?: SyncRecord;
}

export type OffsiteState = Partial<Record<OffsiteKind, DestinationState>>;

export const OFFSITE_STATE_FILE = 'offsite-state.json';

/** Reads and updates offsite-state.json; updates are serialized and written temp-then-rename. */
export class OffsiteStateStore {
  private cache: OffsiteState | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  readonly path: string;

  constructor(dataDir: string) {
    this.path = join(dataDir, OFFSITE_STATE_FILE);
  }

  async get(): Promise<OffsiteState> {
    this.cache ??= await readFile(this.path, 'utf8').then(
      (text) => JSON.parse(text) as OffsiteState,
      () => ({}),
    );
    return structuredClone(this.cache);
  }

  /** Merges `patch` into one destination's state. */
  update(kind: OffsiteKind, patch: Partial<DestinationState>): Promise<void> {
    const run = this.queue.then(async () => {
      const state = await this.get();
      state[kind] = { ...state[kind], ...patch };
      await writeSmallFileAtomic(this.path, `${JSON.stringify(state, null, 2)}\n`, 0o600);
      this.cache = state;
    });
    this.queue = run.catch(() => {});
    return run;
  }

  /** Records an upload (and, if it succeeded, as the last successful one). */
  recordUpload(kind: OffsiteKind, record: UploadRecord): Promise<void> {
    return this.update(
      kind,
      record.ok ? { lastUpload: record, lastSuccessfulUpload: record } : { lastUpload: record },
    );
  }
}
