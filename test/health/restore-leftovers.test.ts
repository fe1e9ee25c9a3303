/**
 * Health's disk area names what a committed restore set aside when its journal was lost before its
 * cleanup ran (a real restore killed after its commit, then its journal deleted): the previous database
 * and folders, with the commands that remove them, which the agent never runs itself. Once a person ran
 * them, the warning is gone. A restore's own journal, a kept previous state and names that are not a
 * restore's are never named. What the agent itself could not remove (an undeletable file, a database
 * PostgreSQL refuses to drop) is named with why, until a start removes it. So is a restore's staging
 * folder that it could not remove, and the staging database and folders a killed restore left (only the
 * next restore or start removes those), never one of a restore still running.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RestoreLeftover } from '../../agent/health/restore-leftovers';
import { recoverInterruptedRestore } from '../../agent/restore/restore';
import { journalPath } from '../../agent/restore/swap';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { runProcess } from '../../agent/system/spawn';
import { crashingRestore, leftovers, runRestore } from '../restore/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { backupNow, call } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let backupPath: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  backupPath = t.agent.catalog.pathOf(await backupNow(t));
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

async function disk(): Promise<{ status: string; reason: string; restoreLeftovers?: RestoreLeftover[] }> {
  const res = await call(t, 'GET', '/health');
  expect(res.status).toBe(200);
  return res.body.areas.disk;
}

const maintenanceSql = <T>(fn: Parameters<typeof withSql<T>>[1]) =>
  withSql(databaseUrl(t.agent.sources.conn, 'postgres'), fn);

describe('health after a restore whose journal was lost before its cleanup', () => {
  it('names the previous database and folders and how to remove them, until they are removed', async () => {
    const live = t.agent.sources.conn.database;
    const { scriptsDir, configDir } = t.agent.sources;
    // Names like a restore's that are not (an id no restore makes, a partial copy): never counted.
    const lookalikes = [`${scriptsDir}.gem-previous-notanid`, `${configDir}.gem-previous-0123abcd.part`];
    for (const path of lookalikes) await mkdir(path);
    await maintenanceSql((sql) => sql.unsafe(`create database "${live}_gem_previous_mine"`));
    expect((await disk()).restoreLeftovers).toBeUndefined();

    // Killed after its commit, before its cleanup: the committed journal says what to finish.
    await crashingRestore(t.agent, { pgBinDir: pg.binDir, backupPath, crashAt: 'dr-recovery' });
    const setAside = (await leftovers(t.agent)).filter((n) => !n.includes('mine') && !n.includes('notanid'));
    const id = /_gem_previous_([0-9a-f]{8})$/.exec(setAside.find((n) => n.includes('_gem_previous_'))!)![1]!;
    const database = `${live}_gem_previous_${id}`;
    const folders = [`${scriptsDir}.gem-previous-${id}`, `${configDir}.gem-previous-${id}`];
    expect(existsSync(journalPath(t.dataDir))).toBe(true);
    for (const folder of folders) expect(existsSync(folder)).toBe(true);
    // The journal accounts for them: the next start (or restore) removes them, nobody needs telling.
    expect((await disk()).restoreLeftovers).toBeUndefined();

    // A person deletes the journal; the next start finds nothing to finish and leaves them.
    await rm(journalPath(t.dataDir));
    expect(await recoverInterruptedRestore(t.agent)).toBe('none');
    const warned = await disk();
    expect(warned.status).not.toBe('ok');
    expect(warned.restoreLeftovers).toEqual([
      {
        restoreId: id,
        database: { name: database, sizeBytes: expect.any(Number) },
        folders,
        setAsideAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
        commands: [`DROP DATABASE "${database}";`, ...folders.map((f) => `rm -r -- '${f}'`)],
      },
    ]);
    expect(warned.restoreLeftovers![0]!.database!.sizeBytes).toBeGreaterThan(1_000_000);
    expect(warned.reason).toMatch(/^Data a restore set aside is still here, taking disk space: /);
    for (const name of [database, ...folders]) expect(warned.reason).toContain(name);
    expect(warned.reason).toContain('journal (restore-journal.json in the data dir) was lost');
    expect(warned.reason).toContain(`remove it: DROP DATABASE "${database}";`);
    expect(warned.reason).not.toMatch(/mine|notanid|\.part/);
    // Never removed by the agent: the same at the next look.
    expect((await disk()).restoreLeftovers).toEqual(warned.restoreLeftovers);
    for (const folder of folders) expect(existsSync(folder)).toBe(true);

    // Removed as advised, the warning is gone.
    for (const command of warned.restoreLeftovers![0]!.commands) {
      if (command.startsWith('DROP DATABASE')) await maintenanceSql((sql) => sql.unsafe(command));
      else expect((await runProcess('sh', ['-c', command])).code).toBe(0);
    }
    const after = await disk();
    expect(after.restoreLeftovers).toBeUndefined();
    expect(after.reason).not.toContain('set aside');
    for (const path of lookalikes) await rm(path, { recursive: true });
    await maintenanceSql((sql) => sql.unsafe(`drop database "${live}_gem_previous_mine"`));
  }, 120_000);

  it('does not name the previous state a restore kept on request', async () => {
    const job = await runRestore(t.agent, backupPath, { keepPrevious: true, skipSafetyBackup: true });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    const kept = (job.result as { keptPrevious: string }).keptPrevious;
    expect(await leftovers(t.agent)).toContain(kept);
    expect((await disk()).restoreLeftovers).toBeUndefined();
  }, 120_000);

  it('names what the agent could not remove of what a restore replaced, and why, until a start removes it', async () => {
    const live = t.agent.sources.conn.database;
    // The state the case before kept on request goes first.
    for (const name of await leftovers(t.agent)) {
      // Folders by their name beside the live ones, databases by theirs.
      if (name.includes('.gem-'))
        await rm(join(dirname(t.agent.sources.scriptsDir), name), { recursive: true });
      else await maintenanceSql((sql) => sql.unsafe(`drop database "${name}"`));
    }
    // In the live scripts folder, moved aside by the swap: it keeps that folder from being removed.
    const stuck = join(t.agent.sources.scriptsDir, 'stuck.lua');
    await writeFile(stuck, '-- stuck\n');
    await runProcess('chattr', ['+i', stuck]).then((r) => expect(r.code, r.stderr).toBe(0));
    let database: string | undefined;
    let folder: string | undefined;
    try {
      const job = await runRestore(t.agent, backupPath, {
        faults: {
          // Once it committed, its previous database is made a template, which PostgreSQL refuses to drop.
          afterCommit: async (step) => {
            if (step !== 'prune') return;
            const rows = await maintenanceSql(
              (sql) =>
                sql<
                  { datname: string }[]
                >`select datname from pg_database where datname like ${`${live}_gem_previous_%`}`,
            );
            database = rows[0]!.datname;
            await maintenanceSql((sql) => sql.unsafe(`alter database "${database}" is_template true`));
          },
        },
      });
      expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
      const id = /_gem_previous_([0-9a-f]{8})$/.exec(database!)![1]!;
      folder = `${t.agent.sources.scriptsDir}.gem-previous-${id}`;
      expect(await leftovers(t.agent)).toEqual([database, basename(folder)]);
      const warned = await disk();
      expect(warned.status).not.toBe('ok');
      expect(warned.restoreLeftovers).toEqual([
        {
          restoreId: id,
          database: { name: database, sizeBytes: expect.any(Number) },
          folders: [folder],
          setAsideAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
          // The agent removes it itself: no commands for a person.
          commands: [],
          couldNotRemove: [
            expect.stringMatching(new RegExp(`^database ${database} \\(.*template`)),
            expect.stringMatching(new RegExp(`^${folder} \\(.*chattr -i`)),
          ],
        },
      ]);
      expect(warned.reason).toMatch(/^Data a restore replaced could not be removed and takes disk space: /);
      for (const name of [database!, folder, 'chattr -i', 'restart the agent'])
        expect(warned.reason).toContain(name);
      expect(warned.reason).not.toContain('was lost');
    } finally {
      const gemDir = dirname(t.agent.sources.scriptsDir);
      const aside = (await readdir(gemDir)).filter((name) => name.startsWith('scripts.gem-previous-'));
      for (const path of [stuck, ...aside.map((name) => join(gemDir, name, 'stuck.lua'))]) {
        if (existsSync(path)) await runProcess('chattr', ['-i', path]);
      }
      if (database)
        await maintenanceSql((sql) => sql.unsafe(`alter database "${database}" is_template false`));
    }
    // Mended, the next start removes it all, and the warning is gone.
    await recoverInterruptedRestore(t.agent);
    expect(await leftovers(t.agent)).toEqual([]);
    expect((await disk()).restoreLeftovers).toBeUndefined();
  }, 120_000);
});

/** Health's entry for restore `id`'s staging folders; `named` adds its database, commands or why. */
const stagingEntry = (id: string, stagingFolders: string[], named: Partial<RestoreLeftover>) => ({
  restoreId: id,
  database: null,
  folders: [],
  stagingFolders,
  setAsideAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
  ...named,
});

describe('health after a restore that left its staging folder', () => {
  it('names a staging folder the restore could not remove, alone and with why, and nothing while a restore runs', async () => {
    expect(await leftovers(t.agent)).toEqual([]);
    const { scriptsDir, configDir } = t.agent.sources;
    const gemDir = dirname(scriptsDir);
    // A name like a restore's that is not (an id no restore makes): never counted.
    const lookalike = `${configDir}.gem-restore-staging-notanid`;
    await mkdir(lookalike);
    let staging: string[] = [];
    let whileRunning: Awaited<ReturnType<typeof disk>> | undefined;
    let stuck: string | undefined;
    try {
      const job = await runRestore(t.agent, backupPath, {
        skipSafetyBackup: true,
        faults: {
          beforeSwapStep: async (step) => {
            if (step !== 'copy-settings') return;
            // Its own staging folders are on disk, as yet accounted for by nothing but the running job.
            staging = (await readdir(gemDir))
              .filter((name) => /^(scripts|config)\.gem-restore-staging-[0-9a-f]{8}$/.test(name))
              .map((name) => join(gemDir, name));
            whileRunning = await disk();
            // An undeletable file in its scripts staging folder; then it stops before its swap.
            stuck = join(staging.find((path) => path.startsWith(`${scriptsDir}.`))!, 'stuck.lua');
            await writeFile(stuck, '-- stuck\n');
            await runProcess('chattr', ['+i', stuck]).then((r) => expect(r.code, r.stderr).toBe(0));
            throw new Error('injected: stopped before the swap');
          },
        },
      });
      expect(staging).toHaveLength(2);
      expect(whileRunning!.restoreLeftovers).toBeUndefined();
      // Its failure is the one it stopped for, not the staging folder it could not remove afterwards.
      expect(job.state).toBe('failed');
      expect(job.error?.message).toContain('injected: stopped before the swap');
      const folder = dirname(stuck!);
      const id = folder.slice(`${scriptsDir}.gem-restore-staging-`.length);
      // Its staging database and its config staging folder went; the scripts one stays, named alone.
      expect(await leftovers(t.agent)).toEqual([basename(folder), basename(lookalike)]);
      const warned = await disk();
      expect(warned.status).not.toBe('ok');
      expect(warned.restoreLeftovers).toEqual([
        stagingEntry(id, [folder], {
          // The agent removes it itself (at its next start): no commands for a person.
          commands: [],
          couldNotRemove: [expect.stringMatching(new RegExp(`^${folder} \\(.*chattr -i`))],
        }),
      ]);
      expect(warned.reason).toMatch(/^What a restore staged could not be removed and takes disk space: /);
      for (const words of [`the staging folder ${folder}`, 'chattr -i', 'restart the agent'])
        expect(warned.reason).toContain(words);
      expect(warned.reason).not.toMatch(/was lost|notanid/);

      // One a restore killed before its swap left (nothing tried to remove it): named with its command.
      const killed = `${configDir}.gem-restore-staging-0badcafe`;
      await mkdir(killed);
      await writeFile(join(killed, 'gem.conf'), 'a = 1\n');
      const both = await disk();
      expect(both.restoreLeftovers).toEqual([
        warned.restoreLeftovers![0],
        stagingEntry('0badcafe', [killed], { commands: [`rm -r -- '${killed}'`] }),
      ]);
      expect(both.reason).toContain(
        `What a restore staged is still here, taking disk space: the staging folder ${killed}`,
      );
      expect(both.reason).toContain(`restart the agent, or remove them: rm -r -- '${killed}'`);
    } finally {
      if (stuck && existsSync(stuck)) await runProcess('chattr', ['-i', stuck]);
    }
    // Mended, the next start removes them all, and the warning is gone; a look-alike a person made is
    // never removed.
    await recoverInterruptedRestore(t.agent);
    expect(await leftovers(t.agent)).toEqual([basename(lookalike)]);
    expect((await disk()).restoreLeftovers).toBeUndefined();
    await rm(lookalike, { recursive: true });
  }, 120_000);

  it('names the staging database and folders a restore killed before its swap left, until the next restore removes them', async () => {
    const live = t.agent.sources.conn.database;
    const { scriptsDir, configDir } = t.agent.sources;
    // A database named like a restore's staging database that is not (an id no restore makes).
    const lookalike = `${live}_gem_restore_mine`;
    await maintenanceSql((sql) => sql.unsafe(`create database "${lookalike}"`));
    expect((await disk()).restoreLeftovers).toBeUndefined();

    // Another process's restore, killed once its database and files are staged, before its swap.
    await crashingRestore(t.agent, { pgBinDir: pg.binDir, backupPath, crashAt: 'copy-settings' });
    const database = (await leftovers(t.agent)).find((name) => /_gem_restore_[0-9a-f]{8}$/.test(name))!;
    const id = database.slice(-8);
    const folders = [`${scriptsDir}.gem-restore-staging-${id}`, `${configDir}.gem-restore-staging-${id}`];
    for (const folder of folders) expect(existsSync(folder)).toBe(true);
    const warned = await disk();
    expect(warned.status).not.toBe('ok');
    expect(warned.restoreLeftovers).toEqual([
      stagingEntry(id, folders, {
        stagingDatabase: { name: database, sizeBytes: expect.any(Number) },
        commands: [`DROP DATABASE "${database}";`, ...folders.map((folder) => `rm -r -- '${folder}'`)],
      }),
    ]);
    expect(warned.restoreLeftovers![0]!.stagingDatabase!.sizeBytes).toBeGreaterThan(1024 * 1024);
    expect(warned.reason).toMatch(
      new RegExp(
        `^What a restore staged is still here, taking disk space: the staging database ${database} \\(\\d+ MB\\), `,
      ),
    );
    expect(warned.reason).toContain(
      `remove them: DROP DATABASE "${database}"; (in psql as GEM's database user, or dropdb ${database}) and rm -r -- `,
    );
    expect(warned.reason).not.toContain(lookalike);

    // The next restore removes them before its own and succeeds; the look-alike stays.
    const job = await runRestore(t.agent, backupPath, { skipSafetyBackup: true });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(await leftovers(t.agent)).toEqual([lookalike]);
    expect((await disk()).restoreLeftovers).toBeUndefined();
    await maintenanceSql((sql) => sql.unsafe(`drop database "${lookalike}"`));
  }, 120_000);
});
