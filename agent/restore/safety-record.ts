/**
 * The record of a restore's safety backup (restore-safety-<id>.json in the data dir), written before the
 * safety backup's file is: a restore killed before its swap committed (before the swap, or during it: its
 * journal is rolled back) changed nothing, and the next start removes the safety backup it made, as the
 * restore itself would have (else it pushes an earlier restore's out of the newest three kept). The record
 * stays until the swap committed; the restore removes it then, and a committed restore's cleanup before
 * its journal goes: the safety backup of the restore whose journal says committed is never removed by it.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { BackupCatalog } from '../backup/catalog';
import { dataPaths } from '../config';
import { isAppError } from '../errors';
import type { Logger } from '../log';
import { removeSmallFile, writeSmallFileAtomic } from '../system/atomic-file';

/** A record's file name; the id is the restore's (restoreNames: 8 hex digits). */
const RECORD_NAME = /^restore-safety-([0-9a-f]+)\.json$/;

const recordSchema = z.object({
  format: z.literal('gem-restore-safety'),
  version: z.literal(1),
  id: z.string(),
  safetyBackup: z.string(),
});

function safetyRecordPath(dataDir: string, id: string): string {
  return join(dataDir, `restore-safety-${id}.json`);
}

/** Writes restore `id`'s record (temp, fsync, rename): the name its safety backup is about to be written under. */
export async function writeSafetyRecord(dataDir: string, id: string, safetyBackup: string): Promise<void> {
  const record = { format: 'gem-restore-safety', version: 1, id, safetyBackup };
  await writeSmallFileAtomic(safetyRecordPath(dataDir, id), `${JSON.stringify(record, null, 2)}\n`, 0o600);
}

/** Removes restore `id`'s record, if there is one. */
export async function clearSafetyRecord(dataDir: string, id: string): Promise<void> {
  await removeSmallFile(safetyRecordPath(dataDir, id));
}

/**
 * The readable records of restores other than `committedId` (whose swap committed): those of restores
 * that did not commit, once none can be running. One that cannot be read is skipped (logged, if `log`).
 */
async function uncommittedRecords(
  dataDir: string,
  committedId: string | undefined,
  log?: Logger,
): Promise<z.infer<typeof recordSchema>[]> {
  const records: z.infer<typeof recordSchema>[] = [];
  for (const file of await readdir(dataDir)) {
    const id = RECORD_NAME.exec(file)?.[1];
    if (id === undefined || id === committedId) continue;
    try {
      records.push({ ...recordSchema.parse(JSON.parse(await readFile(join(dataDir, file), 'utf8'))), id });
    } catch {
      log?.error(`the record of a restore's safety backup (${file}) is unreadable: delete it by hand`);
    }
  }
  return records;
}

/**
 * Whether a readable record of a restore other than `committedId` is in the data dir: with the job lock
 * free, that restore's process died (a running restore holds the lock), and its safety backup is to go.
 */
export async function hasUncommittedSafetyRecord(dataDir: string, committedId?: string): Promise<boolean> {
  return (await uncommittedRecords(dataDir, committedId)).length > 0;
}

/**
 * Once no restore can be running (a start, the database watch or a restore under the job lock:
 * recoverInterruptedRestore, settleEarlierRestore): removes the safety backup each record names, through
 * the catalog (its record in backup-records.json goes too), then the record; never the record of restore
 * `committedId`, whose journal says its swap committed (its cleanup removes the record, the safety backup
 * stays). One pinned meanwhile stays, and so does a file of that name that is no safety backup; one never
 * written (killed while it was made) leaves only the record to remove. A record that cannot be read stays,
 * logged.
 */
export async function removeRecordedSafetyBackups(
  dataDir: string,
  log: Logger,
  committedId?: string,
): Promise<void> {
  const paths = dataPaths(dataDir);
  const catalog = new BackupCatalog(paths.backups, paths.backupRecords, log);
  for (const record of await uncommittedRecords(dataDir, committedId, log)) {
    const { id, safetyBackup: name } = record;
    const info = await catalog.info(name).catch((error: unknown) => {
      if (isAppError(error, 'not_found') || isAppError(error, 'invalid_name')) return undefined;
      throw error;
    });
    if (info && info.kind !== 'safety') {
      log.warn("left alone: the backup a restore's record names is not a safety backup", {
        restoreId: id,
        backup: name,
      });
    } else if (info) {
      // The pin is read with the deletion, under the records' lock: one made a moment ago (the CLI
      // beside the agent) keeps it too.
      const removed = await catalog.delete(name, { unlessPinned: true });
      log.info(
        removed
          ? 'removed the safety backup of an interrupted restore that did not commit: nothing was changed'
          : 'kept the safety backup of an interrupted restore that did not commit: it is pinned',
        { restoreId: id, safetyBackup: name },
      );
    }
    await clearSafetyRecord(dataDir, id);
  }
}
