/**
 * The record of a restore's safety backup (restore-safety-<id>.json in the data dir), written before the
 * safety backup's file is: a restore killed before its swap changed nothing, and the next start removes
 * the safety backup it made, as the restore itself would have (else it pushes an earlier restore's out of
 * the newest three kept). The restore removes the record just before its swap: a safety backup of a
 * restore that may have committed is never removed by it.
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
 * At start, once no restore can be running (recoverInterruptedRestore): removes the safety backup each
 * record names, through the catalog (its record in backup-records.json goes too), then the record. One
 * pinned meanwhile stays, and so does a file of that name that is no safety backup; one never written
 * (killed while it was made) leaves only the record to remove. A record that cannot be read stays, logged.
 */
export async function removeRecordedSafetyBackups(dataDir: string, log: Logger): Promise<void> {
  const paths = dataPaths(dataDir);
  const catalog = new BackupCatalog(paths.backups, paths.backupRecords, log);
  for (const file of await readdir(dataDir)) {
    const id = RECORD_NAME.exec(file)?.[1];
    if (id === undefined) continue;
    let record: z.infer<typeof recordSchema>;
    try {
      record = recordSchema.parse(JSON.parse(await readFile(join(dataDir, file), 'utf8')));
    } catch {
      log.error(`the record of a restore's safety backup (${file}) is unreadable: delete it by hand`);
      continue;
    }
    const name = record.safetyBackup;
    const info = await catalog.info(name).catch((error: unknown) => {
      if (isAppError(error, 'not_found') || isAppError(error, 'invalid_name')) return undefined;
      throw error;
    });
    if (info?.pinned) {
      log.info('kept the safety backup of a restore interrupted before its swap: it is pinned', {
        restoreId: id,
        safetyBackup: name,
      });
    } else if (info && info.kind !== 'safety') {
      log.warn("left alone: the backup a restore's record names is not a safety backup", {
        restoreId: id,
        backup: name,
      });
    } else if (info) {
      await catalog.delete(name);
      log.info('removed the safety backup of a restore interrupted before its swap: nothing was changed', {
        restoreId: id,
        safetyBackup: name,
      });
    }
    await clearSafetyRecord(dataDir, id);
  }
}
