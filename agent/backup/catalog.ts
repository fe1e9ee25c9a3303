/** The local backup catalog: the folder is the truth; each entry's facts come from its header. */
import { chmod, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { type EnvelopeHeader, stanzaKeyIds } from '../../shared/envelope';
import { isBackupName } from '../../shared/storage/names';
import { AppError, unreadableFolder } from '../errors';
import type { Logger } from '../log';
import { mkdirDurable, removeAbandoned, writeSmallFileAtomic } from '../system/atomic-file';
import { withFileUpdateLock } from '../system/json-state';
import { readHeaderOfFile } from './reader';
import { RetentionHold } from './retention-hold';

export interface BackupInfo {
  filename: string;
  createdAt: string;
  size: number;
  keyIds: string[];
  /**
   * The installation that made it, as its header names it: the id's first 8 hex characters. The whole
   * id is not in a file (FORMAT.md "Version 2": it is the DR recovery credential).
   */
  installation: string;
  /** The header's installation tag (FORMAT.md "Version 2"): what `Keyring.owns` compares. */
  installationTag: string;
  kind: string;
  label?: string;
  pinned?: boolean;
  verifiedAt?: string;
  verifyResult?: 'ok' | 'failed';
  verifyError?: string;
  /** The scheduled verification's last check of the copy of this backup at each offsite destination. */
  remoteVerify?: Record<string, RemoteVerifyRecord>;
}

/** One offsite copy's last verification. */
export interface RemoteVerifyRecord {
  verifiedAt: string;
  verifyResult: 'ok' | 'failed';
  verifyError?: string;
}

/** What we remember about a backup beyond its header (verification results, pinning). */
export interface BackupRecord {
  verifiedAt?: string;
  verifyResult?: 'ok' | 'failed';
  verifyError?: string;
  pinned?: boolean;
  remoteVerify?: Record<string, RemoteVerifyRecord>;
  /** The whole file's sha256, taken once as it was written, for the file of this size and mtime only. */
  content?: ContentHash;
}

/** A backup file's sha256 and the file it belongs to (a file replaced under the same name does not match). */
export interface ContentHash {
  sha256: string;
  size: number;
  mtimeMs: number;
}

/**
 * The records file: an object of records by backup name. Fields a later version adds are kept; a file
 * that is not JSON or not of this shape is damaged (set aside, pruning held: see readRecordsFile).
 */
const RecordsFile = z.record(
  z.string(),
  z.looseObject({
    verifiedAt: z.string().optional(),
    verifyResult: z.enum(['ok', 'failed']).optional(),
    verifyError: z.string().optional(),
    pinned: z.boolean().optional(),
    remoteVerify: z
      .record(
        z.string(),
        z.looseObject({
          verifiedAt: z.string(),
          verifyResult: z.enum(['ok', 'failed']),
          verifyError: z.string().optional(),
        }),
      )
      .optional(),
    content: z.looseObject({ sha256: z.string(), size: z.number(), mtimeMs: z.number() }).optional(),
  }),
);

/**
 * What a backup's facts take from its record: the fields this version knows, never the content hash
 * (internal). A record's fields a newer agent added stay in the file for it, unseen here: one named
 * like a header's fact (`kind`, `createdAt`) must not change what retention or the list make of the
 * backup. (`remoteVerify` goes whole: the verification writes it back with a destination's entry added.)
 */
function recordFacts(record: BackupRecord | undefined): Partial<BackupInfo> {
  if (!record) return {};
  const { verifiedAt, verifyResult, verifyError, pinned, remoteVerify } = record;
  return {
    ...(verifiedAt !== undefined ? { verifiedAt } : {}),
    ...(verifyResult !== undefined ? { verifyResult } : {}),
    ...(verifyError !== undefined ? { verifyError } : {}),
    ...(pinned !== undefined ? { pinned } : {}),
    ...(remoteVerify !== undefined ? { remoteVerify } : {}),
  };
}

/** How far after this machine's clock a backup's time may be before it counts as dated in the future. */
export const CLOCK_AHEAD_TOLERANCE_MS = 5 * 60_000;

/**
 * A backup made while the clock was ahead (a wrong year set by hand, a box without a clock battery that
 * a time server corrected later): dated after `now`. It is not "the newest" of anything: health would
 * call the backups fresh for years, and retention would count it and delete real backups made since.
 */
export function datedInFuture(b: { createdAt: string }, now: number): boolean {
  return Date.parse(b.createdAt) > now + CLOCK_AHEAD_TOLERANCE_MS;
}

/**
 * The newest backup of `list` (newest first) that counts as a good one of this installation: its
 * verification did not fail, it is ours (`owns`: the keyring's; another installation's upload or one
 * made with keys we do not hold is not), it is not dated after `now`, and it is not a restore's safety
 * backup (that holds the data the restore replaced, not what runs now). Health and metrics judge
 * freshness by it.
 */
export function newestGoodBackup(
  list: BackupInfo[],
  owns: (installationTag: string, keyIds: readonly string[]) => boolean,
  now: number = Date.now(),
): BackupInfo | undefined {
  return list.find(
    (b) =>
      b.kind !== 'safety' &&
      b.verifyResult !== 'failed' &&
      owns(b.installationTag, b.keyIds) &&
      !datedInFuture(b, now),
  );
}

/** Refuses any name that is not exactly a backup name: nothing else ever reaches the file system. */
export function checkBackupName(name: string): string {
  if (!isBackupName(name)) {
    throw new AppError('invalid_name', 'invalid backup name: expected gem-backup-YYYY-MM-DD-HHMMSS.tar.gz');
  }
  return name;
}

/**
 * The refusal of a delete of a pinned backup (`what`: "it", "its copy on the SFTP server"): a pin
 * promises the backup stays, here and offsite, until its owner unpins it, knowingly. `fileHere`: its
 * file is in the local backups (else it was removed by hand: the page's local list no longer shows it, its
 * offsite lists do, with an Unpin button).
 */
export function pinnedRefusal(name: string, what: string, fileHere = true): AppError {
  const how = fileHere
    ? `the Unpin button, or gem-backup unpin ${name}`
    : `its file here was removed: the Unpin button beside its copy in the page's Offsite list, or gem-backup unpin ${name}`;
  return new AppError('conflict', `${name} is pinned: unpin it first (${how}), then delete ${what}`);
}

/** The backup name for a moment, in UTC: gem-backup-YYYY-MM-DD-HHMMSS.tar.gz. */
export function backupNameFor(date: Date): string {
  const iso = date.toISOString();
  return `gem-backup-${iso.slice(0, 10)}-${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}.tar.gz`;
}

/** When a backup was made, read from its name (UTC): for remote copies whose header we do not have. */
export function createdAtFromName(name: string): string | undefined {
  const m = /^gem-backup-(\d{4})-(\d{2})-(\d{2})-(\d{2})(\d{2})(\d{2})\.tar\.gz$/.exec(name);
  return m ? `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.000Z` : undefined;
}

/** How far after its header's time a backup's name may be: freeName bumps a taken name a second at a time. */
const NAME_BUMP_LIMIT_MS = 60_000;

/**
 * Refuses a backup stored under `name` whose header says it was made at another time (a file renamed by
 * hand): offsite retention and the remote lists date a copy by its name, the local list by its header,
 * so the two would keep and prune it out of turn. The name is the header's time floored to the second,
 * or a little after it (freeName bumps a name already taken); anything else is 422 naming both dates
 * and the name it should have.
 */
export function checkNameFitsHeader(name: string, createdAt: string): void {
  const named = Date.parse(createdAtFromName(name) ?? '');
  const made = Date.parse(createdAt);
  if (Number.isNaN(named) || Number.isNaN(made)) return;
  const floored = Math.floor(made / 1000) * 1000;
  if (named >= floored && named - floored <= NAME_BUMP_LIMIT_MS) return;
  const utc = (ms: number) => `${new Date(ms).toISOString().slice(0, 19).replace('T', ' ')} UTC`;
  throw new AppError(
    'unprocessable',
    `${name} is dated ${utc(named)} by its name, but the backup in it was made ${utc(made)} (its header): a backup is kept or pruned by the date in its name, so it would be out of turn. Upload it under its own name, ${backupNameFor(new Date(made))}; nothing was kept`,
  );
}

export class BackupCatalog {
  private readonly headers = new Map<string, { key: string; header: EnvelopeHeader }>();
  /** The records file as last read, with the size/mtime/inode it had then. */
  private records: { key: string; records: Record<string, BackupRecord> } | undefined;
  /** Record updates, one at a time (see updateRecord). */
  private queue: Promise<unknown> = Promise.resolve();
  /**
   * The retention hold beside the records file: set when a damaged records file is set aside (its pins
   * are unknown), so no prune deletes anything until the owner resumes pruning.
   */
  readonly hold: RetentionHold;

  constructor(
    readonly dir: string,
    private readonly recordsPath: string,
    private readonly log?: Logger,
  ) {
    this.hold = new RetentionHold(join(dirname(recordsPath), 'retention-hold.json'));
  }

  /**
   * Creates the folder and removes temp files left by a crash (they were never listed); temp files
   * a live process is still writing (an upload in the agent while the CLI starts) stay.
   */
  async init(): Promise<void> {
    // Only the agent's user reads backups (encrypted, but their names, sizes and records are its own).
    await mkdirDurable(this.dir, 0o700);
    await this.closeToOthers();
    for (const name of await removeAbandoned(this.dir)) {
      this.log?.warn('removed a temp file left by an interrupted job', { name });
    }
  }

  /**
   * A backups folder made by an earlier version is 0755 with 0644 backups in it: closed to other users
   * here (0700; at each start, a no-op once closed), so that what was written before is as private as
   * what is written now. A folder of another owner (an operator's mount) is left as it is, with a warning.
   */
  private async closeToOthers(): Promise<void> {
    const info = await stat(this.dir);
    if ((info.mode & 0o077) === 0) return;
    const was = (info.mode & 0o777).toString(8);
    try {
      await chmod(this.dir, 0o700);
      this.log?.info('closed the backups folder to other users', { folder: this.dir, was, now: '700' });
    } catch (error) {
      this.log?.warn('the backups folder is open to other users and could not be closed', {
        folder: this.dir,
        mode: was,
        error: (error as NodeJS.ErrnoException).code ?? String(error),
      });
    }
  }

  pathOf(name: string): string {
    return join(this.dir, checkBackupName(name));
  }

  /** A name for a new backup at `date` that no existing backup has (bumped by a second if taken). */
  async freeName(date: Date): Promise<string> {
    const taken = new Set(await readdir(this.dir).catch(() => [] as string[]));
    const t = new Date(Math.floor(date.getTime() / 1000) * 1000);
    while (taken.has(backupNameFor(t))) t.setTime(t.getTime() + 1000);
    return backupNameFor(t);
  }

  async exists(name: string): Promise<boolean> {
    return stat(this.pathOf(name)).then(
      () => true,
      (error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') return false;
        throw error;
      },
    );
  }

  /** Every backup in the folder, newest first. Files whose header cannot be read are left out and logged. */
  async list(): Promise<BackupInfo[]> {
    // Only a folder that is not there means no backups: one the agent cannot read is an error.
    const names = (await readdir(this.dir).catch((error) => unreadableFolder(this.dir, error))).filter(
      isBackupName,
    );
    const infos = await Promise.all(
      names.map((name) =>
        this.info(name).catch((error: unknown) => {
          this.log?.warn('a file in the backups folder is not a readable backup', { name, error });
          return undefined;
        }),
      ),
    );
    return infos
      .filter((i): i is BackupInfo => i !== undefined)
      .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.filename.localeCompare(a.filename));
  }

  /** One backup's facts; `not_found` if there is no such file. */
  async info(name: string): Promise<BackupInfo> {
    const path = this.pathOf(name);
    const s = await stat(path).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') throw new AppError('not_found', `no backup named ${name}`);
      throw error;
    });
    const cacheKey = `${s.size}:${s.mtimeMs}:${s.ino}`;
    let cached = this.headers.get(name);
    if (!cached || cached.key !== cacheKey) {
      cached = { key: cacheKey, header: await readHeaderOfFile(path) };
      this.headers.set(name, cached);
    }
    const { core, stanzas } = cached.header;
    const record = recordFacts((await this.loadRecords())[name]);
    return {
      filename: name,
      createdAt: core.createdAt,
      size: s.size,
      keyIds: stanzaKeyIds(stanzas),
      installation: core.installationPrefix,
      installationTag: core.installationTag,
      kind: core.meta.kind ?? 'manual',
      ...(core.meta.label ? { label: core.meta.label } : {}),
      ...record,
    };
  }

  /**
   * Deletes a backup's file and its record; `not_found` if there is no such file. `unlessPinned`: a
   * backup whose record pins it stays, and the answer is false. The record is read, the file unlinked and
   * the record dropped under the records file's lock, as a pin is written (setPinned): a pin made while
   * a prune runs either comes first and keeps the backup, or finds it gone. Read before, a pin written
   * meanwhile would be deleted with the record, and the backup it promised to keep with it.
   */
  async delete(name: string, options: { unlessPinned?: boolean } = {}): Promise<boolean> {
    const path = this.pathOf(name);
    return this.withRecords(async (records) => {
      if (options.unlessPinned && records[name]?.pinned) return false;
      // unlink, not rm: rm takes an EPERM on a file for a folder and tries to list it (ENOTDIR).
      await unlink(path).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') throw new AppError('not_found', `no backup named ${name}`);
        throw error;
      });
      this.headers.delete(name);
      if (Object.hasOwn(records, name)) {
        delete records[name];
        await this.saveRecords(records);
      }
      return true;
    });
  }

  /**
   * Pins or unpins a backup whose file is here; `not_found` if it is not. Under the records file's lock,
   * as a deletion is: a pin that finds the file deleted (by a prune that ran first) writes nothing, so no
   * pin is left on a record of a backup already gone (offsite retention would keep its copies by it).
   * `beforeChange` is called just before the records are written (it may throw: nothing written).
   */
  async setPinned(name: string, pinned: boolean, beforeChange?: () => void): Promise<void> {
    const path = this.pathOf(name);
    return this.withRecords(async (records) => {
      await stat(path).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') throw new AppError('not_found', `no backup named ${name}`);
        throw error;
      });
      beforeChange?.();
      records[name] = { ...records[name], pinned: pinned || undefined };
      await this.saveRecords(records);
    });
  }

  /** Records the sha256 of a backup file as it is now (size and mtime), so uploads need no hashing pass. */
  async recordSha256(name: string, sha256: string): Promise<void> {
    const s = await stat(this.pathOf(name));
    await this.updateRecord(name, { content: { sha256, size: s.size, mtimeMs: s.mtimeMs } });
  }

  /** The recorded sha256 of a backup file, if one was taken of the file as it is now (same size and mtime). */
  async knownSha256(name: string): Promise<string | undefined> {
    const content = (await this.loadRecords())[name]?.content;
    if (!content) return undefined;
    const s = await stat(this.pathOf(name)).catch(() => undefined);
    return s && s.size === content.size && s.mtimeMs === content.mtimeMs ? content.sha256 : undefined;
  }

  /** Whether the records hold an entry for `name` (its file here or not: a file removed by hand keeps it). */
  async hasRecord(name: string): Promise<boolean> {
    return Object.hasOwn(await this.loadRecords(), name);
  }

  /**
   * The names the records pin, their file here or not: a pinned backup removed by hand (rm) keeps its
   * record, and offsite retention still keeps its copies by it (a pin outlives the local file).
   */
  async pinnedNames(): Promise<Set<string>> {
    const records = await this.loadRecords();
    return new Set(Object.keys(records).filter((name) => records[name]?.pinned === true));
  }

  /**
   * Merges `patch` into a backup's record (undefined removes the record). Updates queue one after
   * another and each starts from the file as it is now, so neither a concurrent update of this process
   * nor one written by another process on the same data dir (the CLI) is lost. A patch that depends on
   * the record (one field of a nested one) is a function of the record as the file holds it, called
   * under the file's lock: a patch computed from a record read before would undo what another process
   * wrote meanwhile.
   */
  updateRecord(
    name: string,
    patch: Partial<BackupRecord> | ((record: BackupRecord | undefined) => Partial<BackupRecord>) | undefined,
  ): Promise<void> {
    return this.withRecords(async (records) => {
      if (patch === undefined) delete records[name];
      else
        records[name] = {
          ...records[name],
          ...(typeof patch === 'function' ? patch(records[name]) : patch),
        };
      await this.saveRecords(records);
    });
  }

  /**
   * Runs `work` on the records as the file holds them now, holding the file's lock: after this
   * process's earlier updates, and across processes too (the service pinning a backup while the CLI
   * records a new one both stay). `work` saves what it changed with saveRecords.
   */
  private withRecords<R>(work: (records: Record<string, BackupRecord>) => Promise<R>): Promise<R> {
    const run = this.queue.then(() =>
      withFileUpdateLock(this.recordsPath, async () => work(await this.readRecordsFile(true))),
    );
    this.queue = run.catch(() => {});
    return run;
  }

  /** Writes the records file (the caller holds its lock: withRecords). */
  private async saveRecords(records: Record<string, BackupRecord>): Promise<void> {
    await writeSmallFileAtomic(this.recordsPath, `${JSON.stringify(records, null, 2)}\n`, 0o600);
    this.records = undefined;
  }

  /** The records as the file holds them now; re-read only when the file changed (another process wrote it). */
  private async loadRecords(): Promise<Record<string, BackupRecord>> {
    const s = await stat(this.recordsPath).catch(() => undefined);
    const key = s ? `${s.size}:${s.mtimeMs}:${s.ino}` : 'missing';
    if (!this.records || this.records.key !== key) {
      this.records = { key, records: await this.readRecordsFile() };
    }
    return this.records.records;
  }

  /**
   * Reads the records file; a missing one is empty. An unreadable one (EACCES, EIO) is an error, never
   * taken as empty. A damaged one (not JSON, not an object of records) is set aside as
   * `<file>.damaged-<time>` under the file's update lock (never written over) and reads as empty, and
   * pruning is held (`hold`): its pins are unknown, so no backup it pinned may be pruned meanwhile.
   * `locked`: the caller holds the file's update lock already.
   */
  private async readRecordsFile(locked = false): Promise<Record<string, BackupRecord>> {
    let text: string;
    try {
      text = await readFile(this.recordsPath, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw error;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    const parsed = RecordsFile.safeParse(json);
    if (parsed.success) return parsed.data as Record<string, BackupRecord>;
    // Read again under the lock: another process may have set it aside, or written a good file, since.
    if (!locked) return withFileUpdateLock(this.recordsPath, () => this.readRecordsFile(true));
    await this.setAsideDamaged();
    return {};
  }

  /** Sets the damaged records file aside (the caller holds its update lock) and holds pruning. */
  private async setAsideDamaged(): Promise<void> {
    const stamp = new Date().toISOString().replaceAll(':', '');
    let aside = `${this.recordsPath}.damaged-${stamp}`;
    for (let n = 2; await exists(aside); n++) aside = `${this.recordsPath}.damaged-${stamp}-${n}`;
    // The hold first: a crash between the two leaves pruning held and the damaged file in place.
    await this.hold.hold(basename(aside));
    await rename(this.recordsPath, aside);
    this.records = undefined;
    this.log?.error(
      'the backup records file was damaged: it is set aside and pruning is paused until you resume it (pins may be lost)',
      { file: this.recordsPath, setAside: aside },
    );
  }
}

function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
