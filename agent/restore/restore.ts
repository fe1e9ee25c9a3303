/** Restore as a job: check, safety backup, stage, swap, restart, cleanup; any failure leaves the live system as it was (and no safety backup). */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, stat, statfs } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import {
  type EnvelopeHeader,
  stanzaKeyIds,
  unwrapWithMasterKeys,
  verifyHeaderMac,
} from '../../shared/envelope';
import type { Agent } from '../agent';
import { FOLDER_ROOTS, type FolderRoot } from '../backup/archive';
import { checkBackupName, newestGoodBackup } from '../backup/catalog';
import { backupDeps, createBackup } from '../backup/create';
import { DUMP_NAME, type Manifest } from '../backup/manifest';
import { prepareArchiveHasher } from '../backup/member-hasher';
import { type ReadOptions, readBackup, readHeaderOfFile, readManifestOf } from '../backup/reader';
import { busyBackupNames, pruneLocal } from '../backup/retention';
import { UnfinishedRecoveryFile } from '../dr/unfinished';
import { AppError, describeError, isAppError } from '../errors';
import type { Job, JobContext } from '../jobs/runner';
import { type Keyring, shortInstallationId } from '../keys/keyring';
import type { Logger } from '../log';
import { TEMP_PREFIX } from '../system/atomic-file';
import type { PgConnection } from '../system/postgres-tools';
import { runProcess } from '../system/spawn';
import { checkCopyable, copiedBytes } from './copy-tree';
import { compareRowCounts, StagingRowCounter } from './counts';
import {
  checkRights,
  checkVersions,
  copyAgentSchema,
  copyDatabaseProperties,
  createStagingDatabase,
  DISK_FULL,
  databaseDiskFull,
  databaseSize,
  describeLost,
  dropDatabase,
  listDump,
  type MadeRoles,
  ownDatabaseSize,
  prepareRoles,
  RESTORE_JOBS,
  restoreDump,
  serverIsLocal,
  serverStorage,
} from './database';
import { extractionSinks, type LiveFolder } from './extract';
import { LastRestoreStore } from './last-restore';
import { clearRoleRecord, takeBackRecordedRoles, takeBackRoles, writeRoleRecord } from './role-record';
import { clearSafetyRecord, writeSafetyRecord } from './safety-record';
import {
  checkStageable,
  cleanupAfterReport,
  committedRestoreId,
  type RestoreFaults,
  removeStagingFolder,
  restoreNames,
  restoreSettled,
  settleEarlierRestore,
  swapIntoPlace,
} from './swap';

export type { RestoreFaults } from './swap';
export { recoverInterruptedRestore, restoreSettled } from './swap';

export interface RestoreOptions {
  /** Keep the replaced database and folders aside (only the newest), instead of dropping them. */
  keepPrevious?: boolean;
  /** Skip the safety backup: only for a recovery onto an installation with nothing worth keeping. */
  skipSafetyBackup?: boolean;
  /**
   * Restore a backup another installation made than the one whose keys are active (this box's own
   * from before a keys import, another controller's): refused unless asked for (see checkInstallation).
   */
  otherInstallation?: boolean;
  /** How the file key is found (DR recovery hands it over); default: the keyring's master keys. */
  resolveFileKey?: ReadOptions['resolveFileKey'];
  /** Deliberate fault-injection points (tests, drills). */
  faults?: RestoreFaults;
}

export interface RestoreResult {
  restoredFrom: string;
  backupCreatedAt: string;
  safetyBackup?: string;
  /** Older safety backups this restore's retention deleted (only SAFETY_BACKUPS_KEPT are kept). */
  safetyBackupsPruned?: string[];
  tables: number;
  rows: number;
  keptPrevious?: string;
  restart: { ran: boolean; ok?: boolean; error?: string };
  /** What the owner should know of the database's roles: roles created, owners or privileges not kept. */
  warnings?: string[];
}

function formatBytes(n: number): string {
  return n >= 1073741824 ? `${(n / 1073741824).toFixed(1)} GiB` : `${(n / 1048576).toFixed(1)} MiB`;
}

/** Free bytes for an unprivileged writer on the file system holding `dir`, and its size. */
async function diskOf(dir: string): Promise<{ free: number; total: number }> {
  const s = await statfs(dir);
  return { free: Number(s.bavail) * Number(s.bsize), total: Number(s.blocks) * Number(s.bsize) };
}

/**
 * Where the database's files are, when their file system can be checked from here: the server runs
 * on this machine (a Unix socket or loopback), tells where (superuser or pg_read_all_settings; the
 * embedded cluster's user is a superuser) and the folder is visible. Otherwise no `dir`, and a debug
 * line says why. `maxWalBytes`: the server's max_wal_size (0 if unknown).
 */
async function databaseStorage(
  conn: PgConnection,
  log: Logger,
): Promise<{ local: boolean; dir?: string; maxWalBytes: number }> {
  const skip = (local: boolean, why: string, maxWalBytes = 0) => {
    log.debug(`the free space of the database's disk is not checked: ${why}`);
    return { local, maxWalBytes };
  };
  if (!serverIsLocal(conn)) return skip(false, `its server ${conn.host} is not on this machine`);
  let found: Awaited<ReturnType<typeof serverStorage>>;
  try {
    found = await serverStorage(conn);
  } catch (error) {
    return skip(true, `the server's settings could not be read (${describeError(error).message})`);
  }
  if (!found.dir) {
    return skip(
      true,
      `the database user ${conn.user} may not read data_directory (pg_read_all_settings)`,
      found.maxWalBytes,
    );
  }
  const info = await stat(found.dir).catch(() => undefined);
  if (!info?.isDirectory()) {
    return skip(true, `its data directory ${found.dir} is not visible here`, found.maxWalBytes);
  }
  return { local: true, dir: found.dir, maxWalBytes: found.maxWalBytes };
}

/** What a restore writes where: the bytes each folder's file system must have free, and what for. */
interface SpaceNeed {
  dir: string;
  bytes: number;
  what: string;
}

/** What a file or folder takes on disk at least: its bytes rounded up to whole 4 KiB blocks. */
const BLOCK = 4096;
const onDisk = (bytes: number) => Math.ceil(Math.max(bytes, 1) / BLOCK) * BLOCK;

/**
 * What the backup unpacks to, from its manifest's members (read before any other member, and each
 * member is stopped at its manifest size): the dump, written into the work folder, and each folder
 * root's files and folders, written into its staging folder beside the live one. Never from the
 * backup file's size: a member of zeros compresses 1000:1.
 */
function unpackedBytes(manifest: Pick<Manifest, 'members'>): { dump: number } & Record<FolderRoot, number> {
  const bytes = { dump: 0, scripts: 0, config: 0 };
  for (const member of manifest.members) {
    if (member.path === DUMP_NAME) {
      bytes.dump += member.size;
      continue;
    }
    const root = member.path.split('/')[0] as FolderRoot;
    // Anything else is refused by the extraction before a byte of it is written.
    if (!(FOLDER_ROOTS as readonly string[]).includes(root)) continue;
    bytes[root] += member.type === 'file' ? onDisk(member.size) : BLOCK;
  }
  return bytes;
}

/** A backup's file size, and the database size its manifest recorded (none before it was recorded). */
interface SizedBackup {
  size: number;
  databaseBytes?: number | undefined;
}

/**
 * The newest backup of this installation here, not a safety backup (that holds what a restore replaced,
 * not what runs now), with the database size its manifest recorded: what a backup of the live state
 * came to last. Undefined when there is none.
 */
async function newestOwnBackup(agent: Agent, log: Logger): Promise<SizedBackup | undefined> {
  const newest = newestGoodBackup(await agent.catalog.list(), (tag, keyIds) =>
    agent.keyring.owns(tag, keyIds),
  );
  if (!newest) return undefined;
  const databaseBytes = await readManifestOf(
    agent.catalog.pathOf(newest.filename),
    agent.keyring.masterKeys,
  ).then(
    (manifest) => manifest.postgres.databaseBytes,
    (error: unknown) => {
      log.debug("the newest backup's manifest was not read: the database's growth since is not counted", {
        filename: newest.filename,
        error,
      });
      return undefined;
    },
  );
  return { size: newest.size, databaseBytes };
}

/**
 * About what a backup of the live state (the safety backup) comes to: `reference`'s file, plus what the
 * database has grown since it was made (the live size against the recorded one), counted uncompressed.
 */
function liveBackupBytes(reference: SizedBackup, liveDatabase: number | undefined): number {
  if (reference.databaseBytes === undefined || liveDatabase === undefined) return reference.size;
  return reference.size + Math.max(0, liveDatabase - reference.databaseBytes);
}

/** statfs's type of overlayfs: a container's own file system. */
const OVERLAYFS = 0x794c7630;

/**
 * Whether the swap may copy live folder `folder` aside instead of renaming it: a mount point (known
 * now), or a folder on overlayfs (a folder of the image's layer: known only when the swap's rename is
 * refused, so counted as copied).
 */
async function mayBeCopied(folder: { live: string; swap: 'rename' | 'copy' }): Promise<boolean> {
  if (folder.swap === 'copy') return true;
  const disk = await statfs(folder.live).catch(() => undefined);
  return disk?.type === OVERLAYFS;
}

/**
 * Refuses (`no_space`) when a file system lacks what the restore will write on it; needs on one file
 * system (the data dir's and the database's, often) add up.
 */
async function checkFreeSpace(needs: SpaceNeed[]): Promise<void> {
  const byDevice = new Map<number, { dir: string; bytes: number; whats: string[] }>();
  for (const need of needs) {
    const device = (await stat(need.dir)).dev;
    const same = byDevice.get(device) ?? { dir: need.dir, bytes: 0, whats: [] };
    byDevice.set(device, same);
    same.bytes += need.bytes;
    if (need.bytes > 0) same.whats.push(`${need.what}, about ${formatBytes(need.bytes)}`);
  }
  for (const { dir, bytes, whats } of byDevice.values()) {
    const { free } = await diskOf(dir);
    if (free < bytes) {
      throw new AppError(
        'no_space',
        `not enough free disk space to restore: about ${formatBytes(bytes)} needed, ${formatBytes(free)} free ` +
          `on the file system of ${dir} (${whats.join('; ')}); nothing was changed; free some space ` +
          '(old backups, logs) and try again',
        { details: { dir, neededBytes: bytes, freeBytes: free } },
      );
    }
  }
}

/** A file system with less than 5 % (at most 64 MiB) free: what PostgreSQL may well have stopped on. */
async function nearlyFull(dir: string): Promise<{ free: number; total: number } | undefined> {
  const disk = await diskOf(dir).catch(() => undefined);
  return disk && disk.free < Math.min(64 * 1048576, disk.total * 0.05) ? disk : undefined;
}

/**
 * A failure of the staging that a full database disk explains, said as such (`no_space`): a server
 * error of disk_full (SQLSTATE 53100, "could not extend file"), or the server lost while the file
 * system of its data directory (when known) is nearly full. Undefined for any other failure.
 */
async function diskFullFailure(
  error: unknown,
  databaseDir: string | undefined,
): Promise<AppError | undefined> {
  if (error instanceof AppError && error.code === 'no_space') return undefined;
  for (let e = error, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (code === '53100') return databaseDiskFull(typeof message === 'string' ? message : 'disk full');
    e = (e as { cause?: unknown }).cause;
  }
  if (error instanceof AppError && error.code === 'restore_failed') {
    const line = error.message.split(/\n| \| /).find((l) => DISK_FULL.test(l));
    if (line) return databaseDiskFull(line.trim());
  }
  if (databaseDir && error instanceof AppError && error.code === 'dependency_down') {
    const disk = await nearlyFull(databaseDir);
    if (disk) {
      return new AppError(
        'no_space',
        `the database's disk is full (${formatBytes(disk.free)} free of ${formatBytes(disk.total)} on the file ` +
          `system of ${databaseDir}): PostgreSQL stopped during the restore; nothing was changed: GEM's database ` +
          `is as before; free some space there (PostgreSQL needs it to run again) and try again`,
        { cause: error },
      );
    }
  }
  return undefined;
}

/** A damaged backup the check pass refused: nothing was changed, and another copy is the way on. */
function damagedRefused(error: AppError): AppError {
  return new AppError(
    'corrupt_backup',
    `${error.message}; nothing was changed: restore another copy (an older backup, or this one from another destination)`,
    { cause: error, ...(error.details ? { details: error.details } : {}) },
  );
}

/** How checkInstallation's refusal says to ask for such a backup; the CLI puts its user's own command in its place. */
export const OTHER_INSTALLATION_HINT =
  '(`gem-backup restore NAME --other-installation`, or "otherInstallation": true in the request)';

/**
 * The installation that made a backup (its header's tag: a file holds no installation id, FORMAT.md
 * "Version 2"), checked against the keyring's: a backup of another installation is refused (409
 * `conflict`) unless `allowed`. After a keys import this box's
 * own backups from before it are another installation's, and the newest on its destinations: restoring
 * one by mistake would leave the box's own data under the imported identity. One the keyring holds no
 * key for is left to the read, whose error says which keys file to import.
 */
export async function checkInstallation(
  keyring: Keyring,
  header: EnvelopeHeader,
  allowed = false,
): Promise<void> {
  if (allowed || keyring.isActive(header.core.installationTag)) return;
  const held = new Set(keyring.masterKeys.map((k) => k.id));
  if (!stanzaKeyIds(header.stanzas).some((id) => held.has(id))) return;
  // Only a header that is the backup's own says who made it: a damaged one (an installation tag with a
  // flipped bit) is left to the read, which refuses it as damaged.
  const genuine = await unwrapWithMasterKeys(header.stanzas, keyring.masterKeys)
    .then((fileKey) => verifyHeaderMac(header, fileKey))
    .then(
      () => true,
      () => false,
    );
  if (!genuine) return;
  throw new AppError(
    'conflict',
    `this backup was made by installation ${header.core.installationPrefix}…, not by installation ` +
      `${shortInstallationId(keyring.installationId)} whose keys are active here, so nothing was changed: restore the newest ` +
      "copy not marked 'another installation' instead, or, if you do want this one's data here, ask for " +
      `it explicitly ${OTHER_INSTALLATION_HINT}`,
    { details: { otherInstallation: true } },
  );
}

/**
 * Restores the backup at `path` (in the catalog or not: DR and offsite restores pass their own).
 * Every check runs before anything is touched; the live database and folders change only in the
 * swap, which undoes itself on failure. A restore that ends with nothing changed removes its safety backup.
 */
export async function restoreFromFile(
  agent: Agent,
  ctx: JobContext,
  path: string,
  options: RestoreOptions & { filename?: string } = {},
): Promise<RestoreResult> {
  // The checksum worker of the check pass boots (~35-60 ms, on the other core) during the checks before it.
  prepareArchiveHasher();
  const { sources } = agent;
  const conn = sources.conn;
  const label = options.filename ?? basename(path);
  const size = (
    await stat(path).catch(() => {
      throw new AppError('not_found', `backup file not found: ${label}`);
    })
  ).size;
  // Whose backup it is, before anything else: a refused one touches nothing (no safety backup, no staging).
  const header = await readHeaderOfFile(path).catch((error: unknown) => {
    throw error instanceof AppError && error.code === 'corrupt_backup' ? damagedRefused(error) : error;
  });
  await checkInstallation(agent.keyring, header, options.otherInstallation);
  // A previous restore's cleanup still running here must end before this one's journal is written.
  await restoreSettled(agent.config.dataDir);
  // An earlier committed restore's journal, its cleanup failed, is not replaced by this one's while it
  // names what it replaced: cleaned up again, or carried to the leftovers file (before the disk check).
  await settleEarlierRestore({ config: agent.config, sources, log: ctx.log });
  // How long each step took, logged: where a restore's time goes is then visible in the agent's log.
  const timed = async <T>(step: string, run: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    try {
      return await run();
    } finally {
      ctx.log.info('restore step', { step, ms: Math.round(performance.now() - started) });
    }
  };
  const readOptions = {
    keys: agent.keyring.masterKeys,
    signal: ctx.signal,
    ...(options.resolveFileKey ? { resolveFileKey: options.resolveFileKey } : {}),
  };

  // 1. Check: nothing live is touched until the file, the server and the disk are known to be fit.
  // The disk check itself waits for the backup's manifest (its first member, read before any other).
  ctx.phase('check', size);
  await checkRights(conn);
  await mkdir(agent.paths.work, { recursive: true });
  const storage = await databaseStorage(conn, ctx.log);
  const databaseDir = storage.dir;
  // The safety backup is a backup of the live state, not of the backup restored: its size comes from the
  // newest backup of this installation here (or, with none, the one restored) and the database's growth since.
  const [ownNewest, liveDatabase] = options.skipSafetyBackup
    ? [undefined, undefined]
    : await Promise.all([
        newestOwnBackup(agent, ctx.log),
        ownDatabaseSize(conn).catch((error: unknown) => {
          ctx.log.debug("the live database's size is unknown: its growth is not counted", { error });
          return undefined;
        }),
      ]);
  /**
   * What the backup unpacks to, where it is staged (the manifest's member sizes, not the file's): the
   * dump in the work folder; the safety backup (liveBackupBytes) in the backups folder, which may be a
   * disk of its own, and meanwhile its dump and folder copies in the work folder (about as much again,
   * beside the restored dump); each folder root's members in its staging folder beside the live one,
   * and, for a live folder swapped by copy, its live entries copied aside there too (the swap's first
   * step) and the staged entries copied into it. The database's file system holds the staging copy:
   * its size when the backup was made (the manifest's; a backup made before it was recorded: the live
   * database's), and its WAL (as much again, up to max_wal_size, before a checkpoint recycles it). A
   * database on this machine whose folder is not known is counted on the data dir's file system (as
   * before); one on another machine not. Checked once the manifest is read, before any other member
   * is written.
   */
  const checkSpace = async (
    manifest: Manifest,
    folders: { root: FolderRoot; staging: string; live: string; swap: 'rename' | 'copy' }[],
  ) => {
    const required = options.faults?.requiredBytes;
    const unpacked = unpackedBytes(manifest);
    const safety = options.skipSafetyBackup
      ? 0
      : liveBackupBytes(ownNewest ?? { size, databaseBytes: manifest.postgres.databaseBytes }, liveDatabase);
    const needs: SpaceNeed[] = [
      { dir: agent.paths.work, bytes: required ?? unpacked.dump, what: "the backup's database dump" },
    ];
    if (required === undefined) {
      needs.push({ dir: agent.paths.backups, bytes: safety, what: 'the safety backup of the live state' });
      needs.push({
        dir: agent.paths.work,
        bytes: safety,
        what: "the safety backup's dump and folder copies",
      });
      for (const folder of folders) {
        const staged = unpacked[folder.root];
        needs.push({ dir: folder.staging, bytes: staged, what: `the ${folder.root} folder's staging copy` });
        if (await mayBeCopied(folder)) {
          // A folder swapped by copy has its live entries copied aside first, beside it (copyLiveAside),
          // then is emptied and the staged entries copied into it: emptying a mount point frees its live
          // entries, an overlayfs folder's entries of the image's layer free nothing (they are only hidden).
          const live = await copiedBytes(folder.live);
          needs.push({
            dir: dirname(folder.live),
            bytes: live,
            what: `the live ${folder.root} folder copied aside`,
          });
          needs.push({
            dir: folder.live,
            bytes: folder.swap === 'copy' ? Math.max(0, staged - live) : staged,
            what: `the ${folder.root} folder's restored entries`,
          });
        }
      }
    }
    if (required === undefined && storage.local) {
      const database = manifest.postgres.databaseBytes ?? (await databaseSize(conn));
      if (databaseDir) {
        needs.push({
          dir: databaseDir,
          bytes: database + Math.min(database, storage.maxWalBytes),
          what: 'the staging database and its WAL',
        });
      } else needs.push({ dir: agent.paths.work, bytes: database, what: 'the staging database' });
    }
    ctx.log.debug('restore disk check', {
      needs,
      fromManifest: manifest.postgres.databaseBytes !== undefined,
      safetyFrom: ownNewest ? 'the newest backup here' : 'the backup restored',
    });
    await checkFreeSpace(needs);
  };

  let safetyBackup: string | undefined;
  const id = randomBytes(4).toString('hex');
  const names = await restoreNames(sources, id);
  for (const folder of names.folders) {
    await checkStageable(folder);
    // A live folder that is a mount point is swapped by copying its entries: all must be copyable.
    if (folder.swap === 'copy') await checkCopyable(folder.live);
  }
  const work = await mkdtemp(join(agent.paths.work, `${TEMP_PREFIX}restore-`));
  let stagingDb: Promise<void> | undefined;
  let keepStaging = false;
  // After the commit the staging names are the live ones: nothing of them is left to drop.
  let swapped = false;
  // Set once the swap committed: from then on the live data is the restored one, and the safety backup stays.
  let committed = false;
  let cleanupAfter: (() => void) | undefined;
  let counter: StagingRowCounter | undefined;
  // What this restore made of the server's roles, as last recorded (role-record.ts): taken back if it
  // does not commit.
  let madeRoles: MadeRoles | undefined;
  try {
    // The check pass is also the extraction: the file is decrypted once, every member checked
    // against the manifest as it is written into the work and staging folders (never the live
    // ones); if any check fails they are removed and nothing else was touched. The empty staging
    // database is created meanwhile (0.1-0.2 s off the restore's time): a failed check drops it
    // below, and after a crash the next start's recovery drops it, once it has ended the server's
    // session of a CREATE DATABASE still running (endDatabaseCreations).
    stagingDb = timed('createdb', () => createStagingDatabase(conn, names.staging));
    stagingDb.catch(() => {}); // awaited after the pass; the pass's own error comes first
    for (const folder of names.folders) await mkdir(folder.staging, { mode: 0o755 });
    const dumpPath = join(work, DUMP_NAME);
    const folders = Object.fromEntries(names.folders.map((f) => [f.root, f.staging])) as Record<
      'scripts' | 'config',
      string
    >;
    const live: Partial<Record<'scripts' | 'config', LiveFolder>> = {};
    for (const folder of names.folders) {
      const info = await stat(folder.live).catch(() => undefined);
      if (info?.isDirectory()) live[folder.root] = { mode: info.mode, uid: info.uid, gid: info.gid };
    }
    const { openMember, onDirectory, onSymlink, finish } = extractionSinks({ dumpPath, folders, live });
    // Where the member being read is staged, so that a disk filling up is named where it filled: the
    // work folder (the dump), or beside the live folder (a folder's members, in its staging copy).
    let filling = { dir: agent.paths.work, what: '' };
    const stagedAt = (member: { path: string }) => {
      const folder = names.folders.find((f) => member.path.split('/')[0] === f.root);
      filling = folder
        ? { dir: dirname(folder.staging), what: ` (the ${folder.root} folder's staging copy)` }
        : { dir: agent.paths.work, what: '' };
    };
    const { manifest } = await timed('check-and-extract', async () => {
      const read = await readBackup(path, {
        ...readOptions,
        openMember: (member, header) => {
          stagedAt(member);
          return openMember(member, header);
        },
        onDirectory: (member, header) => {
          stagedAt(member);
          return onDirectory(member, header);
        },
        onSymlink,
        onManifest: async (m) => {
          await checkVersions(conn, sources.tools, m.postgres);
          await checkSpace(m, names.folders);
        },
        onProgress: (b) => ctx.progress(b),
      });
      // Folders' mtimes and fsyncs, once every file in them is written (and fsynced) and checked.
      await finish();
      return read;
    }).catch((error: NodeJS.ErrnoException) => {
      // Refused before anything live was touched: say so, and what to do instead.
      if (error instanceof AppError && error.code === 'corrupt_backup') throw damagedRefused(error);
      if (error.code === 'ENOSPC' || error.code === 'EDQUOT')
        throw new AppError(
          'no_space',
          `the disk filled up while staging the restore under ${filling.dir}${filling.what}; nothing was changed; ` +
            'free some space (old backups, logs) and try again',
          { cause: error, details: { dir: filling.dir } },
        );
      throw error;
    });
    // After the pass, so that an unsafe entry is what a hostile archive is refused for.
    if (!manifest.members.some((m) => m.path === DUMP_NAME && m.type === 'file')) {
      throw new AppError('corrupt_backup', 'the backup holds no database dump: it cannot be restored');
    }
    await stagingDb;
    ctx.throwIfCancelled();

    // 2. Safety backup of the current state, labelled so a person recognises it.
    if (!options.skipSafetyBackup) {
      ctx.phase('safety');
      const inner: JobContext = {
        ...ctx,
        // The backup's own phases are the safety phase's steps: each count starts with its own words.
        phase: (name, total, unit) => ctx.step(name, total, unit),
        progress: ctx.progress,
        // The restore job's target stays the backup it restores: the safety backup is not in use by it.
        target: () => {},
      };
      const backup = await createBackup(backupDeps(agent, { sources }), inner, {
        kind: 'safety',
        label: `before restore of ${label}`,
        // Named before it is written: killed before its swap committed, it is removed (safety-record.ts).
        beforeWrite: (name) => writeSafetyRecord(agent.config.dataDir, names.id, name),
      }).catch((error: unknown) => {
        // A disk filled since the check (createBackup removed its temp file and work folder): said as the
        // safety backup's, where it writes, and that the restore changed nothing.
        if (!(error instanceof AppError && error.code === 'no_space')) throw error;
        throw new AppError(
          'no_space',
          `the disk filled up while writing the safety backup of the live state (its dump under ${agent.paths.work}, ` +
            `its file in ${agent.paths.backups}); nothing was changed; free some space (old backups, logs) and try again`,
          { cause: error, details: { dirs: [agent.paths.work, agent.paths.backups] } },
        );
      });
      safetyBackup = backup.filename;
      ctx.throwIfCancelled();
    }

    // 3. Stage: pg_restore into the staging database; every table's exact row count must match.
    // Its progress counts steps: each data and post-data item of the dump pg_restore reports finished
    // (a table's rows, an index, a constraint: in any order, several at once), then the row-count
    // check as the last one. Index builds can take longer than the data, so they count too.
    ctx.phase('stage', 0, 'items');
    const listing = await listDump(sources.tools, dumpPath);
    const steps = listing.steps.size + 1;
    ctx.progress(0, steps);
    const finished = new Set<number>();
    counter = new StagingRowCounter(conn, names.staging, listing.tables, RESTORE_JOBS);
    const staging = counter;
    // What an earlier restore that did not commit made of the roles, if its record is still here (the
    // database failed under its take-back), is taken back first. Else this restore would find those roles
    // and memberships, not record them as its own, and their take-back at a later start would undo what
    // the restored database relies on.
    await timed('earlier-roles', async () =>
      takeBackRecordedRoles(
        conn,
        agent.config.dataDir,
        ctx.log,
        await committedRestoreId(agent.config.dataDir, ctx.log),
      ),
    );
    // The roles the backup's objects name: those missing are created, so owners and privileges come back.
    const roles = await timed('roles', () =>
      prepareRoles(conn, manifest.roles, manifest.memberships, async (made) => {
        await writeRoleRecord(agent.config.dataDir, names.id, made);
        madeRoles = { created: [...made.created], granted: [...made.granted] };
      }),
    );
    const restored = await timed('pg_restore', () =>
      restoreDump({
        conn,
        tools: sources.tools,
        database: names.staging,
        dumpPath,
        signal: ctx.signal,
        jobs: RESTORE_JOBS,
        onItem: (event) => {
          staging.onItem(event);
          if (event.kind === 'finished' && listing.steps.has(event.id) && !finished.has(event.id)) {
            finished.add(event.id);
            ctx.progress(finished.size);
          }
        },
        ...(options.faults?.onStagingRestore ? { onSpawn: options.faults.onStagingRestore } : {}),
        roles,
      }),
    );
    const warnings = [...roles.warnings, ...describeLost(restored.lost, restored.lostCount)];
    for (const warning of warnings) ctx.log.warn('restore warning', { warning });
    // pg_restore is done: every item of its listing is in, reported or not; the row-count check remains.
    ctx.progress(listing.steps.size);
    // From the settings copy to the end of the swap, settings changes wait (SettingsService.hold): one
    // saved meanwhile would go with the replaced database. The copy runs beside the last row counts.
    const keepPrevious = options.keepPrevious ?? false;
    await agent.settings.hold(async () => {
      const [counted, copied] = await Promise.allSettled([
        timed('row-counts', () => staging.finish()),
        timed('copy-settings', async () => {
          await options.faults?.beforeSwapStep?.('copy-settings');
          await copyAgentSchema({
            conn,
            tools: sources.tools,
            staging: names.staging,
            filePath: join(work, 'settings.dump'),
          });
        }),
      ]);
      if (counted.status === 'rejected') throw counted.reason;
      if (copied.status === 'rejected') throw copied.reason;
      const counts = counted.value;
      ctx.log.info('restore row counts', {
        tables: Object.keys(counts).length,
        countedEarly: staging.countedEarly,
      });
      compareRowCounts(manifest.rowCounts, counts);
      ctx.progress(steps);
      // Its sessions on the staging database end now: the swap would otherwise have to terminate them.
      await staging.close();
      // Last before the swap (its settings, e.g. a statement_timeout, would apply to the sessions above):
      // the live database's owner, privileges and settings, which the dump does not restore, then the
      // backup's own settings over them.
      await timed('copy-database-properties', async () => {
        await options.faults?.beforeSwapStep?.('copy-database-properties');
        const left = await copyDatabaseProperties(conn, names.staging, manifest.postgres.settings);
        for (const warning of left) ctx.log.warn('restore warning', { warning });
        warnings.push(...left);
      });
      ctx.throwIfCancelled();

      // 4. Swap, in a short critical section; the page hears about it first. Recorded first: every
      // backup made before now holds data that no longer runs (the DR push must not reuse one). The
      // record of the safety backup stays until the commit: killed in the swap, the start rolls the
      // journal back and removes the safety backup; once the journal says committed, it is never removed.
      ctx.phase('swap');
      await new LastRestoreStore(agent.paths.lastRestore, ctx.log).record(
        new Date(),
        label,
        manifest.createdAt,
        // Who made it, from the manifest (inside the encryption): the header holds only a tag.
        manifest.installationId,
      );
      ctx.notice('restore-swap', { restoredFrom: label });
      try {
        await timed('swap', () =>
          swapIntoPlace(agent, names, {
            ...(options.filename ? { filename: options.filename } : {}),
            keepPrevious,
            ...(options.faults ? { faults: options.faults } : {}),
          }),
        );
        committed = true;
      } catch (error) {
        // An undo that failed leaves the journal for the next start: leave its names alone too.
        if (!(error instanceof AppError && error.details?.undoFailed)) throw error;
        keepStaging = true;
        throw error;
      }
    });
    ctx.log.info('restore swapped into place', { restoredFrom: label, safetyBackup });
    // From here on GEM's data is the backup's: no step after this fails the restore. Each one that fails
    // is logged and named in the result's warnings, and the previous state still goes (or the newest is
    // kept aside) once the job has reported: the cleanup finishes the journal.
    swapped = true;
    cleanupAfter = () =>
      cleanupAfterReport({ config: agent.config, sources, log: ctx.log }, names, keepPrevious);
    const step = (name: AfterCommitStep, run: () => Promise<void>) =>
      afterCommitStep(ctx, warnings, options.faults, name, run);
    // Its safety backup stays (the data it replaced): its record goes now, while the committed journal
    // beside it keeps a start or the database watch from removing the safety backup. If it stays, the
    // cleanup removes it.
    if (safetyBackup) await step('safety-record', () => clearSafetyRecord(agent.config.dataDir, names.id));
    // The roles it created stay (they own the restored objects): the record that would take them back
    // goes now, not with the cleanup, so that no later restore or start can find it without this
    // restore's committed journal beside it. If it stays, the cleanup removes it.
    await step('role-record', () => clearRoleRecord(agent.config.dataDir, names.id));
    await step('dr-recovery', () => finishUnfinishedRecovery(agent, ctx, manifest.installationId));

    // 5. Restart GEM; its failure is reported, the restore itself is done.
    ctx.phase('restart');
    const restart = await runRestart(agent, ctx);
    const pruned: string[] = [];
    const kept = safetyBackup;
    if (kept) await step('prune', () => pruneSafetyBackups(agent, [kept, label], pruned));

    // 6. Cleanup once the job has reported success (cleanupAfter, above).
    const rows = Object.values(manifest.rowCounts).reduce((a, b) => a + b, 0);
    ctx.notice('restore-complete', { restoredFrom: label });
    return {
      restoredFrom: label,
      backupCreatedAt: manifest.createdAt,
      ...(safetyBackup ? { safetyBackup } : {}),
      ...(pruned.length > 0 ? { safetyBackupsPruned: pruned } : {}),
      tables: Object.keys(manifest.rowCounts).length,
      rows,
      ...(keepPrevious ? { keptPrevious: names.previous } : {}),
      restart,
      ...(warnings.length > 0 ? { warnings } : {}),
    };
  } catch (error) {
    // What the owner is told follows whether the swap committed, never the error's type: after the
    // commit the live data is the backup's, whatever the failing step's own words say. (Every step after
    // the commit catches its own failure: only the unforeseen gets here committed.)
    const failure = committed
      ? new AppError(
          'restore_failed',
          `the backup ${label} was restored: GEM's database and folders are now the backup's` +
            (safetyBackup ? ` (the state before it is kept in the safety backup ${safetyBackup})` : '') +
            `, but a step after the swap failed: ${describeError(error).message}`,
          { cause: error, details: { committed: true } },
        )
      : (await diskFullFailure(error, databaseDir)) ||
        (error instanceof AppError
          ? error
          : new AppError(
              'restore_failed',
              `the restore failed; the live system is unchanged: ${describeError(error).message}`,
              { cause: error },
            ));
    // Nothing live was changed (stopped before the swap, or the swap was undone): the safety backup
    // would only push an earlier restore's out of the kept ones. An undo that failed keeps it.
    if (safetyBackup && !committed && !keepStaging) {
      const removed = await removeSafetyBackup(agent, ctx, safetyBackup);
      if (removed) {
        throw new AppError(failure.code, `${failure.message}; ${removed}`, {
          ...(failure.cause === undefined ? {} : { cause: failure.cause }),
          ...(failure.details ? { details: failure.details } : {}),
        });
      }
    }
    throw failure;
  } finally {
    // Not committed, the safety backup is removed or kept above (or was never written): the record goes;
    // unless an undo failed: whoever finishes the journal then removes the safety backup (rolled back) or
    // keeps it (committed), as after a crash in the swap.
    if (!committed && !keepStaging)
      await clearSafetyRecord(agent.config.dataDir, names.id).catch((error: unknown) =>
        ctx.log.warn("the record of this restore's safety backup could not be removed; the next start does", {
          error,
        }),
      );
    await counter?.close().catch(() => {});
    // Never the restore's failure (nor, after the commit, a restore that happened said to have failed):
    // the next start removes what a process left in the work folder.
    await rm(work, { recursive: true, force: true }).catch((error: unknown) =>
      ctx.log.warn("the restore's work folder could not be removed; the next start removes it", { error }),
    );
    let stagingDropped = true;
    if (!keepStaging && !swapped) {
      if (stagingDb) {
        await stagingDb.catch(() => {});
        stagingDropped = await dropDatabase(conn, names.staging).then(
          () => true,
          () => false,
        );
      }
      // Each one tried; one that cannot go is only disk space, never this restore's failure: the next restore
      // or start tries again, and health names it meanwhile (removeStagingFolder notes why).
      for (const folder of names.folders)
        await removeStagingFolder(folder.staging).catch((error: unknown) =>
          ctx.log.warn(
            "the restore's staging folder could not be removed; the next restore or start tries again",
            {
              folder: folder.staging,
              error,
            },
          ),
        );
    }
    // After the staging database is gone (its objects are owned by them); never once the swap committed,
    // nor while an undo that failed leaves the journal to the next start (it may roll forward). Whatever
    // is not done here, its record leaves to the next start.
    if (madeRoles && !committed && !keepStaging) {
      if (stagingDropped) {
        const made = madeRoles;
        await takeBackRoles(conn, agent.config.dataDir, ctx.log, names.id, made).catch((error: unknown) =>
          ctx.log.warn(
            `the roles this restore created (${made.created.join(', ')}) could not be taken back now; the next start does`,
            { error: describeError(error) },
          ),
        );
      } else
        ctx.log.warn('the roles this restore created are left to the next start, with its staging database');
    }
    cleanupAfter?.();
  }
}

/**
 * A DR recovery that stopped after installing the recovered keys (dr-recovery.json) is done once a
 * backup of that installation is restored here by any means (the owner restored one by hand): from
 * then on the data is that installation's, and backups and pushes go again. A record that cannot be
 * read stays (the recovery command clears it).
 */
async function finishUnfinishedRecovery(agent: Agent, ctx: JobContext, restored: string): Promise<void> {
  const file = new UnfinishedRecoveryFile(agent.paths.drRecovery);
  const record = await file.read().catch(() => null);
  if (record?.installationId !== restored) return;
  await file.clear();
  ctx.log.info('the unfinished DR recovery is done: a backup of its installation was restored');
}

/** The steps after the swap committed that can fail, each with its own words (afterCommitStep). */
type AfterCommitStep = 'safety-record' | 'role-record' | 'dr-recovery' | 'prune';

const AFTER_COMMIT_WORDS: Record<AfterCommitStep, { log: string; what: string; next: string }> = {
  'safety-record': {
    log: "the record of this restore's safety backup could not be removed; its cleanup removes it",
    what: "the record of this restore's safety backup could not be removed",
    next: 'the agent removes it with the replaced data, or at its next start; the safety backup stays',
  },
  'role-record': {
    log: 'the record of the roles this restore created could not be removed; its cleanup removes it',
    what: 'the record of the roles this restore created could not be removed',
    next: 'the agent removes it with the replaced data, or at its next start; the roles stay',
  },
  'dr-recovery': {
    log: 'the unfinished DR recovery could not be marked done',
    what: 'the unfinished Cloud DR recovery could not be marked done',
    next: 'Cloud DR pushes stay refused until it is: restore this backup again',
  },
  prune: {
    log: 'the older safety backups could not be pruned; the restore itself is done',
    what: 'the older safety backups could not all be pruned',
    next: "the next backup's retention tries again",
  },
};

/**
 * Runs one step after the swap committed. GEM's data is the backup's by then: a failure is logged and
 * added to `warnings` (what did not finish, and what follows), never thrown. `faults.afterCommit` is
 * called first with the step's name.
 */
async function afterCommitStep(
  ctx: JobContext,
  warnings: string[],
  faults: RestoreFaults | undefined,
  step: AfterCommitStep,
  run: () => Promise<void>,
): Promise<void> {
  try {
    await faults?.afterCommit?.(step);
    await run();
  } catch (error) {
    const words = AFTER_COMMIT_WORDS[step];
    ctx.log.warn(words.log, { step, error });
    warnings.push(`${words.what} (${describeError(error).message}): ${words.next}`);
  }
}

/**
 * Removes the safety backup of a restore that changed nothing, through the catalog (its record goes
 * too). One pinned meanwhile, or in use by a running job, stays. Returns the line that says so, or
 * undefined if it stayed.
 */
async function removeSafetyBackup(agent: Agent, ctx: JobContext, name: string): Promise<string | undefined> {
  try {
    if (busyBackupNames(agent).has(name)) {
      ctx.log.info(`the safety backup ${name} was kept: a running job uses it`);
      return undefined;
    }
    // The pin is read with the deletion, under the records' lock: one made a moment ago keeps it too.
    if (!(await agent.catalog.delete(name, { unlessPinned: true }))) {
      ctx.log.info(`the safety backup ${name} was kept: it was pinned`);
      return undefined;
    }
  } catch (error) {
    ctx.log.warn(`could not remove the safety backup ${name}; delete it by hand if it is not wanted`, {
      error,
    });
    return undefined;
  }
  const line = `the safety backup ${name} was removed: nothing was changed`;
  ctx.log.info(line);
  return line;
}

/**
 * The safety part of retention, after a restore committed: the backup job prunes only after a backup,
 * and an owner restoring one backup after another (to find the good one) would pile up a safety backup
 * each until then. The backup job's rules hold (pins, the retention hold, a running job's target);
 * `protect` (the safety backup just made, the backup restored from) always stays. What was deleted is
 * added to `deleted`, also when some could not be (then it throws, naming what stayed and what went).
 */
async function pruneSafetyBackups(agent: Agent, protect: string[], deleted: string[]): Promise<void> {
  try {
    deleted.push(...(await pruneLocal(agent, protect, 'safety')));
  } catch (error) {
    const went = isAppError(error) ? error.details?.deleted : undefined;
    if (Array.isArray(went)) deleted.push(...went);
    throw error;
  }
}

/** Runs GEM_RESTART_COMMAND (argument array, no shell); a failure is reported, never thrown. */
async function runRestart(agent: Agent, ctx: JobContext): Promise<RestoreResult['restart']> {
  const command = agent.config.restartCommand;
  if (!command || command.length === 0) return { ran: false };
  try {
    const result = await runProcess(command[0]!, command.slice(1), {
      signal: AbortSignal.timeout(120_000),
      logArgs: false,
    });
    if (result.code === 0) return { ran: true, ok: true };
    const error = `the restart command exited with ${result.code ?? result.signal}: ${result.stderr.slice(0, 500)}`;
    ctx.log.warn('the restart command failed; the restore itself is done', { error });
    return { ran: true, ok: false, error };
  } catch (error) {
    const message = `the restart command could not run: ${describeError(error).message}`;
    ctx.log.warn(message);
    return { ran: true, ok: false, error: message };
  }
}

/** Starts a restore job of a backup in the catalog (a mutating job: 409 while another one runs). */
export async function startRestore(
  agent: Agent,
  filename: string,
  options: RestoreOptions = {},
): Promise<Job> {
  const name = checkBackupName(filename);
  await agent.catalog.info(name);
  return agent.jobs.start(
    'restore',
    (ctx) => restoreFromFile(agent, ctx, agent.catalog.pathOf(name), { ...options, filename: name }),
    { mutating: true, target: name },
  );
}
