// A restore that changed nothing (cancelled, or failed before its swap committed or with the swap undone)
// removes its own safety backup: only SAFETY_BACKUPS_KEPT are kept, and one of a cancelled restore would
// push out the safety backup of an earlier restore that did complete. A committed restore keeps its own.
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '../../agent/agent';
import { startBackup } from '../../agent/backup/operations';
import type { Job } from '../../agent/jobs/runner';
import { createLogger } from '../../agent/log';
import {
  type RestoreOptions,
  recoverInterruptedRestore,
  restoreSettled,
  startRestore,
} from '../../agent/restore/restore';
import { journalPath } from '../../agent/restore/swap';
import { runProcess } from '../../agent/system/spawn';
import { SAFETY_BACKUPS_KEPT } from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import {
  backupNow,
  leftovers,
  liveState,
  runRestore,
  sealArchive,
  unpackBackup,
  withManifest,
} from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let backupName: string;
const lines: Record<string, unknown>[] = [];

/** The records of restores' safety backups in the data dir (restore-safety-<id>.json). */
const safetyRecords = async () =>
  (await readdir(t.dataDir)).filter((name) => name.startsWith('restore-safety-'));

const safetyBackups = async (agent: Agent) =>
  (await agent.catalog.list()).filter((b) => b.kind === 'safety').map((b) => b.filename);

/** A catalog restore of `backupName` as the page starts it; `fault` may cancel it (it gets the job's id). */
async function restore(
  faults: (id: () => string) => RestoreOptions['faults'] = () => undefined,
): Promise<Job> {
  let id = '';
  const options = faults(() => id);
  const job = await startRestore(t.agent, backupName, options ? { faults: options } : {});
  id = job.id;
  return t.agent.jobs.waitFor(job.id);
}

/**
 * A restore whose swap fails with the server stopped (the live database renamed aside), so its undo fails
 * too and its journal stays; the server is left down. Returns the safety backups it made (not in `earlier`).
 */
async function restoreWhoseUndoFails(earlier: string[]): Promise<string[]> {
  const job = await restore(() => ({
    beforeSwapStep: async (step) => {
      if (step === 'rename-staging-database') await pg.cluster.stop();
    },
  }));
  expect(job.error?.message).toMatch(/undoing it failed/);
  return (await safetyBackups(t.agent)).filter((name) => !earlier.includes(name));
}

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg, {
    log: createLogger({ write: (line) => lines.push(JSON.parse(line) as Record<string, unknown>) }),
  });
  backupName = await backupNow(t.agent, 'to restore');
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('the safety backup of a restore', () => {
  it("of a completed restore outlives restores cancelled while staging, and a backup's retention after them", async () => {
    const completed = await restore();
    expect(completed.state, completed.error?.message).toBe('succeeded');
    const kept = (completed.result as { safetyBackup: string }).safetyBackup;
    expect(await safetyBackups(t.agent)).toEqual([kept]);

    const before = await liveState(t.agent);
    const removed: string[] = [];
    // More cancelled restores than safety backups are kept: each would have pushed one out.
    for (let i = 0; i <= SAFETY_BACKUPS_KEPT; i++) {
      lines.length = 0;
      // Cancelled as pg_restore starts (once), or during the settings copy, both in phase `stage`.
      const job = await restore((id) =>
        i % 2 === 0
          ? { onStagingRestore: () => t.agent.jobs.cancel(id()) }
          : {
              beforeSwapStep: (step) => {
                if (step === 'copy-settings') t.agent.jobs.cancel(id());
              },
            },
      );
      expect(job.state).toBe('cancelled');
      expect(await safetyBackups(t.agent)).toEqual([kept]);
      const said = lines.map((l) => String(l.msg)).filter((m) => m.startsWith('the safety backup'));
      expect(said).toHaveLength(1);
      const name = /^the safety backup (gem-backup-\S+) was removed: nothing was changed$/.exec(
        said[0]!,
      )?.[1];
      expect(name).toBeDefined();
      expect(name).not.toBe(kept);
      // The job's own record says it too, as the page and the CLI show it.
      expect(job.error?.message).toBe(
        `the job was cancelled; the safety backup ${name} was removed: nothing was changed`,
      );
      removed.push(name!);
    }
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);

    // The next backup's retention has nothing of the cancelled restores to keep: the completed one's stays.
    const backupStarted = new Date().toISOString();
    const made = await t.agent.jobs.waitFor((await startBackup(t.agent)).id);
    expect(made.state, made.error?.message).toBe('succeeded');
    expect(await safetyBackups(t.agent)).toEqual([kept]);
    // Their records went with them (each had its verification recorded).
    const records = JSON.parse(await readFile(t.agent.paths.backupRecords, 'utf8')) as Record<
      string,
      unknown
    >;
    expect(Object.keys(records)).toContain(kept);
    // Names are by the second: the new backup may take the name of a safety backup removed in the same
    // second. Its record is then the new file's own (verified after the old one was gone), not the old one.
    const madeName = (made.result as { backup: { filename: string } }).backup.filename;
    for (const name of removed.filter((n) => n !== madeName))
      expect(Object.keys(records)).not.toContain(name);
    if (removed.includes(madeName)) {
      const record = records[madeName] as { verifiedAt?: string };
      expect(record.verifiedAt! >= backupStarted, JSON.stringify(record)).toBe(true);
    }
  });

  it('of a restore that fails before its swap (row counts that do not match) is removed', async () => {
    const before = await liveState(t.agent);
    const safety = await safetyBackups(t.agent);
    const { manifest, entries } = await unpackBackup(t.agent, t.agent.catalog.pathOf(backupName));
    const rowCounts = { ...manifest.rowCounts, 'public.users': manifest.rowCounts['public.users']! + 1 };
    const path = join(t.dataDir, 'counts.tar.gz');
    await sealArchive(
      t.agent.keyring.activeKey,
      t.agent.keyring.installationId,
      withManifest(manifest, entries, { rowCounts }),
      path,
    );
    const job = await runRestore(t.agent, path);
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('restore_failed');
    expect(job.error?.message).toContain('public.users');
    expect(job.error?.message).toMatch(
      /; the safety backup gem-backup-\S+ was removed: nothing was changed$/,
    );
    expect(await safetyBackups(t.agent)).toEqual(safety);
    expect(await liveState(t.agent)).toEqual(before);
  });

  it('of a restore whose swap failed and was undone is removed', async () => {
    const before = await liveState(t.agent);
    const safety = await safetyBackups(t.agent);
    const job = await restore(() => ({
      afterSwapStep: (step) => {
        if (step === 'move-staging-folder:config') throw new Error('injected failure after the last move');
      },
    }));
    expect(job.state).toBe('failed');
    expect(job.error?.message).toContain('everything was put back and the live system is unchanged');
    expect(job.error?.message).toMatch(/the safety backup gem-backup-\S+ was removed: nothing was changed$/);
    expect(await safetyBackups(t.agent)).toEqual(safety);
    expect(await liveState(t.agent)).toEqual(before);
  });

  it('stays when it was pinned meanwhile', async () => {
    const safety = await safetyBackups(t.agent);
    let pinned: string | undefined;
    const job = await restore((id) => ({
      beforeSwapStep: async (step) => {
        if (step !== 'copy-settings') return;
        pinned = (await safetyBackups(t.agent)).find((name) => !safety.includes(name));
        await t.agent.catalog.updateRecord(pinned!, { pinned: true });
        t.agent.jobs.cancel(id());
      },
    }));
    expect(job.state).toBe('cancelled');
    expect(pinned).toBeDefined();
    expect((await t.agent.catalog.info(pinned!)).pinned).toBe(true);
    await t.agent.catalog.delete(pinned!);
  });

  it('stays when it is pinned as the restore removes it, and the job does not say it was removed', async () => {
    const safety = await safetyBackups(t.agent);
    const catalog = t.agent.catalog;
    const remove = catalog.delete.bind(catalog);
    let pinned: string | undefined;
    // The restore has decided to remove its safety backup; the owner pins it that moment (the page's Pin).
    catalog.delete = async (name, options) => {
      catalog.delete = remove;
      pinned = name;
      const res = await t.request(`/api/v1/backups/${name}/pin`, { method: 'POST' });
      expect(res.status).toBe(200);
      return remove(name, options);
    };
    let job: Job;
    try {
      job = await restore((id) => ({
        beforeSwapStep: (step) => {
          if (step === 'copy-settings') t.agent.jobs.cancel(id());
        },
      }));
    } finally {
      catalog.delete = remove;
    }
    expect(job.state).toBe('cancelled');
    expect(job.error?.message).toBe('the job was cancelled');
    expect(pinned).toBeDefined();
    expect(safety).not.toContain(pinned);
    expect(await safetyBackups(t.agent)).toContain(pinned);
    expect((await t.agent.catalog.info(pinned!)).pinned).toBe(true);
    await t.agent.catalog.delete(pinned!);
  });

  it('stays while the swap could not be undone, and goes with the undo: the recovery finishes it', async () => {
    const before = await liveState(t.agent);
    const safety = await safetyBackups(t.agent);
    let made: string[];
    try {
      made = await restoreWhoseUndoFails(safety);
    } finally {
      await pg.cluster.restart();
      await recoverInterruptedRestore(t.agent);
    }
    expect(await liveState(t.agent)).toEqual(before);
    expect(made).toHaveLength(1);
    // Rolled back, the restore changed nothing: its safety backup went with the undo.
    expect(await safetyBackups(t.agent)).toEqual(safety);
  });

  it('of a restore whose undo failed: a restore started meanwhile is refused, changing nothing; once it can, a restore undoes it first', async () => {
    const before = await liveState(t.agent);
    const safety = await safetyBackups(t.agent);
    let made: string[] = [];
    try {
      made = await restoreWhoseUndoFails(safety);
      const journal = await readFile(journalPath(t.dataDir), 'utf8');
      // The server still down: the earlier swap cannot be undone, so this restore does not start.
      const refused = await restore();
      expect(refused.state).toBe('failed');
      expect(refused.error?.message).toMatch(
        new RegExp(
          `^the restore did not start: an earlier restore of ${backupName} stopped during its swap ` +
            '\\(step rename-staging-database\\) and undoing it failed \\(.+\\); nothing was changed: ',
        ),
      );
      expect(await readFile(journalPath(t.dataDir), 'utf8')).toBe(journal);
      expect((await safetyBackups(t.agent)).sort()).toEqual([...made, ...safety].sort());
    } finally {
      await pg.cluster.restart();
    }
    expect(made).toHaveLength(1);
    // The server back: the next restore undoes the earlier swap (its safety backup goes), then runs.
    const done = await restore();
    expect(done.state, done.error?.message).toBe('succeeded');
    const kept = (done.result as { safetyBackup: string }).safetyBackup;
    expect(await safetyBackups(t.agent)).toEqual([kept, ...safety]);
    // Its own journal goes with its cleanup after the report; the earlier one's was undone before it.
    await restoreSettled(t.dataDir);
    expect(existsSync(journalPath(t.dataDir))).toBe(false);
    expect(await leftovers(t.agent)).toEqual([]);
    expect(await liveState(t.agent)).toEqual(before);
  });

  it('of a committed restore stays although its restart command fails and a cancel comes meanwhile', async () => {
    const safety = await safetyBackups(t.agent);
    let jobId = '';
    t.agent.config.restartCommand = [
      process.execPath,
      '-e',
      'setTimeout(() => { process.stderr.write("no restart here"); process.exit(3); }, 300)',
    ];
    try {
      const job = await restore((id) => ({
        afterSwapStep: (step) => {
          jobId = id();
          // Too late: the swap commits, the restart command runs.
          if (step === 'commit') t.agent.jobs.cancel(jobId);
        },
      }));
      expect(job.state).toBe('succeeded');
      const result = job.result as { safetyBackup: string; restart: { ran: boolean; ok: boolean } };
      expect(result.restart).toMatchObject({ ran: true, ok: false });
      expect(await safetyBackups(t.agent)).toEqual([result.safetyBackup, ...safety]);
      expect((await t.agent.catalog.info(result.safetyBackup)).label).toBe(`before restore of ${backupName}`);
    } finally {
      t.agent.config.restartCommand = undefined;
    }
  });

  it("of a committed restore stays when its record could not be removed at the commit: the job's warning says so, its cleanup removes the record", async () => {
    let recordsAtPrune: string[] | undefined;
    const job = await restore(() => ({
      afterCommit: async (step) => {
        if (step === 'prune') recordsAtPrune = await safetyRecords();
        if (step === 'safety-record') throw new Error('record kept');
      },
    }));
    expect(job.state, job.error?.message).toBe('succeeded');
    const result = job.result as { safetyBackup: string; warnings?: string[] };
    expect(result.warnings).toContainEqual(
      "the record of this restore's safety backup could not be removed (record kept): " +
        'the agent removes it with the replaced data, or at its next start; the safety backup stays',
    );
    expect(recordsAtPrune).toHaveLength(1);
    // The cleanup after the report removes it, before the journal that says the restore committed.
    await restoreSettled(t.dataDir);
    expect(existsSync(journalPath(t.dataDir))).toBe(false);
    expect(await safetyRecords()).toEqual([]);
    await recoverInterruptedRestore(t.agent);
    expect(await safetyBackups(t.agent)).toContain(result.safetyBackup);
  });

  it('beyond SAFETY_BACKUPS_KEPT are pruned by the restore that committed: pins, the hold, the backup restored from stay', async () => {
    const done = async (job: Job) => {
      expect(job.state, job.error?.message).toBe('succeeded');
      return job.result as { safetyBackup: string; safetyBackupsPruned?: string[] };
    };
    // A pinned safety backup is kept and not counted; the others from before go as newer ones come.
    const before = await safetyBackups(t.agent);
    expect(before.length).toBeGreaterThan(1);
    const pinned = before[0]!;
    await t.agent.catalog.updateRecord(pinned, { pinned: true });
    const unpinned = async () => (await safetyBackups(t.agent)).filter((n) => n !== pinned).sort();
    // Regular backups are the next backup's to prune: restores leave them, more than are kept or not.
    const regular = async () =>
      (await t.agent.catalog.list())
        .filter((b) => b.kind !== 'safety')
        .map((b) => b.filename)
        .sort();
    await t.agent.settings.update({ autoBackup: { maxBackups: 1 } });
    await backupNow(t.agent, 'newest');
    const regularBefore = await regular();
    expect(regularBefore.length).toBeGreaterThan(2);
    const made: string[] = [];
    const pruned: string[] = [];
    // Restores in a row (the owner trying backups to find the good one), more than are kept.
    for (let i = 0; i <= SAFETY_BACKUPS_KEPT; i++) {
      const result = await done(await restore());
      made.push(result.safetyBackup);
      pruned.push(...(result.safetyBackupsPruned ?? []));
      expect((await unpinned()).length).toBeLessThanOrEqual(SAFETY_BACKUPS_KEPT);
    }
    expect(await unpinned()).toEqual(made.slice(-SAFETY_BACKUPS_KEPT).sort());
    expect(pruned.sort()).toEqual([...before.slice(1), made[0]!].sort());
    expect((await t.agent.catalog.info(pinned)).pinned).toBe(true);

    // The oldest kept one restored (as a file, no job naming it): it is not deleted under the restore.
    const oldest = made[1]!;
    const fromSafety = await done(await runRestore(t.agent, t.agent.catalog.pathOf(oldest)));
    expect(await unpinned()).toEqual([...made.slice(-SAFETY_BACKUPS_KEPT), fromSafety.safetyBackup].sort());
    expect(fromSafety.safetyBackupsPruned).toBeUndefined();

    // While pruning is held (damaged records: pins unknown), a restore deletes nothing.
    await t.agent.catalog.hold.hold('backup-records.json.damaged-safety-kept');
    lines.length = 0;
    const held = await done(await restore());
    expect(held.safetyBackupsPruned).toBeUndefined();
    expect(await unpinned()).toEqual(
      [...made.slice(-SAFETY_BACKUPS_KEPT), fromSafety.safetyBackup, held.safetyBackup].sort(),
    );
    expect(lines.map((l) => l.msg)).toContain('retention deleted nothing: pruning is paused');
    await t.agent.catalog.hold.resume();

    // A safety backup that cannot be deleted (immutable) fails only the prune, never the restore; the
    // newer ones the prune was to delete after it still go, and the result and the log say both.
    const newestKept = [held.safetyBackup, fromSafety.safetyBackup];
    const stuck = t.agent.catalog.pathOf(oldest);
    await runProcess('chattr', ['+i', stuck]).then((r) => expect(r.code, r.stderr).toBe(0));
    try {
      lines.length = 0;
      const blocked = await done(await restore());
      const others = made.slice(2);
      expect(blocked.safetyBackupsPruned).toEqual(others);
      const left = await unpinned();
      expect(left).toContain(oldest);
      for (const name of others) expect(left).not.toContain(name);
      const warned = lines.find(
        (l) => l.msg === 'the older safety backups could not be pruned; the restore itself is done',
      );
      const said = /^could not delete (\S+) \(.+\); deleted (.+)$/.exec(
        String((warned?.error as { message?: unknown } | undefined)?.message),
      );
      expect(said?.slice(1), JSON.stringify(warned)).toEqual([oldest, others.join(', ')]);
      newestKept.unshift(blocked.safetyBackup);
    } finally {
      await runProcess('chattr', ['-i', stuck]);
    }

    // The next restore prunes down to the newest kept again.
    const last = await done(await restore());
    newestKept.unshift(last.safetyBackup);
    expect(await unpinned()).toEqual(newestKept.slice(0, SAFETY_BACKUPS_KEPT).sort());
    expect((await t.agent.catalog.info(pinned)).pinned).toBe(true);
    expect(await regular()).toEqual(regularBefore);
  });
});
