/**
 * The record of what a restore made of the server's roles (restore-roles-<id>.json in the data dir),
 * written before each role is created or membership granted: a restore killed before its swap
 * committed leaves them to the next start, which takes them back. A restore that committed keeps them
 * (they own the restored objects): its record goes with its journal (swap.ts cleanupPrevious). While a
 * journal that cannot be read is on disk, no record is acted on (swap.ts takeBackUncommittedRoles).
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import type { Logger } from '../log';
import { removeSmallFile, writeSmallFileAtomic } from '../system/atomic-file';
import type { PgConnection } from '../system/postgres-tools';
import { dropRestoreRoles, type MadeRoles } from './database';

/** A record's file name; the id is the restore's (restoreNames: 8 hex digits). */
const RECORD_NAME = /^restore-roles-([0-9a-f]+)\.json$/;

const recordSchema = z.object({
  format: z.literal('gem-restore-roles'),
  version: z.literal(1),
  id: z.string(),
  created: z.array(z.string()),
  granted: z.array(z.object({ role: z.string(), member: z.string(), grantedBy: z.string().optional() })),
});

export function roleRecordPath(dataDir: string, id: string): string {
  return join(dataDir, `restore-roles-${id}.json`);
}

/** Writes restore `id`'s record (temp, fsync, rename): the roles and memberships it made or is about to make. */
export async function writeRoleRecord(dataDir: string, id: string, made: MadeRoles): Promise<void> {
  const record = {
    format: 'gem-restore-roles',
    version: 1,
    id,
    created: made.created,
    granted: made.granted,
  };
  await writeSmallFileAtomic(roleRecordPath(dataDir, id), `${JSON.stringify(record, null, 2)}\n`, 0o600);
}

/** Removes restore `id`'s record, if there is one. */
export async function clearRoleRecord(dataDir: string, id: string): Promise<void> {
  await removeSmallFile(roleRecordPath(dataDir, id));
}

/** The file names of the records in the data dir (restore-roles-<id>.json), with their restores' ids. */
export async function roleRecords(dataDir: string): Promise<{ name: string; id: string }[]> {
  return (await readdir(dataDir)).flatMap((name) => {
    const id = RECORD_NAME.exec(name)?.[1];
    return id === undefined ? [] : [{ name, id }];
  });
}

/**
 * At start (and once a database outage is over), after the staging leftovers are dropped (their
 * objects are owned by these roles): takes back what each recorded restore made of the roles, by
 * dropRestoreRoles' rules (only a role still as the restore made it; one something depends on is kept,
 * logged), then removes its record. Never restore `committedId`'s, whose swap committed; the caller
 * makes sure no journal that cannot be read is on disk (else any record may be a committed restore's).
 * A record that cannot be read stays, logged; the database failing throws, and the records stay for the
 * next time.
 */
export async function takeBackRecordedRoles(
  conn: PgConnection,
  dataDir: string,
  log: Logger,
  committedId?: string,
): Promise<void> {
  for (const { name, id } of await roleRecords(dataDir)) {
    if (id === committedId) continue;
    let record: z.infer<typeof recordSchema>;
    try {
      record = recordSchema.parse(JSON.parse(await readFile(join(dataDir, name), 'utf8')));
    } catch {
      log.error(
        `the record of the roles a restore created (${name}) is unreadable: check the server's roles, then delete it`,
      );
      continue;
    }
    await takeBackRoles(conn, dataDir, log, id, record);
  }
}

/**
 * Takes back what restore `id` made of the roles (dropRestoreRoles: only a role still as it made it;
 * one something depends on is kept, its line logged), then removes its record. The database failing
 * throws, and the record stays for the next start.
 */
export async function takeBackRoles(
  conn: PgConnection,
  dataDir: string,
  log: Logger,
  id: string,
  made: MadeRoles,
): Promise<void> {
  const kept = await dropRestoreRoles(conn, made);
  for (const line of kept) log.warn(line);
  if (made.created.length + made.granted.length > 0)
    log.info('took back the roles and memberships a restore that did not commit created', {
      restoreId: id,
      roles: made.created,
      memberships: made.granted.map((m) => `${m.role} to ${m.member}`),
    });
  await clearRoleRecord(dataDir, id);
}
