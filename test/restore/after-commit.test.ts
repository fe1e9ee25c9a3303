/**
 * A restore whose swap committed is a restore that happened: a step after the commit that fails (its
 * record of the roles it created, the unfinished DR recovery, the safety prune; the removal of what it
 * replaced) never fails the job nor leaves the journal or the role record for the next start to take
 * wrongly. The job succeeds, its result's warnings say what did not finish, and a start of the agent
 * afterwards changes nothing of the live data. Real agent, PostgreSQL and files; a real start.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAgent } from '../../agent/agent';
import { loadConfig } from '../../agent/config';
import type { Job } from '../../agent/jobs/runner';
import { createLogger } from '../../agent/log';
import { journalPath, leftoversPath } from '../../agent/restore/swap';
import { TEMP_PREFIX } from '../../agent/system/atomic-file';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { runProcess } from '../../agent/system/spawn';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { agentEnv, backupNow, leftovers, liveState, runRestore } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let backupPath: string;
let atBackup: Awaited<ReturnType<typeof liveState>>;

/** r_owner owns a table r_reader may read: a restore of the backup after DROP_ROLES creates both. */
const SETUP = `
  create role r_owner; create role r_reader;
  create table r_things (id int); alter table r_things owner to r_owner; grant select on r_things to r_reader;`;
const DROP_ROLES = 'drop table r_things; drop role r_owner; drop role r_reader;';

/** What every restore of the backup warns of: the roles it had to create. */
const CREATED = ['r_owner', 'r_reader'].map(
  (role) => `created role ${role} (no login): set its password if GEM logs in with it`,
);

/** The cluster's r_* roles. */
async function roles(): Promise<string[]> {
  const rows = await withSql(
    databaseUrl(t.agent.sources.conn, 'postgres'),
    (sql) => sql<{ r: string }[]>`select rolname as r from pg_roles where rolname ~ '^r_' order by 1`,
  );
  return rows.map((row) => row.r);
}

/** The restores' role records in the data dir. */
const records = async () => (await readdir(t.dataDir)).filter((name) => name.startsWith('restore-roles-'));

/**
 * Opens an agent over the data dir, as the service starts (its restore recovery runs), and closes it.
 * Returns what it logged at warn and above.
 */
async function start(): Promise<{ level: string; msg: string; [field: string]: unknown }[]> {
  const lines: string[] = [];
  const log = createLogger({ level: 'warn', write: (line) => lines.push(line) });
  const agent = await openAgent(loadConfig({ ...agentEnv(t, pg), NODE_ENV: 'test' }), log);
  await agent.close();
  return lines.map((line) => JSON.parse(line));
}

/** Runs `query` on the cluster's maintenance database. */
const onCluster = (query: string) =>
  withSql(databaseUrl(t.agent.sources.conn, 'postgres'), (sql) => sql.unsafe(query));

/** The databases a restore set aside (`<live>_gem_previous_<id>`). */
async function previousDatabases(): Promise<string[]> {
  const rows = await onCluster(`select datname from pg_database where datname like '%\\_gem\\_previous\\_%'`);
  return rows.map((row) => row.datname as string);
}

/** The leftovers file as JSON, or undefined if there is none. */
async function leftoversFile(): Promise<{ restores: { id: string; previous: string }[] } | undefined> {
  const text = await readFile(leftoversPath(t.dataDir), 'utf8').catch(() => undefined);
  return text === undefined ? undefined : JSON.parse(text);
}

/** The id of the restore whose journal is on disk. */
const journalId = async () => JSON.parse(await readFile(journalPath(t.dataDir), 'utf8')).id as string;

/** Live data that is not the backup's, and no r_owner nor r_reader: the restore must create them. */
async function changeLive(tag: string): Promise<void> {
  await withSql(t.agent.databaseUrl, async (sql) => {
    await sql.unsafe(DROP_ROLES);
    await sql`update users set display_name = ${tag}`;
  });
  await writeFile(join(t.agent.sources.scriptsDir, `after-${tag}.lua`), tag);
}

/** A restore that committed: it succeeded, GEM's data is the backup's, and the roles it created stay. */
async function expectRestored(job: Job): Promise<{ warnings?: string[] }> {
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  expect(await liveState(t.agent)).toEqual(atBackup);
  expect(await roles()).toEqual(['r_owner', 'r_reader']);
  return job.result as { warnings?: string[] };
}

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
  await withSql(t.agent.databaseUrl, (sql) => sql.unsafe(SETUP));
  backupPath = t.agent.catalog.pathOf(await backupNow(t.agent, 'after commit'));
  atBackup = await liveState(t.agent);
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('a step after the swap committed that fails', () => {
  it.each([
    [
      'role-record',
      /^the record of the roles this restore created could not be removed \(step role-record failed\): /,
    ],
    [
      'dr-recovery',
      /^the unfinished Cloud DR recovery could not be marked done \(step dr-recovery failed\): /,
    ],
    ['prune', /^the older safety backups could not all be pruned \(step prune failed\): /],
  ])(
    '%s: the job succeeds and its warning says what did not finish; journal and record are finished; a start changes nothing',
    async (failing, words) => {
      await changeLive(failing);
      // What the data dir holds when the last step after the commit runs (prune: there is a safety backup).
      let recordsAtPrune: string[] | undefined;
      const job = await runRestore(t.agent, backupPath, {
        faults: {
          afterCommit: async (step) => {
            if (step === 'prune') recordsAtPrune = await records();
            if (step === failing) throw new Error(`step ${step} failed`);
          },
        },
      });
      const result = await expectRestored(job);
      expect(result.warnings).toEqual([...CREATED, expect.stringMatching(words)]);
      // The record that would take the roles back goes at the commit, not with the cleanup after the job.
      expect(recordsAtPrune).toEqual(failing === 'role-record' ? [expect.any(String)] : []);
      // The cleanup after the job finished the journal and the record: nothing is left to the next start.
      expect(await leftovers(t.agent)).toEqual([]);
      expect(existsSync(journalPath(t.dataDir))).toBe(false);
      expect(await records()).toEqual([]);
      await start();
      expect(await liveState(t.agent)).toEqual(atBackup);
      expect(await roles()).toEqual(['r_owner', 'r_reader']);
      expect(await leftovers(t.agent)).toEqual([]);
    },
  );

  it('the removal of its work folder (an undeletable file in it): the job still succeeds', async () => {
    await changeLive('work');
    let stuck: string | undefined;
    try {
      const job = await runRestore(t.agent, backupPath, {
        faults: {
          afterCommit: async (step) => {
            if (step !== 'prune') return;
            const [work] = (await readdir(t.agent.paths.work)).filter((n) =>
              n.startsWith(`${TEMP_PREFIX}restore-`),
            );
            stuck = join(t.agent.paths.work, work!, 'stuck');
            await writeFile(stuck, 'x');
            await runProcess('chattr', ['+i', stuck]).then((r) => expect(r.code, r.stderr).toBe(0));
          },
        },
      });
      expect((await expectRestored(job)).warnings).toEqual(CREATED);
      expect(existsSync(stuck!)).toBe(true);
      expect(await leftovers(t.agent)).toEqual([]);
      expect(existsSync(journalPath(t.dataDir))).toBe(false);
    } finally {
      if (stuck) {
        await runProcess('chattr', ['-i', stuck]);
        await rm(dirname(stuck), { recursive: true, force: true });
      }
    }
  });

  it('the removal of what it replaced (an undeletable file): every other part goes, the journal stays for the next start, which starts and changes nothing', async () => {
    await changeLive('stuck');
    // Moved aside with the live scripts folder by the swap; then it keeps that folder from being removed.
    const stuck = join(t.agent.sources.scriptsDir, 'after-stuck.lua');
    await runProcess('chattr', ['+i', stuck]).then((r) => expect(r.code, r.stderr).toBe(0));
    const job = await runRestore(t.agent, backupPath);
    const gemDir = join(t.agent.sources.scriptsDir, '..');
    const aside = (await readdir(gemDir)).filter((name) => name.startsWith('scripts.gem-previous-'));
    try {
      expect((await expectRestored(job)).warnings).toEqual(CREATED);
      // The previous database and config folder went; only the folder holding the file stays.
      const left = await leftovers(t.agent);
      expect(left).toEqual(aside);
      expect(aside).toHaveLength(1);
      expect(existsSync(journalPath(t.dataDir))).toBe(true);
      expect(await records()).toEqual([]);
      // The next start tries again and fails again: it starts all the same, and the live data stays.
      await start();
      expect(await liveState(t.agent)).toEqual(atBackup);
      expect(await roles()).toEqual(['r_owner', 'r_reader']);
      expect(await leftovers(t.agent)).toEqual(left);
    } finally {
      for (const path of [stuck, ...aside.map((name) => join(gemDir, name, 'after-stuck.lua'))]) {
        if (existsSync(path)) await runProcess('chattr', ['-i', path]);
      }
    }
    // Once the file can go, the next start finishes the cleanup and the journal.
    await start();
    expect(await leftovers(t.agent)).toEqual([]);
    expect(existsSync(journalPath(t.dataDir))).toBe(false);
    expect(await liveState(t.agent)).toEqual(atBackup);
  });
});

describe('a later restore while an earlier one could not remove what it replaced', () => {
  it('carries the earlier names forward instead of writing its journal over them; the cleanup after it and the next starts remove them', async () => {
    await changeLive('earlier');
    // Moved aside with the live scripts folder by restore A; then it keeps that folder from being removed.
    const stuck = join(t.agent.sources.scriptsDir, 'after-earlier.lua');
    await runProcess('chattr', ['+i', stuck]).then((r) => expect(r.code, r.stderr).toBe(0));
    const gemDir = join(t.agent.sources.scriptsDir, '..');
    let earlierDb: string | undefined;
    let aside: string[] = [];
    try {
      // A: once it committed, its previous database is made a template, which PostgreSQL refuses to drop.
      const a = await runRestore(t.agent, backupPath, {
        faults: {
          afterCommit: async (step) => {
            if (step !== 'prune') return;
            [earlierDb] = await previousDatabases();
            await onCluster(`alter database "${earlierDb}" is_template true`);
          },
        },
      });
      expect((await expectRestored(a)).warnings).toEqual(CREATED);
      aside = (await readdir(gemDir)).filter((name) => name.startsWith('scripts.gem-previous-'));
      expect(aside).toHaveLength(1);
      expect(await leftovers(t.agent)).toEqual([earlierDb, ...aside]);
      const earlierId = await journalId();
      expect(earlierDb).toMatch(new RegExp(`_gem_previous_${earlierId}$`));

      // B: when its swap begins, its own journal is on disk and A's names are in the leftovers file.
      await changeLive('later');
      let atSwap: { journal: string; leftovers: unknown; databases: string[] } | undefined;
      const b = await runRestore(t.agent, backupPath, {
        faults: {
          beforeSwapStep: async (step) => {
            if (step !== 'fence-live-database') return;
            atSwap = {
              journal: await journalId(),
              leftovers: await leftoversFile(),
              databases: await previousDatabases(),
            };
          },
          // Droppable again before B's cleanup, which then tries A's leftovers too.
          afterCommit: async (step) => {
            if (step === 'prune') await onCluster(`alter database "${earlierDb}" is_template false`);
          },
        },
      });
      expect((await expectRestored(b)).warnings).toEqual(CREATED);
      expect(atSwap?.journal).not.toBe(earlierId);
      expect(atSwap?.leftovers).toEqual({
        format: 'gem-restore-leftovers',
        version: 1,
        restores: [
          {
            id: earlierId,
            keepPrevious: false,
            live: t.agent.sources.conn.database,
            previous: earlierDb,
            folders: ['scripts', 'config'].map((root) => {
              const live = join(gemDir, root);
              return {
                live,
                staging: `${live}.gem-restore-staging-${earlierId}`,
                previous: `${live}.gem-previous-${earlierId}`,
              };
            }),
          },
        ],
      });
      expect(atSwap?.databases).toEqual([earlierDb]);
      // B's cleanup removed all B replaced, and A's database; A's folder stays, named in the leftovers file.
      expect(await leftovers(t.agent)).toEqual(aside);
      expect(existsSync(journalPath(t.dataDir))).toBe(false);
      expect((await leftoversFile())?.restores.map((entry) => entry.id)).toEqual([earlierId]);

      // A start tries again and says why the folder cannot go; it starts, and changes nothing.
      const logged = await start();
      const folder = join(gemDir, aside[0]!);
      expect(logged).toContainEqual(
        expect.objectContaining({
          level: 'warn',
          restoreId: earlierId,
          // Not Node's "ENOTDIR: not a directory, scandir '<file>'": removeTree gives the unlink's EPERM.
          failed: [
            `${folder} (the agent cannot write to ${folder}: operation not permitted (EPERM); it must belong to ` +
              `the service's user root (chown -R root ${folder}) and not be immutable (chattr -i))`,
          ],
        }),
      );
      expect(await liveState(t.agent)).toEqual(atBackup);
      expect(await leftovers(t.agent)).toEqual(aside);
      expect((await leftoversFile())?.restores.map((entry) => entry.id)).toEqual([earlierId]);
    } finally {
      for (const path of [stuck, ...aside.map((name) => join(gemDir, name, 'after-earlier.lua'))]) {
        if (existsSync(path)) await runProcess('chattr', ['-i', path]);
      }
      if (earlierDb && (await previousDatabases()).includes(earlierDb))
        await onCluster(`alter database "${earlierDb}" is_template false`);
    }
    // Once the file can go, the next start removes it: nothing of either restore is left.
    expect(await start()).toEqual([]);
    expect(await leftovers(t.agent)).toEqual([]);
    expect(await leftoversFile()).toBeUndefined();
    expect(existsSync(journalPath(t.dataDir))).toBe(false);
    expect(await liveState(t.agent)).toEqual(atBackup);
  });

  it("refuses to begin, changing nothing, while the earlier restore's role record cannot be removed before its journal", async () => {
    await changeLive('record');
    // A: its role record is left (its step fails) and then cannot be removed (immutable).
    let record: string | undefined;
    const a = await runRestore(t.agent, backupPath, {
      faults: {
        afterCommit: async (step) => {
          if (step === 'role-record') throw new Error('record kept');
          if (step !== 'dr-recovery') return;
          record = join(t.dataDir, (await records())[0]!);
          await runProcess('chattr', ['+i', record]).then((r) => expect(r.code, r.stderr).toBe(0));
        },
      },
    });
    try {
      await expectRestored(a);
      const earlierId = await journalId();
      await withSql(t.agent.databaseUrl, (sql) => sql`update users set display_name = 'refused'`);
      const before = await liveState(t.agent);
      // Without its journal, the record would be taken back as a failed restore's: B does not begin.
      const b = await runRestore(t.agent, backupPath);
      expect(b.state).toBe('failed');
      expect(b.error?.message).toMatch(
        /^the restore did not start: the journal of an earlier restore could not be set aside \(.*\); nothing was changed$/,
      );
      expect(await liveState(t.agent)).toEqual(before);
      expect(await journalId()).toBe(earlierId);
      expect(await leftoversFile()).toBeUndefined();
    } finally {
      if (record) await runProcess('chattr', ['-i', record]);
    }
    // Once it can go, a start finishes A: the roles it created stay, nothing is left.
    await start();
    expect(await roles()).toEqual(['r_owner', 'r_reader']);
    expect(await records()).toEqual([]);
    expect(existsSync(journalPath(t.dataDir))).toBe(false);
    expect(await leftovers(t.agent)).toEqual([]);
  });

  it('never acts on a leftover whose names are not those a restore gives what it replaced (the live database)', async () => {
    const live = t.agent.sources.conn.database;
    const entry = { id: '0badc0de', keepPrevious: false, live: `${live}x`, previous: live, folders: [] };
    const file = `${JSON.stringify({ format: 'gem-restore-leftovers', version: 1, restores: [entry] }, null, 2)}\n`;
    await writeFile(leftoversPath(t.dataDir), file, { mode: 0o600 });
    const before = await liveState(t.agent);
    try {
      const logged = await start();
      expect(logged).toEqual([
        expect.objectContaining({
          level: 'error',
          msg: 'a restore leftover names what a restore does not replace; it is left alone',
        }),
      ]);
      expect(await liveState(t.agent)).toEqual(before);
      expect(await readFile(leftoversPath(t.dataDir), 'utf8')).toBe(file);
    } finally {
      await rm(leftoversPath(t.dataDir), { force: true });
    }
  });
});
