/**
 * A restore killed before its swap committed (SIGKILL: a power cut; before the swap or during it) changed
 * nothing: the next start (rolling its journal back) removes the safety backup it made (named in
 * restore-safety-<id>.json before it was written), and says so in the log, so that it cannot push an
 * earlier restore's safety backup out of the newest three kept. One killed after its swap committed keeps
 * its safety backup (the only copy of the data it replaced). A real agent process is killed; a real start
 * of the agent follows, or the running service's database watch (a CLI restore killed beside it).
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAgent } from '../../agent/agent';
import { loadConfig } from '../../agent/config';
import { watchDatabase } from '../../agent/db/watch';
import { createLogger } from '../../agent/log';
import { journalPath, recoverInterruptedRestore } from '../../agent/restore/swap';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { until, within } from '../services/wait';
import { agentEnv, backupNow, crashChildEnv, crashingRestore, leftovers, liveState } from './helpers';

let pg: TestPostgres;
let children: BuiltChildren<'crash-safety-child'>;
let t: TestAgent;
let backupPath: string;
/** The log lines of the agent `t` (the service beside the killed restores). */
const serviceLines: Record<string, unknown>[] = [];

const REMOVED =
  'removed the safety backup of an interrupted restore that did not commit: nothing was changed';
const KEPT_UNKNOWN =
  'kept the safety backups of interrupted restores: the restore journal cannot be read, so whether they committed is unknown';

/** Resolves once the crash child, run with HOLD=1, says it stopped at its step; rejects if it exits first. */
function holding(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (stdout.includes('holding\n')) resolve();
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.once('exit', (code, signal) =>
      reject(new Error(`the restore exited (${code ?? signal}): ${stderr}`)),
    );
  });
}

const safetyBackups = async () =>
  (await t.agent.catalog.list()).filter((b) => b.kind === 'safety').map((b) => b.filename);
const records = async () => (await readdir(t.dataDir)).filter((name) => name.startsWith('restore-safety-'));

/** Opens an agent over the data dir, as the service starts (its recovery runs), and closes it; its log lines. */
async function start(): Promise<{ msg: string; safetyBackup?: string }[]> {
  const lines: string[] = [];
  const log = createLogger({ write: (line) => lines.push(line) });
  const agent = await openAgent(loadConfig({ ...agentEnv(t, pg), NODE_ENV: 'test' }), log);
  await agent.close();
  return lines.map((line) => JSON.parse(line));
}

/** A restore of the backup in another agent process, SIGKILLed at `crashAt`. */
const killedRestore = (crashAt: string) =>
  crashingRestore(t.agent, {
    pgBinDir: pg.binDir,
    backupPath,
    crashAt,
    entry: children.paths['crash-safety-child'],
  });

beforeAll(async () => {
  ({ pg, children } = await startAll({
    pg: startPostgres,
    children: () => buildChildren({ 'crash-safety-child': 'test/restore/crash-safety-child.ts' }),
  }));
  t = await startTestAgent(pg, {
    log: createLogger({ write: (line) => serviceLines.push(JSON.parse(line)) }),
  });
  backupPath = t.agent.catalog.pathOf(await backupNow(t.agent, 'safety'));
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await children?.remove();
});

describe('a restore killed mid-way and its safety backup', () => {
  it.each([
    ['before its swap', 'copy-settings'],
    ['during its swap', 'rename-staging-database'],
    ['during its swap', 'commit'],
  ])(
    '%s (killed before %s): the next start rolls any swap back, removes the safety backup it made (and its record), and logs it',
    async (_when, step) => {
      const before = await liveState(t.agent);
      await killedRestore(step);
      const [made, ...others] = await safetyBackups();
      expect(made).toBeDefined();
      expect(others).toEqual([]);
      expect(await records()).toHaveLength(1);
      expect(existsSync(journalPath(t.dataDir))).toBe(step !== 'copy-settings');

      const log = await start();
      expect(existsSync(journalPath(t.dataDir))).toBe(false);
      expect(await safetyBackups()).toEqual([]);
      expect(await records()).toEqual([]);
      // Its entry in backup-records.json went with it: a later file of that name inherits nothing.
      const entries = JSON.parse(await readFile(t.agent.paths.backupRecords, 'utf8'));
      expect(Object.keys(entries)).not.toContain(made);
      expect(log).toContainEqual(expect.objectContaining({ msg: REMOVED, safetyBackup: made }));
      expect(await leftovers(t.agent)).toEqual([]);
      expect(await liveState(t.agent)).toEqual(before);
    },
  );

  it('after its commit: the start keeps the safety backup (the data it replaced)', async () => {
    await killedRestore('role-record');
    // Its record went at the commit, before the role record: the journal no longer has to keep it.
    expect(await records()).toEqual([]);
    const made = await safetyBackups();
    expect(made).toHaveLength(1);
    expect(await records()).toEqual([]);
    await start();
    expect(await safetyBackups()).toEqual(made);
  });

  it('after its commit, before its record went: the database watch and the start keep the safety backup; the start removes the record', async () => {
    const earlier = await safetyBackups();
    await killedRestore('safety-record');
    const made = await safetyBackups();
    expect(made).toHaveLength(earlier.length + 1);
    expect(await records()).toHaveLength(1);
    // What the service's database watch runs under the job lock: the committed restore is left to its cleanup.
    expect(await recoverInterruptedRestore(t.agent, { whileRunning: true })).toBe('skipped');
    expect(await safetyBackups()).toEqual(made);
    expect(await records()).toHaveLength(1);
    await start();
    expect(await safetyBackups()).toEqual(made);
    expect(await records()).toEqual([]);
  });

  it('before its swap, its journal unreadable: the start keeps the safety backup (whether it committed is unknown)', async () => {
    const earlier = await safetyBackups();
    await killedRestore('copy-settings');
    const made = await safetyBackups();
    expect(made).toHaveLength(earlier.length + 1);
    // A damaged journal: it may be that of a restore that committed, whose safety backup is the data it replaced.
    await writeFile(journalPath(t.dataDir), '{}\n');
    const log = await start();
    expect(await safetyBackups()).toEqual(made);
    expect(await records()).toHaveLength(1);
    expect(log).toContainEqual(expect.objectContaining({ msg: KEPT_UNKNOWN }));
    // Once the journal is gone, the next start removes it.
    await rm(journalPath(t.dataDir));
    await start();
    expect(await safetyBackups()).toEqual(earlier);
    expect(await records()).toEqual([]);
  });

  it('before its swap while the service runs (a CLI restore): the database watch leaves it alone while it runs and while a job holds the job lock, then removes its safety backup', async () => {
    const kept = await safetyBackups();
    const before = await liveState(t.agent);
    serviceLines.length = 0;
    const removedByWatch = expect.objectContaining({ area: 'database-watch', msg: REMOVED });
    const child = spawn(process.execPath, [children.paths['crash-safety-child']], {
      env: {
        ...crashChildEnv(t.agent, { pgBinDir: pg.binDir, backupPath, crashAt: 'copy-settings' }),
        HOLD: '1',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    let finish: (() => void) | undefined;
    let watch = watchDatabase(t.agent, { intervalMs: 200 });
    try {
      // Running in another process, stopped before its swap, its safety backup made and recorded: it holds the job lock.
      await within(holding(child), 60_000, 'the restore to stop before its swap');
      const made = (await safetyBackups()).filter((name) => !kept.includes(name));
      expect(made).toHaveLength(1);
      expect(await records()).toHaveLength(1);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(await records()).toHaveLength(1);
      expect((await safetyBackups()).sort()).toEqual([...kept, ...made].sort());
      await watch.stop();

      // Killed; a job of the service holds the job lock meanwhile: left alone until it ends.
      child.kill('SIGKILL');
      await exited;
      const held = await t.agent.jobs.start(
        'maintenance',
        () =>
          new Promise<void>((resolve) => {
            finish = resolve;
          }),
      );
      watch = watchDatabase(t.agent, { intervalMs: 200 });
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(await records()).toHaveLength(1);
      expect(serviceLines).not.toContainEqual(removedByWatch);
      finish?.();
      await t.agent.jobs.waitFor(held.id);
      await until(async () => (await records()).length === 0, 'the watch settled the killed restore', 300);
    } finally {
      child.kill('SIGKILL');
      finish?.();
      await watch.stop();
    }
    expect(serviceLines).toContainEqual(
      expect.objectContaining({
        area: 'database-watch',
        msg: REMOVED,
        safetyBackup: expect.stringMatching(/^gem-backup-/),
      }),
    );
    expect(await safetyBackups()).toEqual(kept);
    expect(await leftovers(t.agent)).toEqual([]);
    expect(await liveState(t.agent)).toEqual(before);
  });
});
