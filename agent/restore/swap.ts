/** The swap: staging database and folders take the live ones' place by rename (a mount point's entries by copy), journaled so a crash can be undone. */
import { constants, existsSync } from 'node:fs';
import {
  access,
  lutimes,
  mkdir,
  readdir,
  readFile,
  readlink,
  realpath,
  rename,
  rm,
  stat,
} from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import type { BackupSources } from '../backup/create';
import type { AgentConfig } from '../config';
import { AppError, describeError } from '../errors';
import { heldByOtherProcess } from '../jobs/lock';
import type { Logger } from '../log';
import { fsyncDir, removeSmallFile, writeSmallFileAtomic } from '../system/atomic-file';
import { isMountPoint } from '../system/mounts';
import { userNameOf } from '../system/passwd';
import { type PgConnection, PostgresTools, parseDatabaseUrl } from '../system/postgres-tools';
import { removeTree } from '../system/remove-tree';
import { checkCopyable, copyEntries, emptyFolder } from './copy-tree';
import {
  dropDatabase,
  endDatabaseCreations,
  listDatabases,
  renameDatabase,
  setAllowConnections,
  terminateSessions,
} from './database';
import { clearRoleRecord, roleRecords, takeBackRecordedRoles } from './role-record';
import { clearSafetyRecord, hasUncommittedSafetyRecord, removeRecordedSafetyBackups } from './safety-record';

/**
 * How a live folder is swapped: `rename` moves it aside and the staged folder into its place;
 * `copy`, for a live folder that cannot be renamed (a mount point, such as a Docker volume; a folder of
 * a container image's layer, which overlayfs refuses to rename: EXDEV), copies its entries aside, then
 * empties it and copies the staged entries into it.
 */
type FolderSwap = 'rename' | 'copy';

/** A live folder, its staging copy beside it, and where the live one is put aside during the swap. */
interface FolderNames {
  root: 'scripts' | 'config';
  live: string;
  staging: string;
  previous: string;
  swap: FolderSwap;
  /** Whether the live folder existed when the swap began (set by the swap; absent in older journals). */
  liveExisted?: boolean;
}

/** Every name one restore uses; all derived from the live names and a short random id. */
interface RestoreNames {
  id: string;
  live: string;
  staging: string;
  previous: string;
  folders: FolderNames[];
}

const journalSchema = z.object({
  format: z.literal('gem-restore-journal'),
  version: z.literal(1),
  id: z.string(),
  filename: z.string().optional(),
  startedAt: z.string(),
  step: z.string(),
  committed: z.boolean(),
  keepPrevious: z.boolean(),
  live: z.string(),
  staging: z.string(),
  previous: z.string(),
  folders: z.array(
    z.object({
      root: z.enum(['scripts', 'config']),
      live: z.string(),
      staging: z.string(),
      previous: z.string(),
      // Journals written before mount points were swapped by copy have no `swap`.
      swap: z.enum(['rename', 'copy']).default('rename'),
      liveExisted: z.boolean().optional(),
    }),
  ),
});
type RestoreJournal = z.infer<typeof journalSchema>;

/** Deliberate fault-injection points for tests and drills (not mocks: the real steps run around them). */
export interface RestoreFaults {
  /** Called before the settings copy (`copy-settings`) and each swap step; throwing here fails that step. */
  beforeSwapStep?: (step: string) => void | Promise<void>;
  /** Called after each swap step's action took effect; throwing here fails the step after it acted (as an fsync failing after its rename). */
  afterSwapStep?: (step: string) => void | Promise<void>;
  /**
   * Called at the start of each step after the swap committed (`safety-record`, `role-record`,
   * `dr-recovery`, `prune`);
   * throwing here fails that step, as its own failure would (the restore is done: a warning says so).
   */
  afterCommit?: (step: string) => void | Promise<void>;
  /** Receives pg_restore's pid while it restores the staging database. */
  onStagingRestore?: (pid: number) => void;
  /** Overrides the free bytes the disk check requires. */
  requiredBytes?: number;
}

/** What the swap and the recovery need from the agent. */
interface SwapDeps {
  config: { dataDir: string };
  sources: BackupSources;
  log: Logger;
}

/** The database-name prefix for this live database (PostgreSQL names stop at 63 bytes). */
function dbPrefix(live: string): string {
  let prefix = live;
  while (Buffer.byteLength(prefix) > 40) prefix = prefix.slice(0, -1);
  return prefix;
}

export { isMountPoint } from '../system/mounts';

export const STAGING_DB_MARK = '_gem_restore_';
export const PREVIOUS_DB_MARK = '_gem_previous_';
export const STAGING_FOLDER_MARK = '.gem-restore-staging-';
export const PREVIOUS_FOLDER_MARK = '.gem-previous-';

/**
 * The folder a configured path names, links resolved. A folder configured through a symlink
 * (/opt/gem/scripts -> /data/scripts) is staged, swapped and set aside beside the folder itself: the
 * link stays as it is, and every rename stays on the folder's own filesystem. A path that does not
 * exist (yet) is used as configured; a link to one that does not (a new machine's /data/scripts), as the
 * path it points to: the restore makes that folder, not a folder in the link's place (which a rename
 * over the link refuses: ENOTDIR).
 */
export async function liveFolderPath(configured: string): Promise<string> {
  return realpath(configured).catch(async (error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT' && error.code !== 'ENOTDIR') throw error;
    const target = await readlink(configured).catch(() => undefined);
    if (target === undefined) return configured;
    // Relative to the folder the link is in, as the kernel resolves it (its own links resolved).
    return liveFolderPath(resolve(await realpath(dirname(configured)), target));
  });
}

/**
 * Names for one restore with id `id`; the folders' are beside the folders their links point to (for
 * a mount point: beside it, on its parent's file system).
 */
export async function restoreNames(sources: BackupSources, id: string): Promise<RestoreNames> {
  const prefix = dbPrefix(sources.conn.database);
  const folder = async (root: 'scripts' | 'config', live: string): Promise<FolderNames> => ({
    root,
    live,
    staging: `${live}${STAGING_FOLDER_MARK}${id}`,
    previous: `${live}${PREVIOUS_FOLDER_MARK}${id}`,
    swap: existsSync(live) && (await isMountPoint(live)) ? 'copy' : 'rename',
  });
  return {
    id,
    live: sources.conn.database,
    staging: `${prefix}${STAGING_DB_MARK}${id}`,
    previous: `${prefix}${PREVIOUS_DB_MARK}${id}`,
    folders: [
      await folder('scripts', await liveFolderPath(sources.scriptsDir)),
      await folder('config', await liveFolderPath(sources.configDir)),
    ],
  };
}

/**
 * Refuses, before anything is staged, a folder whose restore could not be staged: the staging folder
 * is made beside the live one, in its parent, and renamed into place (a mount point's too: its copy
 * aside is made there), so the agent's user must be able to add and rename entries there. Without this,
 * the staging mkdir failed with EACCES (EROFS) once the restore had begun, and the message said to chown
 * the parent (/etc, /opt). A parent that does not exist yet is the restore's to report as before.
 */
export async function checkStageable(folder: { root: 'scripts' | 'config'; live: string }): Promise<void> {
  const parent = dirname(folder.live);
  const error = await access(parent, constants.W_OK | constants.X_OK).then(
    () => undefined,
    (e: NodeJS.ErrnoException) => e,
  );
  if (!error || error.code === 'ENOENT') return;
  const setting = folder.root === 'scripts' ? 'GEM_SCRIPTS_DIR' : 'GEM_CONFIG_DIR';
  const why =
    error.code === 'EROFS'
      ? `${parent} is on a read-only file system`
      : `the agent's user ${userNameOf(process.geteuid?.() ?? 0)} may not create folders in ${parent}`;
  throw new AppError(
    error.code === 'EROFS' ? 'unprocessable' : 'permission_denied',
    `cannot restore the ${folder.root} folder ${folder.live}: a restore stages it beside the live folder and renames it into place, and ${why}. ` +
      `Give the agent's user write access to ${parent} only if it holds nothing else; otherwise set ${setting} to a folder inside one that user owns. Nothing was changed`,
    { details: { folder: folder.root, path: parent }, cause: error },
  );
}

export function journalPath(dataDir: string): string {
  return join(dataDir, 'restore-journal.json');
}

async function writeJournal(dataDir: string, journal: RestoreJournal): Promise<void> {
  await writeSmallFileAtomic(journalPath(dataDir), `${JSON.stringify(journal, null, 2)}\n`, 0o600);
}

/** The journal `text` holds; undefined if it is damaged (no JSON at all, cut short or zeroed, or JSON that is no journal). */
function parseJournal(text: string): RestoreJournal | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const parsed = journalSchema.safeParse(json);
  return parsed.success ? parsed.data : undefined;
}

async function readJournal(dataDir: string, log: Logger): Promise<RestoreJournal | undefined> {
  const text = await readFile(journalPath(dataDir), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const journal = parseJournal(text);
  if (!journal) {
    log.error('the restore journal is unreadable; checking the databases and folders by name instead');
  }
  return journal;
}

/** Whether a restore journal is on disk that cannot be read (damaged): what readJournal logs an error about. */
export async function journalUnreadable(dataDir: string): Promise<boolean> {
  const text = await readFile(journalPath(dataDir), 'utf8').catch(() => undefined);
  return text !== undefined && parseJournal(text) === undefined;
}

/** Whether a restore journal is on disk, and whether it says committed (an unreadable one: uncommitted). */
export async function journalState(dataDir: string): Promise<'none' | 'committed' | 'uncommitted'> {
  const text = await readFile(journalPath(dataDir), 'utf8').catch(() => undefined);
  if (text === undefined) return 'none';
  try {
    return journalSchema.parse(JSON.parse(text)).committed ? 'committed' : 'uncommitted';
  } catch {
    return 'uncommitted';
  }
}

/**
 * Whether a restore journal is on disk that is not restore `committedId`'s committed one, where any readable
 * one has been settled (a start, the database watch, a restore under the job lock): one that cannot be
 * read. Whether its restore committed is then unknown, and so whether the records restores left are of
 * restores that did not commit: none is acted on (takeBackUncommittedRoles, removeUncommittedSafetyBackups),
 * for a committed restore's roles own the data it restored, and its safety backup is the only copy of the
 * data it replaced.
 */
async function journalUnknown(dataDir: string, committedId: string | undefined): Promise<boolean> {
  const journal = await journalState(dataDir);
  return journal === 'uncommitted' || (journal === 'committed' && committedId === undefined);
}

/** What a person does about a restore journal that cannot be read (journalUnknown): only they can tell. */
const UNREADABLE_JOURNAL_ADVICE =
  "check whether the restore it belongs to replaced GEM's data: if it did, delete that restore's " +
  'restore-roles-<id>.json and restore-safety-<id>.json from the data dir (its roles and safety backup ' +
  'stay); then move restore-journal.json out of the data dir, and the next start takes back the roles and ' +
  'removes the safety backups that the records left name';

/** The id of the restore whose journal says it committed (its cleanup still to come), if any. */
export async function committedRestoreId(dataDir: string, log: Logger): Promise<string | undefined> {
  const journal = await readJournal(dataDir, log);
  return journal?.committed ? journal.id : undefined;
}

/**
 * Whether a restore that did not commit left the record of its safety backup (safety-record.ts): with the
 * job lock free, its process died (a CLI restore killed while the service runs), and the database watch
 * settles it (recoverInterruptedRestore) instead of leaving it to the next start.
 */
export async function uncommittedSafetyRecordLeft(dataDir: string, log: Logger): Promise<boolean> {
  const committedId = await committedRestoreId(dataDir, log).catch(() => undefined);
  return hasUncommittedSafetyRecord(dataDir, committedId);
}

/** Removes the journal; with `id`, only if it is still that restore's (a newer restore's journal stays). */
async function removeJournal(dataDir: string, id?: string): Promise<void> {
  if (id !== undefined) {
    const text = await readFile(journalPath(dataDir), 'utf8').catch(() => undefined);
    if (text === undefined) return;
    const current = (JSON.parse(text) as { id?: unknown }).id;
    if (current !== id) return;
  }
  await rm(journalPath(dataDir), { force: true });
  await fsyncDir(dataDir).catch(() => {});
}

async function renameFolder(from: string, to: string): Promise<void> {
  await rename(from, to);
  await fsyncDir(dirname(to));
}

/**
 * Undoes a rename swap's move of the live folder aside, if it happened (`previous` exists). Whatever
 * holds the live name now is not the old state (the staged folder, or one something made there
 * meanwhile, which would keep the old one from coming back): it goes to a staging name first.
 */
async function putPreviousFolderBack(folder: FolderNames): Promise<void> {
  if (!existsSync(folder.previous)) return;
  if (existsSync(folder.live)) {
    const aside = existsSync(folder.staging) ? `${folder.staging}r` : folder.staging;
    await renameFolder(folder.live, aside);
  }
  await renameFolder(folder.previous, folder.live);
}

/** Where a copy-swapped folder's previous entries are copied before the copy is complete. */
function partialPrevious(folder: FolderNames): string {
  return `${folder.previous}.part`;
}

/**
 * The first step of a copy swap: the live folder's entries copied beside it, under a temporary name
 * renamed to `previous` once complete, so that `previous` existing means a whole copy.
 */
async function copyLiveAside(folder: FolderNames): Promise<void> {
  const part = partialPrevious(folder);
  await removeTree(part);
  await mkdir(part, { mode: 0o700 });
  await copyEntries(folder.live, part);
  // Its times, so that an undo gives them back to the mount point (refillLiveFolder).
  const { atime, mtime } = await stat(folder.live);
  await lutimes(part, atime, mtime);
  await fsyncDir(part);
  await renameFolder(part, folder.previous);
}

/** Makes a copy-swapped live folder hold exactly the entries of `from` (staging, or previous to undo). */
async function refillLiveFolder(folder: FolderNames, from: string): Promise<void> {
  await emptyFolder(folder.live);
  await copyEntries(from, folder.live);
  // The mount point itself keeps its mode and owner; it takes the time of the folder it now mirrors.
  const { atime, mtime } = await stat(from);
  await lutimes(folder.live, atime, mtime);
}

/**
 * Removes a copy swap's copy aside. It is renamed first to a staging name (swept by
 * dropStagingLeftovers): removing it is not atomic, and a half-removed copy must never be found under
 * `previous`, which recovery refills the live folder from.
 */
async function discardCopyAside(folder: FolderNames): Promise<void> {
  await removeTree(partialPrevious(folder));
  if (!existsSync(folder.previous)) return;
  const discarded = `${folder.staging}-discarded`;
  await removeTree(discarded);
  await renameFolder(folder.previous, discarded);
  await removeTree(discarded);
}

/** Undoes a copy swap: the live folder refilled from the whole copy aside (if it was made), which then goes. */
async function putCopiedFolderBack(folder: FolderNames): Promise<void> {
  await removeTree(partialPrevious(folder));
  if (!existsSync(folder.previous)) return;
  await refillLiveFolder(folder, folder.previous);
  await discardCopyAside(folder);
}

/**
 * Swaps staging into place in a short critical section. Each step is journaled before it runs;
 * on any failure the steps done are undone in reverse and the error rethrown, with the live
 * database and folders exactly as they were. Returns once the journal says "committed".
 */
export async function swapIntoPlace(
  deps: SwapDeps,
  names: RestoreNames,
  options: { filename?: string; keepPrevious: boolean; faults?: RestoreFaults },
): Promise<void> {
  const conn = deps.sources.conn;
  // Recorded for recovery: a folder that did not exist has no copy aside to go back to.
  const folders = names.folders.map((folder) => ({ ...folder, liveExisted: existsSync(folder.live) }));
  const journal: RestoreJournal = {
    format: 'gem-restore-journal',
    version: 1,
    id: names.id,
    ...(options.filename ? { filename: options.filename } : {}),
    startedAt: new Date().toISOString(),
    step: 'start',
    committed: false,
    keepPrevious: options.keepPrevious,
    live: names.live,
    staging: names.staging,
    previous: names.previous,
    folders,
  };
  // Undos by what they put back: the database, or one folder (a step `name:root` is that folder's).
  const undo: { step: string; part: string; revert: () => Promise<void> }[] = [];
  // Each step's undo is registered before it runs, since a step can fail after its action took effect
  // (a rename done, its fsync failed): every undo checks what exists and reverts only what happened.
  const step = async (name: string, run: () => Promise<void>, revert?: () => Promise<void>) => {
    const started = performance.now();
    journal.step = name;
    await writeJournal(deps.config.dataDir, journal);
    if (revert) undo.push({ step: name, part: name.split(':')[1] ?? 'database', revert });
    await options.faults?.beforeSwapStep?.(name);
    await run();
    await options.faults?.afterSwapStep?.(name);
    deps.log.debug('restore swap step', { step: name, ms: Math.round(performance.now() - started) });
  };
  /** Renames database `from` back to `to` if the rename happened: `from` exists and `to` does not. */
  const renameDatabaseBack = async (from: string, to: string) => {
    const databases = new Set(await listDatabases(conn));
    if (!databases.has(from) || databases.has(to)) return;
    await terminateSessions(conn, from);
    await renameDatabase(conn, from, to);
  };
  /** Renames folder `from` back to `to` if the rename happened: `from` exists and `to` does not. */
  const renameFolderBack = async (from: string, to: string) => {
    if (!existsSync(from) || existsSync(to)) return;
    await renameFolder(from, to);
  };

  try {
    await step(
      'fence-live-database',
      () => setAllowConnections(conn, names.live, false),
      () => setAllowConnections(conn, names.live, true),
    );
    await step('terminate-sessions', () => terminateSessions(conn, names.live));
    await step(
      'rename-live-database',
      () => renameDatabase(conn, names.live, names.previous),
      () => renameDatabaseBack(names.previous, names.live),
    );
    await step(
      'rename-staging-database',
      async () => {
        await terminateSessions(conn, names.staging);
        await renameDatabase(conn, names.staging, names.live);
      },
      // Only once the live database is aside: then whatever holds the live name is the staging copy.
      () => renameDatabaseBack(names.live, names.staging),
    );
    for (const folder of folders) {
      if (folder.swap === 'rename' && folder.liveExisted) {
        await step(
          `move-live-folder:${folder.root}`,
          () =>
            renameFolder(folder.live, folder.previous).catch((error: NodeJS.ErrnoException) => {
              // Nothing moved: overlayfs refuses to rename a folder of the image's layer (a container's
              // own file system), whose entries can still be swapped by copy (journaled at the next step).
              if (error.code !== 'EXDEV') throw error;
              return checkCopyable(folder.live).then(() => {
                folder.swap = 'copy';
              });
            }),
          () => putPreviousFolderBack(folder),
        );
      }
      if (folder.swap === 'copy') {
        // The live entries are copied aside first; its undo (run last) removes that copy.
        await step(
          `copy-live-folder:${folder.root}`,
          () => copyLiveAside(folder),
          () => discardCopyAside(folder),
        );
        // From here on an undo refills the live folder from that copy (fill's undo is this one).
        await step(
          `empty-live-folder:${folder.root}`,
          () => emptyFolder(folder.live),
          () => putCopiedFolderBack(folder),
        );
        await step(`fill-live-folder:${folder.root}`, () => refillLiveFolder(folder, folder.staging));
        continue;
      }
      await step(
        `move-staging-folder:${folder.root}`,
        () => renameFolder(folder.staging, folder.live),
        () => renameFolderBack(folder.live, folder.staging),
      );
    }
    await step('commit', async () => {
      journal.committed = true;
      await writeJournal(deps.config.dataDir, journal);
    });
  } catch (error) {
    const failures: string[] = [];
    if (journal.committed) {
      // The commit step failed after it set the flag: its record may be on disk. Nothing is undone
      // until the journal durably says "not committed", or a crash meanwhile would be finished
      // forward by the next start (dropping the previous database) over a half-undone swap.
      journal.committed = false;
      await writeJournal(deps.config.dataDir, journal).catch((writeError: unknown) => {
        failures.push(`marking the journal not committed: ${describeError(writeError).message}`);
      });
    }
    // In reverse. An undo that fails stops the rest of its part: each relies on the later ones having
    // worked (a copy aside goes only once the folder was refilled from it). The other parts are still
    // put back; the journal stays for the next start, which finishes from what exists.
    const stopped = new Set<string>();
    for (const done of failures.length > 0 ? [] : undo.reverse()) {
      if (stopped.has(done.part)) continue;
      try {
        await done.revert();
      } catch (undoError) {
        failures.push(`${done.step}: ${describeError(undoError).message}`);
        stopped.add(done.part);
      }
    }
    if (failures.length > 0) {
      deps.log.error('a restore swap could not be undone; it is finished once the database answers again', {
        failures,
      });
      throw new AppError(
        'restore_failed',
        `the restore failed at step ${journal.step} (${describeError(error).message}) and undoing it failed ` +
          `(${failures.join('; ')}): the agent finishes the undo from its journal as soon as the database answers ` +
          'again (or at its next start)',
        { cause: error, details: { step: journal.step, undoFailed: true, failures } },
      );
    }
    await removeJournal(deps.config.dataDir);
    throw new AppError(
      'restore_failed',
      `the restore failed while swapping (step ${journal.step}: ${describeError(error).message}); ` +
        'everything was put back and the live system is unchanged',
      { cause: error, details: { step: journal.step } },
    );
  }
}

/** What a committed restore replaced, by the names its journal recorded (a leftovers entry's too). */
interface ReplacedNames {
  id: string;
  live: string;
  previous: string;
  folders: { live: string; staging: string; previous: string }[];
}

/** Runs `run`; its failure is added to `failed` as `what (why)`, never thrown. */
async function attempt(failed: string[], what: string, run: () => Promise<void>): Promise<void> {
  await run().catch((error: unknown) => {
    failed.push(`${what} (${describeError(error).message})`);
  });
}

/**
 * Removes what a committed restore replaced: its staging folders (a copy swap leaves them; its entries
 * were copied into the live one) and, unless it keeps the previous state aside, its previous database and
 * folders. Every part is tried; returns those that could not be removed, each with why. The live
 * database is never dropped, whatever a journal or leftovers file names.
 */
async function removeReplaced(
  deps: SwapDeps,
  names: ReplacedNames,
  keepPrevious: boolean,
): Promise<string[]> {
  // A staging folder's failure is noted by its path (removeStagingFolder), apart from the previous state's.
  const stagingFailed: string[] = [];
  for (const folder of names.folders)
    await attempt(stagingFailed, folder.staging, () => removeStagingFolder(folder.staging));
  const failed: string[] = [];
  if (!keepPrevious) await removePrevious(deps, names, failed);
  // Health names a previous state that should have gone and did not; one kept on request is not that
  // (and was not tried).
  noteRemoval(deps.config.dataDir, names.id, failed);
  return [...stagingFailed, ...failed];
}

/** Drops the previous database and removes the previous folders of `names`; what fails is added to `failed`. */
async function removePrevious(deps: SwapDeps, names: ReplacedNames, failed: string[]): Promise<void> {
  const conn = deps.sources.conn;
  await attempt(failed, `database ${names.previous}`, async () => {
    if (names.previous === conn.database) throw new Error('it is the live database');
    await dropDatabase(conn, names.previous);
  });
  for (const folder of names.folders)
    await attempt(failed, folder.previous, () => removeTree(folder.previous));
}

/** What the last try in this process could not remove of each restore's replaced state, by data dir and id. */
const removalFailures = new Map<string, Map<string, string[]>>();

function noteRemoval(dataDir: string, id: string, failed: string[]): void {
  const byId = removalFailures.get(dataDir) ?? new Map<string, string[]>();
  if (failed.length > 0) byId.set(id, failed);
  else byId.delete(id);
  if (byId.size > 0) removalFailures.set(dataDir, byId);
  else removalFailures.delete(dataDir);
}

/** Why the last try in this process to remove each restore staging folder failed, by its path. */
const stagingFailures = new Map<string, string>();

/**
 * Removes a restore's staging folder (any `<folder>.gem-restore-staging-*` name). Its failure is noted
 * for health (stagingRemovalFailure) and thrown; its success clears the note.
 */
export async function removeStagingFolder(path: string): Promise<void> {
  try {
    await removeTree(path);
    stagingFailures.delete(path);
  } catch (error) {
    stagingFailures.set(path, `${path} (${describeError(error).message})`);
    throw error;
  }
}

/**
 * Why the last try in this process to remove staging folder `path` failed, as `path (why)`; undefined
 * if it was removed, or not tried since this process started.
 */
export function stagingRemovalFailure(path: string): string | undefined {
  return stagingFailures.get(path);
}

/**
 * What the last try in this process to remove restore `id`'s replaced state could not remove, each as
 * `what (why)`; undefined if it was all removed, or not tried since this process started (each start
 * tries again, so an agent that has started has tried).
 */
export function removalFailure(dataDir: string, id: string): string[] | undefined {
  return removalFailures.get(dataDir)?.get(id);
}

/**
 * Drops the previous database and folders of a committed restore, or keeps them if asked; then its
 * journal goes. Every part is tried, one failing or not (an undeletable file in a previous folder must
 * not keep a database of gigabytes); if any failed, it throws naming them and the journal stays, for the
 * next try (a later restore carries them to the leftovers file: settleEarlierRestore). Only disk space
 * is at stake: the live data is the restored one either way.
 */
async function cleanupPrevious(deps: SwapDeps, names: RestoreNames, keepPrevious: boolean): Promise<void> {
  const failed = await removeReplaced(deps, names, keepPrevious);
  if (keepPrevious) {
    // Only the newest previous state is kept aside: older ones go.
    await attempt(failed, 'the older previous states', () =>
      dropPreviousExcept(deps.sources.conn, deps.sources, names.id),
    );
  }
  // The roles it created and its safety backup stay. Their records go before the journal, which says it
  // committed: a record with no committed journal beside it is of a restore that did not commit.
  await attempt(failed, 'its record of the roles it created', () =>
    clearRoleRecord(deps.config.dataDir, names.id),
  );
  await attempt(failed, 'its record of its safety backup', () =>
    clearSafetyRecord(deps.config.dataDir, names.id),
  );
  if (failed.length > 0) throw new Error(`could not remove ${failed.join('; ')}`);
  await removeJournal(deps.config.dataDir, names.id);
}

/**
 * One earlier committed restore in the leftovers file: what it replaced and could not all be removed.
 * Its names must be those restoreNames gives its id (a `_gem_previous_<id>` database, `.gem-previous-<id>`
 * and `.gem-restore-staging-<id>` folders beside the recorded live ones): an entry naming anything else
 * is never acted on.
 */
const leftoverSchema = z
  .object({
    id: z.string().regex(/^[0-9a-f]+$/),
    keepPrevious: z.boolean(),
    live: z.string(),
    previous: z.string(),
    folders: z.array(z.object({ live: z.string(), staging: z.string(), previous: z.string() })),
  })
  .refine(
    (names) =>
      names.previous === `${dbPrefix(names.live)}${PREVIOUS_DB_MARK}${names.id}` &&
      names.folders.every(
        (folder) =>
          folder.previous === `${folder.live}${PREVIOUS_FOLDER_MARK}${names.id}` &&
          folder.staging === `${folder.live}${STAGING_FOLDER_MARK}${names.id}`,
      ),
    { message: 'not the names a restore gives what it replaced' },
  );

const leftoversFileSchema = z.object({
  format: z.literal('gem-restore-leftovers'),
  version: z.literal(1),
  // Each entry is checked on its own: one that does not pass stays in the file, never acted on.
  restores: z.array(z.unknown()),
});

/**
 * The leftovers file (restore-leftovers.json in the data dir): earlier committed restores whose previous
 * database or folders could not be removed, carried there when a later restore's journal took the place
 * of theirs. The cleanup after each restore, each start and each restore before it begins try again.
 */
export function leftoversPath(dataDir: string): string {
  return join(dataDir, 'restore-leftovers.json');
}

/** The leftovers file's entries (none if there is no file); throws if it cannot be read. */
async function readLeftovers(dataDir: string): Promise<unknown[]> {
  const text = await readFile(leftoversPath(dataDir), 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (text === undefined) return [];
  return leftoversFileSchema.parse(JSON.parse(text)).restores;
}

/** Writes the leftovers file (temp, fsync, rename), or removes it when nothing is left. */
async function writeLeftovers(dataDir: string, restores: unknown[]): Promise<void> {
  if (restores.length === 0) {
    await removeSmallFile(leftoversPath(dataDir));
    return;
  }
  const file = { format: 'gem-restore-leftovers', version: 1, restores };
  await writeSmallFileAtomic(leftoversPath(dataDir), `${JSON.stringify(file, null, 2)}\n`, 0o600);
}

/**
 * Tries again to remove what the leftovers file names; what goes leaves the file, what still cannot go
 * stays in it, logged. Never throws: only disk space is at stake (a failure is logged, the file kept).
 */
async function retryLeftovers(deps: SwapDeps): Promise<void> {
  const dataDir = deps.config.dataDir;
  try {
    const restores = await readLeftovers(dataDir);
    if (restores.length === 0) return;
    const left: unknown[] = [];
    for (const entry of restores) {
      const names = leftoverSchema.safeParse(entry);
      if (!names.success) {
        deps.log.error('a restore leftover names what a restore does not replace; it is left alone', {
          entry,
        });
        left.push(entry);
        continue;
      }
      const failed = await removeReplaced(deps, names.data, names.data.keepPrevious);
      if (failed.length === 0) {
        deps.log.info('removed what an earlier restore replaced', { restoreId: names.data.id });
        continue;
      }
      deps.log.warn(
        'could not remove all that an earlier restore replaced; the next cleanup or start tries again',
        {
          restoreId: names.data.id,
          failed,
        },
      );
      left.push(entry);
    }
    if (left.length < restores.length) await writeLeftovers(dataDir, left);
  } catch (error) {
    deps.log.warn(
      "could not retry the removal of earlier restores' leftovers; the next cleanup or start tries again",
      {
        error,
      },
    );
  }
}

/**
 * Before a restore begins (before its checks, so that the space freed counts), under the job lock (no
 * other restore runs): this restore's journal replaces none that still names something.
 * - An earlier restore whose journal does not say committed (its undo failed, or its process died in the
 *   swap) is undone first, as a start would, with what it left (staging, roles, safety backup). If that
 *   cannot be done, this restore is refused, its journal left in place, and nothing was changed.
 * - One whose journal says committed, its cleanup having failed, is cleaned up again; what still cannot go
 *   is carried to the leftovers file and its journal goes. Earlier leftovers are tried again first. Disk
 *   leftovers never refuse a restore; only a data dir in which the earlier journal cannot be set aside
 *   does (this restore could write no journal of its own either), and then nothing was changed.
 * - What restores that died before their swap left goes: their staging database and folders, the roles
 *   they created and their safety backups (safety-record.ts), as at a start.
 */
export async function settleEarlierRestore(deps: SwapDeps): Promise<void> {
  const journal = await readJournal(deps.config.dataDir, deps.log);
  if (!journal && (await journalUnknown(deps.config.dataDir, undefined))) {
    // This restore's journal would replace it, and with it what holds back the records it may own.
    throw new AppError(
      'restore_failed',
      'the restore did not start: the journal of an earlier restore (restore-journal.json) cannot be read, ' +
        'so whether that restore replaced the data, and which roles and safety backups must stay, is ' +
        `unknown; nothing was changed: ${UNREADABLE_JOURNAL_ADVICE}, then restore again`,
    );
  }
  if (journal && !journal.committed) {
    await undoEarlierRestore(deps, journal);
    await settleUncommittedRestores(deps, undefined, deps.log);
    return;
  }
  await retryLeftovers(deps);
  if (journal?.committed) await settleCommittedRestore(deps, journal);
  // None can be running: what restores that died before their swap left (staging database and folders,
  // the roles they created, their safety backups) goes now, not at the next start, and its space counts.
  await dropUncommittedLeftovers(deps, journal?.committed ? journal.id : undefined, deps.log);
}

/** Rolls back an earlier restore's uncommitted swap and removes its journal; refuses this restore if it cannot. */
async function undoEarlierRestore(deps: SwapDeps, journal: RestoreJournal): Promise<void> {
  deps.log.warn('undoing an earlier restore that stopped during its swap, before this one starts', {
    restoreId: journal.id,
    step: journal.step,
  });
  try {
    await rollBackFromJournal(deps, journal);
    await removeJournal(deps.config.dataDir, journal.id);
  } catch (error) {
    throw new AppError(
      'restore_failed',
      `the restore did not start: an earlier restore${journal.filename ? ` of ${journal.filename}` : ''} ` +
        `stopped during its swap (step ${journal.step}) and undoing it failed (${describeError(error).message}); ` +
        'nothing was changed: the agent finishes that undo from its journal as soon as the database answers ' +
        'again (or at its next start); try again then',
      { cause: error, details: { earlierRestoreId: journal.id, step: journal.step } },
    );
  }
}

/**
 * An earlier restore whose journal says committed: cleaned up again, or what cannot go carried to the
 * leftovers file and its journal removed (settleEarlierRestore).
 */
async function settleCommittedRestore(deps: SwapDeps, journal: RestoreJournal): Promise<void> {
  const dataDir = deps.config.dataDir;
  const failure = await cleanupPrevious(deps, journal, journal.keepPrevious).then(
    () => undefined,
    (error: unknown) => error,
  );
  if (failure === undefined) {
    deps.log.info('finished the cleanup of an earlier restore', { restoreId: journal.id });
    return;
  }
  try {
    // Its records go before its journal: a record with no committed journal is of a restore that did not
    // commit (its roles are taken back, its safety backup removed).
    await clearRoleRecord(dataDir, journal.id);
    await clearSafetyRecord(dataDir, journal.id);
    const { id, keepPrevious, live, previous } = journal;
    const folders = journal.folders.map(({ live, staging, previous }) => ({ live, staging, previous }));
    const earlier = await readLeftovers(dataDir).catch(async (error: unknown) => {
      // Ours, written whole: unreadable only if damaged. Kept aside, as it is, for a person to look at.
      const aside = `${leftoversPath(dataDir)}.unreadable-${Date.now()}`;
      deps.log.error('the restore leftovers file is unreadable; it is kept aside', { error, aside });
      await rename(leftoversPath(dataDir), aside);
      return [];
    });
    const others = earlier.filter((entry) => (entry as { id?: unknown } | null)?.id !== id);
    await writeLeftovers(dataDir, [...others, { id, keepPrevious, live, previous, folders }]);
    await removeJournal(dataDir, id);
  } catch (error) {
    throw new AppError(
      'restore_failed',
      `the restore did not start: the journal of an earlier restore could not be set aside (${describeError(error).message}); ` +
        'nothing was changed',
      { cause: error },
    );
  }
  deps.log.warn(
    'could not remove all that an earlier restore replaced; named in the leftovers file, the next cleanup or start tries again',
    { restoreId: journal.id, error: failure },
  );
}

/** Cleanups still running after their restore reported success, by data dir. */
const pendingCleanups = new Map<string, Promise<void>>();

/**
 * Runs the cleanup of a committed restore after the job has reported success (dropping a 1 GB
 * database takes a second or more: a checkpoint and the files' removal). The journal stays
 * "committed" until it is done, so a crash meanwhile is finished by recoverInterruptedRestore; the
 * next restore in this process, and recovery, wait for it first (restoreSettled).
 */
export function cleanupAfterReport(deps: SwapDeps, names: RestoreNames, keepPrevious: boolean): void {
  const dataDir = deps.config.dataDir;
  const previous = pendingCleanups.get(dataDir) ?? Promise.resolve();
  const run: Promise<void> = previous
    // A turn of the event loop first: the job's success is published before the drop starts.
    .then(() => new Promise<void>((resolve) => setImmediate(resolve)))
    .then(async () => {
      const started = performance.now();
      await cleanupPrevious(deps, names, keepPrevious).catch((error) =>
        deps.log.warn('could not remove all that the restore replaced; the next start tries again', {
          error,
        }),
      );
      await retryLeftovers(deps);
      deps.log.info('restore step', { step: 'cleanup', ms: Math.round(performance.now() - started) });
    })
    .finally(() => {
      if (pendingCleanups.get(dataDir) === run) pendingCleanups.delete(dataDir);
    });
  pendingCleanups.set(dataDir, run);
}

/**
 * Resolves once no restore cleanup runs for `dataDir` in this process (restores, recovery and tests
 * that look for leftovers wait on it). Never rejects.
 */
export async function restoreSettled(dataDir: string): Promise<void> {
  for (let pending = pendingCleanups.get(dataDir); pending; pending = pendingCleanups.get(dataDir)) {
    await pending;
  }
}

/**
 * Drops the previous states restores set aside (previousStateNames) but restore `keepId`'s. Only names a
 * restore makes: a look-alike a person made (`<db>_gem_previous_mine`, a `.bak` copy) is not ours to remove.
 */
async function dropPreviousExcept(conn: PgConnection, sources: BackupSources, keepId: string): Promise<void> {
  for (const { id, kind, name } of await previousStateNames(sources, await listDatabases(conn))) {
    if (id === keepId) continue;
    if (kind === 'database') await dropDatabase(conn, name);
    else await removeTree(name);
  }
}

/** Folders beside `live` whose names start with `<live name><mark>`. */
async function siblings(live: string, mark: string): Promise<string[]> {
  const dir = dirname(live);
  const start = `${basename(live)}${mark}`;
  const entries = await readdir(dir).catch(() => [] as string[]);
  return entries.filter((e) => e.startsWith(start)).map((e) => join(dir, e));
}

/** A restore's id as it makes one (`randomBytes(4)` in hex): only names ending in one are a restore's. */
const RESTORE_ID = /^[0-9a-f]{8}$/;

/** A database or folder named exactly as a restore names the previous state it sets aside (restoreNames). */
export interface PreviousStateName {
  id: string;
  kind: 'database' | 'folder';
  /** The database's name, or the folder's path. */
  name: string;
}

/**
 * Of `databases` (names on GEM's cluster) and the entries beside the live folders, those named as a
 * restore's previous state: `<db>_gem_previous_<id>` and `<folder>.gem-previous-<id>` folders, with an id
 * as restores make them. Nothing else (a `.part` copy, a name a person chose) counts.
 */
export async function previousStateNames(
  sources: BackupSources,
  databases: string[],
): Promise<PreviousStateName[]> {
  const found: PreviousStateName[] = restoreDatabases(sources, databases, PREVIOUS_DB_MARK).map(
    ({ id, name }) => ({ id, kind: 'database', name }),
  );
  for (const configured of [sources.scriptsDir, sources.configDir]) {
    const live = await liveFolderPath(configured);
    for (const path of await siblings(live, PREVIOUS_FOLDER_MARK)) {
      const id = basename(path).slice(`${basename(live)}${PREVIOUS_FOLDER_MARK}`.length);
      if (RESTORE_ID.test(id)) found.push({ id, kind: 'folder', name: path });
    }
  }
  return found;
}

/** Of `databases`, those named `<db><mark><id>` with an id as restores make them. */
function restoreDatabases(sources: BackupSources, databases: string[], mark: string): StagingName[] {
  const prefix = `${dbPrefix(sources.conn.database)}${mark}`;
  return databases.flatMap((name) => {
    const id = name.startsWith(prefix) ? name.slice(prefix.length) : '';
    return RESTORE_ID.test(id) ? [{ id, name }] : [];
  });
}

/**
 * Of `databases` (names on GEM's cluster), those named as a restore's staging database
 * (`<db>_gem_restore_<id>`, restoreNames), with an id as restores make them.
 */
export function stagingDatabaseNames(sources: BackupSources, databases: string[]): StagingName[] {
  return restoreDatabases(sources, databases, STAGING_DB_MARK);
}

/** A restore's staging folder as rollback and the copy swap name it too: `<id>`, `<id>r`, `<id>-discarded`. */
const STAGING_FOLDER_ID = /^([0-9a-f]{8})(?:r|-discarded)?$/;

/** A folder (or database) named exactly as a restore names a staging folder beside a live one (restoreNames). */
export interface StagingName {
  id: string;
  /** The folder's path (the database's name). */
  name: string;
}

/**
 * The entries beside the live folders named as a restore's staging folder (`<folder>.gem-restore-staging-<id>`,
 * and the `r` and `-discarded` names a rollback and a copy swap give one), with an id as restores make
 * them. Nothing else counts.
 */
export async function stagingFolderNames(sources: BackupSources): Promise<StagingName[]> {
  const found: StagingName[] = [];
  for (const configured of [sources.scriptsDir, sources.configDir]) {
    const live = await liveFolderPath(configured);
    for (const path of await siblings(live, STAGING_FOLDER_MARK)) {
      const id = STAGING_FOLDER_ID.exec(
        basename(path).slice(`${basename(live)}${STAGING_FOLDER_MARK}`.length),
      );
      if (id) found.push({ id: id[1]!, name: path });
    }
  }
  return found;
}

/**
 * The ids of restores whose previous state the agent still accounts for itself: the journal's (a swap
 * under way, or a committed one whose cleanup is to come) and the leftovers file's (removed again at each
 * start and restore). `unknown` while a journal is on disk that cannot be read (it may be of a swap to be
 * undone from that very state), or a cleanup runs in this process. A leftovers file that cannot be read
 * accounts for nothing: nothing retries what it names.
 */
export async function accountedRestoreIds(dataDir: string): Promise<Set<string> | 'unknown'> {
  if (pendingCleanups.has(dataDir)) return 'unknown';
  const ids = new Set<string>();
  const text = await readFile(journalPath(dataDir), 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (text !== undefined) {
    const journal = journalSchema.safeParse(parseJson(text));
    if (!journal.success) return 'unknown';
    ids.add(journal.data.id);
  }
  for (const entry of await readLeftovers(dataDir).catch(() => [])) {
    const names = leftoverSchema.safeParse(entry);
    if (names.success) ids.add(names.data.id);
  }
  return ids;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * Removes staging leftovers: the `<db>_gem_restore_<id>` databases and `<folder>.gem-restore-staging-<id>`
 * folders restores name (stagingDatabaseNames, stagingFolderNames).
 */
export async function dropStagingLeftovers(sources: BackupSources): Promise<string[]> {
  const removed: string[] = [];
  await endDatabaseCreations(sources.conn, `${dbPrefix(sources.conn.database)}${STAGING_DB_MARK}`);
  for (const { name } of stagingDatabaseNames(sources, await listDatabases(sources.conn))) {
    await dropDatabase(sources.conn, name);
    removed.push(name);
  }
  // Every folder is tried, one failing or not (each failure is noted for health); the first is thrown.
  const failures: unknown[] = [];
  // Only names a restore makes (stagingFolderNames): a look-alike a person made is not ours to remove.
  for (const { name: path } of await stagingFolderNames(sources)) {
    await removeStagingFolder(path).then(
      () => removed.push(path),
      (error: unknown) => failures.push(error),
    );
  }
  if (failures.length > 0) throw failures[0];
  return removed;
}

/** Undoes an uncommitted swap from what actually exists, so the old state is back whole. */
async function rollBackFromJournal(deps: SwapDeps, journal: RestoreJournal): Promise<void> {
  const conn = deps.sources.conn;
  const databases = new Set(await listDatabases(conn));
  if (databases.has(journal.previous)) {
    if (databases.has(journal.live)) {
      // Whatever holds the live name now is not the old state (the staging copy, or an empty one).
      const aside = databases.has(journal.staging) ? `${journal.staging}r` : journal.staging;
      await terminateSessions(conn, journal.live);
      await renameDatabase(conn, journal.live, aside);
    }
    await terminateSessions(conn, journal.previous);
    await renameDatabase(conn, journal.previous, journal.live);
  }
  if ((await listDatabases(conn)).includes(journal.live)) await setAllowConnections(conn, journal.live, true);
  for (const folder of journal.folders) {
    if (folder.swap === 'copy') {
      await putCopiedFolderBack(folder);
      continue;
    }
    if (!existsSync(folder.previous)) {
      // Nothing was moved aside. If there was no live folder, one holding its name now is the staged
      // folder moved in: it goes back to its staging name (removed with the leftovers below).
      if (folder.liveExisted === false && existsSync(folder.live) && !existsSync(folder.staging)) {
        await renameFolder(folder.live, folder.staging);
      }
      continue;
    }
    await putPreviousFolderBack(folder);
  }
}

/**
 * At start: finishes (committed) or rolls back (not committed) a swap a crash interrupted, then drops
 * staging leftovers. After it, the live database and folders are wholly the old state or wholly the
 * new one. Skipped while another process holds the job lock (its restore may be running). Returns what
 * it did: `completed` (finished a committed swap), `rolled-back`, `none` (no swap was under way) or
 * `skipped` (left to the process holding the lock).
 */
export async function recoverInterruptedRestore(
  deps: SwapDeps,
  options: {
    whileRunning?: boolean;
    /**
     * Where its lines about a restore journal that cannot be read go (deps.log by default): the database
     * watch logs them at the first check that finds it, not at each one (silentLogger after).
     */
    journalLog?: Logger;
  } = {},
): Promise<'none' | 'rolled-back' | 'completed' | 'skipped'> {
  const journalLog = options.journalLog ?? deps.log;
  await restoreSettled(deps.config.dataDir);
  // Another live process holding the job lock may be restoring right now (the lock module's rule).
  if (await heldByOtherProcess(join(deps.config.dataDir, 'job.lock'))) {
    deps.log.info('another process holds the job lock; restore recovery is left to it');
    return 'skipped';
  }
  const journal = await readJournal(deps.config.dataDir, journalLog);
  const committedId = journal?.committed ? journal.id : undefined;
  // While agents run (the database watch), a committed restore may still be cleaning up in the
  // process that made it (a CLI command), after its job ended: that is only disk space, left to it
  // or to the next start, and so are the staging leftovers meanwhile. The safety backups of restores
  // that died uncommitted go (never that one's).
  if (options.whileRunning && journal?.committed) {
    await removeUncommittedSafetyBackups(deps, committedId, journalLog);
    return 'skipped';
  }
  const outcome = !journal ? 'none' : journal.committed ? 'completed' : 'rolled-back';
  if (journal) {
    if (journal.committed) {
      deps.log.warn('finishing a restore that was interrupted after its swap', { restoreId: journal.id });
      // Its live data is whole: what could not be removed is only disk space, and never stops a start.
      await cleanupPrevious(deps, journal, journal.keepPrevious).catch((error: unknown) =>
        deps.log.warn('could not remove all that the restore replaced; the next start tries again', {
          restoreId: journal.id,
          error,
        }),
      );
    } else {
      deps.log.warn('rolling back a restore that was interrupted during its swap', {
        restoreId: journal.id,
        step: journal.step,
      });
      await rollBackFromJournal(deps, journal);
      await removeJournal(deps.config.dataDir);
    }
  }
  await settleUncommittedRestores(deps, committedId, journalLog);
  return outcome;
}

/**
 * What restores that did not commit left, once none can be running and the journal is settled (rolled
 * back, or restore `committedId`'s committed): earlier leftovers retried, staging leftovers dropped, the
 * roles they created taken back, their safety backups removed. Never throws: each part is only logged.
 * `journalLog` takes the lines about a journal that cannot be read (recoverInterruptedRestore).
 */
async function settleUncommittedRestores(
  deps: SwapDeps,
  committedId: string | undefined,
  journalLog: Logger,
): Promise<void> {
  await retryLeftovers(deps);
  await dropUncommittedLeftovers(deps, committedId, journalLog);
}

/**
 * The part of settleUncommittedRestores after the earlier leftovers: staging leftovers dropped, then the
 * roles restores that did not commit created taken back, then their safety backups removed. Never throws.
 */
async function dropUncommittedLeftovers(
  deps: SwapDeps,
  committedId: string | undefined,
  journalLog: Logger,
): Promise<void> {
  // Leftovers are only disk space: failing to drop them (database down) must not stop the agent starting.
  const leftoversGone = await dropStagingLeftovers(deps.sources).then(
    (removed) => {
      if (removed.length > 0) deps.log.info('removed restore staging leftovers', { count: removed.length });
      return true;
    },
    (error) => {
      deps.log.warn('could not check for restore staging leftovers', { error });
      return false;
    },
  );
  // Then the roles a restore that did not commit created (the staging databases' objects were theirs).
  if (leftoversGone) await takeBackUncommittedRoles(deps, committedId, journalLog);
  // And the safety backups they made: a restore that did not commit changed nothing.
  await removeUncommittedSafetyBackups(deps, committedId, journalLog);
}

/**
 * takeBackRecordedRoles, its failure logged (the next start retries). Not while a journal that cannot be
 * read is on disk (journalUnknown): the roles of a restore that committed own the data it restored.
 */
async function takeBackUncommittedRoles(
  deps: SwapDeps,
  committedId: string | undefined,
  journalLog: Logger,
): Promise<void> {
  const dataDir = deps.config.dataDir;
  if (await journalUnknown(dataDir, committedId)) {
    const records = (await roleRecords(dataDir)).map((record) => record.name);
    if (records.length > 0) {
      journalLog.warn(
        'kept the roles that interrupted restores created: the restore journal (restore-journal.json) ' +
          "cannot be read, so whether their restore committed is unknown (a committed one's roles own the " +
          `data it restored); ${UNREADABLE_JOURNAL_ADVICE}`,
        { records },
      );
    }
    return;
  }
  await takeBackRecordedRoles(deps.sources.conn, dataDir, deps.log, committedId).catch((error) =>
    deps.log.warn('could not take back the roles an interrupted restore created; the next start retries', {
      error,
    }),
  );
}

/**
 * removeRecordedSafetyBackups, its failure logged (the next start retries). Not while a journal that cannot
 * be read is on disk (journalUnknown): the safety backup of a restore that committed is the only copy of
 * the data it replaced.
 */
async function removeUncommittedSafetyBackups(
  deps: SwapDeps,
  committedId: string | undefined,
  journalLog: Logger,
): Promise<void> {
  if (await journalUnknown(deps.config.dataDir, committedId)) {
    journalLog.warn(
      'kept the safety backups of interrupted restores: the restore journal cannot be read, so whether they committed is unknown',
    );
    return;
  }
  await removeRecordedSafetyBackups(deps.config.dataDir, deps.log, committedId).catch((error: unknown) =>
    deps.log.warn('could not remove the safety backup of an interrupted restore; the next start retries', {
      error,
    }),
  );
}

/**
 * openAgent's entry point: recovery before anything uses the live database (seeding, the pool).
 * Returns what it did (recoverInterruptedRestore), for the record of the interrupted restore job.
 */
export async function recoverRestoreAtStart(
  config: AgentConfig,
  log: Logger,
  live: { databaseUrl: string; scriptsDir: string; configDir: string },
): Promise<'none' | 'rolled-back' | 'completed' | 'skipped'> {
  return recoverInterruptedRestore({
    config,
    log,
    sources: {
      conn: parseDatabaseUrl(live.databaseUrl),
      tools: new PostgresTools(config.pgBinDir),
      scriptsDir: live.scriptsDir,
      configDir: live.configDir,
    },
  });
}
