import { existsSync } from 'node:fs';
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recoverInterruptedRestore } from '../../agent/restore/restore';
import { journalPath } from '../../agent/restore/swap';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { runProcess } from '../../agent/system/spawn';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import {
  crashingRestore as crashInRestore,
  databaseFingerprint,
  leftovers,
  liveState,
  runRestore,
} from './helpers';

let pg: TestPostgres;
/** crash-child.ts and the CLI bundled once for the file: each child starts without tsx's loader. */
let children: BuiltChildren<'crash-child' | 'cli'>;
let t: TestAgent;
let backupPath: string;
let atBackup: Awaited<ReturnType<typeof liveState>>;

async function change(tag: string): Promise<void> {
  await withSql(databaseUrl(t.agent.sources.conn), (sql) => sql`update users set display_name = ${tag}`);
  await writeFile(join(t.agent.sources.scriptsDir, `crash-${tag}.lua`), tag);
}

/** Runs a restore in another process that is SIGKILLed at `crashAt`. */
const crashingRestore = (crashAt: string) =>
  crashInRestore(t.agent, { pgBinDir: pg.binDir, backupPath, crashAt, entry: children.paths['crash-child'] });

beforeAll(async () => {
  ({ pg, children } = await startAll({
    pg: startPostgres,
    children: () => buildChildren({ 'crash-child': 'test/restore/crash-child.ts', cli: 'agent/cli.ts' }),
  }));
  t = await startTestAgent(pg);
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  backupPath = t.agent.catalog.pathOf((job.result as { backup: { filename: string } }).backup.filename);
  atBackup = await liveState(t.agent);
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await children?.remove();
});

describe('gem-backup restore', () => {
  it('needs --yes, then restores the file it is given', async () => {
    await change('cli');
    const env = {
      ...process.env,
      DATABASE_URL: databaseUrl(t.agent.sources.conn),
      GEM_DATA_DIR: t.dataDir,
      GEM_SCRIPTS_DIR: t.agent.sources.scriptsDir,
      GEM_CONFIG_DIR: t.agent.sources.configDir,
      GEM_AGENT_TOKEN: t.agent.token,
      GEM_PG_BIN: pg.binDir,
    };
    const cli = (args: string[]) =>
      runProcess(process.execPath, [children.paths.cli, 'restore', ...args], { env });
    const refused = await cli([backupPath]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('add --yes to confirm');
    const done = await cli([backupPath, '--yes']);
    // Nothing but the reminder that GEM still needs a restart (no GEM_RESTART_COMMAND here).
    expect(done.stderr).toBe(
      'warning: the data is restored, but GEM was not restarted: no restart command is set up on this controller (GEM_RESTART_COMMAND); restart GEM now so it uses the restored data',
    );
    expect(done.code).toBe(0);
    expect(done.stdout).toMatch(
      /^restored gem-backup-.*\nthe state before the restore is kept in gem-backup-/,
    );
    expect(await liveState(t.agent)).toEqual(atBackup);
    expect(await leftovers(t.agent)).toEqual([]);
  });
});

describe('a restore interrupted by a crash', () => {
  for (const step of [
    'rename-staging-database',
    'move-staging-folder:scripts',
    'move-live-folder:config',
    'commit',
  ]) {
    it(`is rolled back at the next start when the process dies before ${step}`, async () => {
      await change(step);
      const before = await liveState(t.agent);
      await crashingRestore(step);
      expect(await leftovers(t.agent)).not.toEqual([]);
      await recoverInterruptedRestore(t.agent);
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
      await expect(withSql(databaseUrl(t.agent.sources.conn), (sql) => sql`select 1`)).resolves.toBeTruthy();
    });
  }

  it('leaves its staging database and folders, when the process dies before its swap, to the next restore', async () => {
    await change('before-swap');
    await crashingRestore('copy-settings');
    // No journal yet: nothing but a start or the next restore removes what it staged.
    expect(existsSync(journalPath(t.dataDir))).toBe(false);
    const left = await leftovers(t.agent);
    expect(left.filter((name) => name.includes('_gem_restore_'))).toHaveLength(1);
    expect(left.filter((name) => name.includes('.gem-restore-staging-'))).toHaveLength(2);
    // The service still runs; a restore through it removes them before its checks, and itself succeeds.
    const job = await runRestore(t.agent, backupPath, { skipSafetyBackup: true });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(await leftovers(t.agent)).toEqual([]);
    expect(await liveState(t.agent)).toEqual(atBackup);
  });

  it('is rolled back at the next start when the commit fails and the process dies while undoing it', async () => {
    // The commit record was on disk when the undo began: a next start that believed it would finish
    // the restore forward and drop the previous database, over folders already put back.
    await change('undo-after-commit');
    const before = await liveState(t.agent);
    await crashingRestore('undo-after-commit');
    // It died mid-undo: the journal and the previous database are still there for the next start.
    expect(existsSync(journalPath(t.dataDir))).toBe(true);
    expect(await leftovers(t.agent)).not.toEqual([]);
    await recoverInterruptedRestore(t.agent);
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
  });

  it('leaves no folder at the next start when there was none before the crash', async () => {
    // A restore onto a machine without a scripts folder (a DR recovery): the staged folder is moved
    // in with nothing set aside, and a rollback must take it away again.
    await change('no-scripts-folder');
    const scripts = t.agent.sources.scriptsDir;
    const kept = `${scripts}-kept-by-test`;
    await rename(scripts, kept);
    try {
      const before = await databaseFingerprint(t.agent);
      await crashingRestore('commit');
      expect(existsSync(scripts)).toBe(true);
      await recoverInterruptedRestore(t.agent);
      expect(existsSync(scripts)).toBe(false);
      expect(await databaseFingerprint(t.agent)).toEqual(before);
    } finally {
      await rm(scripts, { recursive: true, force: true });
      await rename(kept, scripts);
    }
    expect(await leftovers(t.agent)).toEqual([]);
  });

  it('is finished at the next start when the process dies after the swap (the restart command kills it)', async () => {
    await change('after-commit');
    await crashingRestore('restart');
    await recoverInterruptedRestore(t.agent);
    expect(await liveState(t.agent)).toEqual(atBackup);
    expect(await leftovers(t.agent)).toEqual([]);
    await expect(
      import('node:fs/promises').then((fs) => fs.access(journalPath(t.dataDir))),
    ).rejects.toThrow();
  });
});
