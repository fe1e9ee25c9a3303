/** Health's look for what restores set aside and nothing accounts for any more: named, never removed. */
import { lstat } from 'node:fs/promises';
import type { Agent } from '../agent';
import { heldByOtherProcess } from '../jobs/lock';
import {
  accountedRestoreIds,
  PREVIOUS_DB_MARK,
  previousStateNames,
  removalFailure,
  STAGING_DB_MARK,
  stagingDatabaseNames,
  stagingFolderNames,
  stagingRemovalFailure,
} from '../restore/swap';
import { shellQuoted } from '../system/spawn';
import { formatAge } from './model';

/**
 * One restore's previous state or staging folders still on disk that a person must see to: found with no
 * journal, leftovers entry or kept-previous job behind it (nothing will remove it), or one the agent tried
 * to remove and could not (`couldNotRemove`).
 */
export interface RestoreLeftover {
  restoreId: string;
  /** Its database, with its size when it could be read. */
  database: { name: string; sizeBytes: number | null } | null;
  /** Its previous folders. */
  folders: string[];
  /**
   * Present on an entry for what it staged instead (then it has no database or previous folders): where
   * it unpacked the backup's files beside the live folders (a copy swap's stay until its cleanup). Only
   * ever a copy: nothing in one is the only copy of GEM's data.
   */
  stagingFolders?: string[];
  /**
   * On such an entry, the database it loaded the backup into (`<db>_gem_restore_<id>`, with its size when
   * it could be read), left by a restore that stopped before its swap: as large as GEM's own database.
   */
  stagingDatabase?: { name: string; sizeBytes: number | null };
  /** When its folders were set aside (their change time), if it has any. */
  setAsideAt: string | null;
  /** What removes it, once a person has checked that nothing in it is needed (none: the agent removes it). */
  commands: string[];
  /**
   * Present when the agent removes it itself (its journal or the leftovers file names it, or it is a
   * staging folder) and its last try in this process failed: what it could not remove, each with why. It
   * tries again at each start (and a previous state before each restore).
   */
  couldNotRemove?: string[];
}

/** The names a restore asked to keep (`keepPrevious`) recorded by its job: `keptPrevious`, the database. */
async function keptPreviousIds(agent: Agent): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const job of await agent.jobs.listWithOthers()) {
    const kept = (job.result as { keptPrevious?: unknown } | undefined)?.keptPrevious;
    if (job.kind !== 'restore' || typeof kept !== 'string') continue;
    const at = kept.lastIndexOf(PREVIOUS_DB_MARK);
    if (at >= 0) ids.add(kept.slice(at + PREVIOUS_DB_MARK.length));
  }
  return ids;
}

/**
 * A check, cheap enough for every evaluation, of the previous states restores set aside (a
 * `<db>_gem_previous_<id>` database, `<folder>.gem-previous-<id>` folders) that no restore accounts for
 * (a committed restore's journal lost before its cleanup ran), or that the agent's own last try in this
 * process could not remove (`couldNotRemove`: an undeletable file, a database in use). The same for
 * restores' staging folders (`<folder>.gem-restore-staging-<id>`) and databases (`<db>_gem_restore_<id>`):
 * one no journal or leftovers entry accounts for is left by a restore that stopped (its process killed, or
 * its removal failed) and only the next restore or the agent's next start removes it. They are never
 * removed here, whatever they hold: those nothing accounts for may be the only copy of the data before
 * that restore. Nothing of a restore that may be running
 * counts: while the job lock is held, a cleanup runs or a journal that cannot be read is on disk, the last
 * finding stands. The database's size is read once per name.
 */
export function restoreLeftoversCheck(agent: Agent): () => Promise<RestoreLeftover[]> {
  let last: RestoreLeftover[] = [];
  const sizes = new Map<string, number | null>();
  const look = async (): Promise<RestoreLeftover[]> => {
    const databases = (
      await agent.sql<{ datname: string }[]>`
        select datname from pg_database
        where position(${PREVIOUS_DB_MARK} in datname) > 0 or position(${STAGING_DB_MARK} in datname) > 0`
    ).map((d) => d.datname);
    const names = await previousStateNames(agent.sources, databases);
    const staging = await stagingFolderNames(agent.sources);
    const stagingDatabases = stagingDatabaseNames(agent.sources, databases);
    if (names.length === 0 && staging.length === 0 && stagingDatabases.length === 0) {
      last = [];
      return last;
    }
    const busy =
      agent.jobs.active().length > 0 || (await heldByOtherProcess(agent.jobs.lockPath).catch(() => true));
    const accounted = busy ? 'unknown' : await accountedRestoreIds(agent.config.dataDir);
    if (accounted === 'unknown') return last;
    const kept = await keptPreviousIds(agent);
    // What the agent itself could not remove of a restore it accounts for (undefined: nothing, or not tried).
    const failedFor = (id: string) =>
      accounted.has(id) ? removalFailure(agent.config.dataDir, id) : undefined;
    const unaccounted = names.filter((n) => (!accounted.has(n.id) && !kept.has(n.id)) || failedFor(n.id));
    // A staging database is never in a journal's swap (the swap renames it live): nothing else accounts for it.
    const leftStagingDatabases = stagingDatabases.filter((s) => !accounted.has(s.id));
    const unsized = [
      ...unaccounted.filter((n) => n.kind === 'database').map((n) => n.name),
      ...leftStagingDatabases.map((s) => s.name),
    ].filter((name) => !sizes.has(name));
    for (const name of unsized) {
      const [row] = await agent.sql<{ size: string | null }[]>`
        select case when has_database_privilege(datname, 'CONNECT') then pg_database_size(datname) end as size
        from pg_database where datname = ${name}`;
      sizes.set(name, row?.size == null ? null : Number(row.size));
    }
    // A staging folder counts once nothing accounts for its restore, or the agent's last try to remove it failed.
    const stuckStaging = staging.filter((s) => !accounted.has(s.id) || stagingRemovalFailure(s.name));
    // One entry per restore for its previous state, and apart from it one for its staging folders that the
    // agent could not remove and one for those a person removes: each is either the agent's to retry
    // (couldNotRemove) or a person's (commands), never both.
    const byPart = new Map<string, RestoreLeftover>();
    const leftoverOf = (id: string, part: 'previous' | 'staging' | 'staging-stuck') => {
      let leftover = byPart.get(`${id} ${part}`);
      if (!leftover) {
        leftover = { restoreId: id, database: null, folders: [], setAsideAt: null, commands: [] };
        if (part !== 'previous') leftover.stagingFolders = [];
        if (part === 'staging-stuck') leftover.couldNotRemove = [];
        byPart.set(`${id} ${part}`, leftover);
      }
      return leftover;
    };
    /** Its change time, kept if it is the leftover's earliest. */
    const noteSetAside = async (leftover: RestoreLeftover, folder: string) => {
      const changed = await lstat(folder).then(
        (s) => s.ctime.toISOString(),
        () => null,
      );
      if (changed && (!leftover.setAsideAt || changed < leftover.setAsideAt)) leftover.setAsideAt = changed;
    };
    for (const { id, kind, name } of unaccounted) {
      const leftover = leftoverOf(id, 'previous');
      const failed = failedFor(id);
      if (failed) leftover.couldNotRemove = failed;
      if (kind === 'database') {
        leftover.database = { name, sizeBytes: sizes.get(name) ?? null };
        if (!failed) leftover.commands.unshift(`DROP DATABASE "${name.replaceAll('"', '""')}";`);
        continue;
      }
      leftover.folders.push(name);
      if (!failed) leftover.commands.push(`rm -r -- ${shellQuoted(name)}`);
      await noteSetAside(leftover, name);
    }
    for (const { id, name } of leftStagingDatabases) {
      const leftover = leftoverOf(id, 'staging');
      leftover.stagingDatabase = { name, sizeBytes: sizes.get(name) ?? null };
      leftover.commands.unshift(`DROP DATABASE "${name.replaceAll('"', '""')}";`);
    }
    for (const { id, name } of stuckStaging) {
      const failed = stagingRemovalFailure(name);
      const leftover = leftoverOf(id, failed ? 'staging-stuck' : 'staging');
      leftover.stagingFolders!.push(name);
      if (failed) leftover.couldNotRemove!.push(failed);
      else leftover.commands.push(`rm -r -- ${shellQuoted(name)}`);
      await noteSetAside(leftover, name);
    }
    last = [...byPart.values()];
    return last;
  };
  // GEM's database not answering is the other areas' to tell: the last finding stands meanwhile.
  return () =>
    look().catch((error: unknown) => {
      agent.log.debug('could not look for what restores set aside', { error });
      return last;
    });
}

const mb = (n: number) => `${Math.max(1, Math.round(n / 1048576))} MB`;
const sized = (database: { sizeBytes: number | null }) =>
  database.sizeBytes == null ? '' : ` (${mb(database.sizeBytes)})`;

/** A leftover's commands as a person reads them: a DROP DATABASE with where to run it. */
const spelledOut = (l: RestoreLeftover) =>
  l.commands.map((c) =>
    c.startsWith('DROP DATABASE')
      ? `${c} (in psql as GEM's database user, or dropdb ${(l.database ?? l.stagingDatabase)!.name})`
      : c,
  );

/** The sentences health gives about `leftovers` at `now`: what they are, why they stay, how they go. */
export function restoreLeftoversReason(leftovers: RestoreLeftover[], now: Date): string {
  const named = (l: RestoreLeftover) => {
    const parts = [
      ...(l.database ? [`the database ${l.database.name}${sized(l.database)}`] : []),
      ...l.folders.map((f) => `the folder ${f}`),
      ...(l.stagingDatabase
        ? [`the staging database ${l.stagingDatabase.name}${sized(l.stagingDatabase)}`]
        : []),
      ...(l.stagingFolders ?? []).map((f) => `the staging folder ${f}`),
    ];
    const when = l.setAsideAt ? `, set aside ${formatAge(now.getTime() - Date.parse(l.setAsideAt))} ago` : '';
    const all = parts.length > 1 ? `${parts.slice(0, -1).join(', ')} and ${parts.at(-1)}` : parts[0];
    return `${all} (restore ${l.restoreId}${when})`;
  };
  const sentences: string[] = [];
  const staged = leftovers.filter((l) => l.stagingFolders);
  const stuck = leftovers.filter((l) => l.couldNotRemove && !l.stagingFolders);
  if (stuck.length > 0) {
    const each = stuck.map((l) => `${named(l)}: could not remove ${l.couldNotRemove!.join('; ')}`);
    sentences.push(
      `Data a restore replaced could not be removed and takes disk space: ${each.join('; and ')}. The agent ` +
        'tries again at each start and before each restore: once what stops it is mended, restart the agent ' +
        'and it goes',
    );
  }
  const lost = leftovers.filter((l) => !l.couldNotRemove && !l.stagingFolders);
  if (lost.length > 0) {
    const commands = lost.flatMap(spelledOut);
    sentences.push(
      `Data a restore set aside is still here, taking disk space: ${lost.map(named).join('; ')}. A restore ` +
        'sets the data it replaces aside under such names and removes it once done; here its journal ' +
        '(restore-journal.json in the data dir) was lost before that (deleted, or the data dir restored from ' +
        "elsewhere), so the agent leaves it alone: it may be the only copy of GEM's data from before that " +
        `restore. Once you have checked that nothing in it is needed, remove it: ${commands.join(' and ')}`,
    );
  }
  if (staged.length > 0) sentences.push(stagingReason(staged, named));
  return sentences.join('. ');
}

/**
 * The sentences about restores' staging folders: only ever a copy (the backup's files, or a live folder's
 * entries a swap put aside), so what a person removes needs no check beyond that no restore runs.
 */
function stagingReason(leftovers: RestoreLeftover[], named: (l: RestoreLeftover) => string): string {
  const sentences: string[] = [];
  const stuck = leftovers.filter((l) => l.couldNotRemove);
  if (stuck.length > 0) {
    const each = stuck.map((l) => `${named(l)}: could not remove ${l.couldNotRemove!.join('; ')}`);
    sentences.push(
      `What a restore staged could not be removed and takes disk space: ${each.join('; and ')}. It is only a ` +
        "copy (of the backup it restored, or of a live folder), never the only copy of GEM's data. The agent " +
        'tries again at each start and before each restore: once what stops it is mended, restart the agent ' +
        'and it goes',
    );
  }
  const left = leftovers.filter((l) => !l.couldNotRemove);
  if (left.length > 0) {
    sentences.push(
      `What a restore staged is still here, taking disk space: ${left.map(named).join('; ')}. A restore ` +
        'loads the backup into a staging database and unpacks its files into staging folders beside the live ' +
        'ones, and removes them when it ends; these were not removed (their restore stopped first, its ' +
        'process ended, or the removal failed in another process) and nothing removes them before the next ' +
        "restore or the agent's next start. They are only a copy (of the backup restored, or of a live " +
        "folder), never the only copy of GEM's data: restart the agent, or remove them: " +
        left.flatMap(spelledOut).join(' and '),
    );
  }
  return sentences.join('. ');
}
