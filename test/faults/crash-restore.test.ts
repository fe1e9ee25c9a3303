/**
 * Crash during restore: an agent process restoring a backup is SIGKILLed in the check, safety,
 * stage (extraction and pg_restore) and swap phases; after a restart the live database and folders
 * are wholly the old state, staging leftovers and temp files are gone, and a restore then succeeds.
 * (test/restore/crash.test.ts covers each swap step.)
 */
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAgent } from '../../agent/agent';
import { readBackup } from '../../agent/backup/reader';
import { loadConfig } from '../../agent/config';
import { silentLogger } from '../../agent/log';
import { startRestore } from '../../agent/restore/restore';
import { TEMP_PREFIX } from '../../agent/system/atomic-file';
import { type CrashFixture, leftovers, liveState, startCrashFixture } from '../restore/helpers';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import { type BuiltChildren, buildChildren } from './built-child';
import { runChild } from './child';
import { faultReport } from './report';

const report = faultReport('crash-restore', 'kills');

let pg: TestPostgres;
/** agent-child.ts bundled once for the file: each child starts without tsx's loader. */
let children: BuiltChildren<'agent-child'>;
let t: CrashFixture['t'];
let dataDir: string;
let env: Record<string, string>;
let backupName: string;
let atBackup: CrashFixture['atBackup'];
/** Backups already read whole, by file identity (inode, size, mtime): read again only if changed. */
const verified = new Map<string, string>();

async function change(tag: string): Promise<void> {
  await withSql(t.agent.databaseUrl, (sql) => sql`update users set display_name = ${tag}`);
  await writeFile(join(t.agent.sources.scriptsDir, `crash-${tag}.lua`), tag);
}

/** Opens a fresh agent over the data dir (recovery runs at start) and lists what the crash left. */
async function restart(): Promise<string[]> {
  const agent = await openAgent(loadConfig({ ...env, NODE_ENV: 'test' }), silentLogger);
  try {
    const problems: string[] = [];
    const temps = (await readdir(agent.paths.backups)).filter((n) => n.startsWith(TEMP_PREFIX));
    if (temps.length) problems.push(`temp files: ${temps.join(', ')}`);
    for (const b of await agent.catalog.list()) {
      const s = await stat(agent.catalog.pathOf(b.filename));
      const identity = `${s.ino}:${s.size}:${s.mtimeMs}`;
      if (verified.get(b.filename) === identity) continue;
      await readBackup(agent.catalog.pathOf(b.filename), { keys: agent.keyring.masterKeys }).then(
        () => verified.set(b.filename, identity),
        (e: Error) => problems.push(`${b.filename} does not verify: ${e.message}`),
      );
    }
    const left = await leftovers(agent);
    if (left.length) problems.push(`leftovers: ${left.join(', ')}`);
    return problems;
  } finally {
    await agent.close();
  }
}

beforeAll(async () => {
  ({ pg, children } = await startAll({
    pg: startPostgres,
    children: () => buildChildren({ 'agent-child': 'test/faults/agent-child.ts' }),
  }));
  dataDir = await mkdtemp(join(tmpdir(), 'gem-faults-restore-'));
  // 150 k rows: every phase lasts a while (a kill lands inside it, not after it): the safety backup's
  // kill 150 ms into its phase finds its dump under way; the safety backup's and the staging's
  // late kills come 1.5 s into their phase, which ends first (they land as it ends, before the next
  // phase). 300 k made every phase twice as long, and every test fingerprints the table twice; the
  // size is not the point.
  ({ t, env, backupName, atBackup } = await startCrashFixture(pg, { rows: 150_000, dataDir }));
}, 120_000);

afterAll(async () => {
  report.print();
  await t?.close();
  await pg?.stop();
  await children?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('a restore killed before its swap', () => {
  const points: [string, Record<string, string>][] = [
    ['check, early', { KILL_PHASE: 'check', KILL_FRACTION: '0.1' }],
    ['check, late', { KILL_PHASE: 'check', KILL_FRACTION: '0.9' }],
    ['safety backup, dumping', { KILL_PHASE: 'safety', KILL_FRACTION: '0', KILL_AFTER_MS: '150' }],
    ['safety backup, writing', { KILL_PHASE: 'safety', KILL_FRACTION: '0', KILL_AFTER_MS: '1500' }],
    ['stage, extracting', { KILL_PHASE: 'stage', KILL_FRACTION: '0', KILL_AFTER_MS: '100' }],
    ['stage, pg_restore', { KILL_PHASE: 'stage', KILL_FRACTION: '0', KILL_AFTER_MS: '1500' }],
    ['swap, entering', { KILL_PHASE: 'swap', KILL_FRACTION: '0' }],
  ];
  for (const [where, kill] of points) {
    it(`leaves the old state whole when killed at ${where}`, async () => {
      await change(where.replace(/\W+/g, '-'));
      const before = await liveState(t.agent);
      const run = runChild(
        { ...env, FAULT_ACTION: 'restore', BACKUP_NAME: backupName, ...kill },
        children.paths['agent-child'],
      );
      const end = await run.exited;
      report.inject();
      const died = run.lines.find((l) => l.event === 'suicide');
      expect(end.signal, `${end.stderr}\n${JSON.stringify(run.lines)}`).toBe('SIGKILL');
      console.log(`restore killed at ${where}: died in phase ${died?.phase}`);
      const problems = await restart();
      const state = await liveState(t.agent);
      const old = JSON.stringify(state) === JSON.stringify(before);
      const mixed = !old && JSON.stringify(state) !== JSON.stringify(atBackup);
      report.tried(
        problems.length === 0 && !mixed,
        `${where} (died in ${died?.phase}): ${problems.join('; ')}${mixed ? ' mixed state' : ''}`,
      );
      expect(problems).toEqual([]);
      expect(state).toEqual(before);
    });
  }

  it('then restores cleanly', async () => {
    const job = await startRestore(t.agent, backupName, { skipSafetyBackup: true });
    const done = await t.agent.jobs.waitFor(job.id);
    expect(done.error).toBeUndefined();
    expect(await liveState(t.agent)).toEqual(atBackup);
    expect(await leftovers(t.agent)).toEqual([]);
    report.tried(true);
  });
});
