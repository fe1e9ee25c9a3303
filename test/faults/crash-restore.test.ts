/**
 * Crash during restore: an agent process restoring a backup is SIGKILLed in the check, safety,
 * stage (extraction and pg_restore) and swap phases; after a restart the live database and folders
 * are wholly the old state, staging leftovers and temp files are gone, and a restore then succeeds.
 * (test/restore/crash.test.ts covers each swap step.)
 */
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAgent } from '../../agent/agent';
import { readBackup } from '../../agent/backup/reader';
import { loadConfig } from '../../agent/config';
import { silentLogger } from '../../agent/log';
import { startRestore } from '../../agent/restore/restore';
import { TEMP_PREFIX } from '../../agent/system/atomic-file';
import { leftovers, liveState } from '../restore/helpers';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { runChild } from './child';
import { faultReport } from './report';

const report = faultReport('crash-restore', 'kills');

let pg: TestPostgres;
let t: TestAgent;
let dataDir: string;
let env: Record<string, string>;
let backupName: string;
let atBackup: Awaited<ReturnType<typeof liveState>>;

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
      await readBackup(agent.catalog.pathOf(b.filename), { keys: agent.keyring.masterKeys }).catch(
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
  pg = await startPostgres();
  dataDir = await mkdtemp(join(tmpdir(), 'gem-faults-restore-'));
  t = await startTestAgent(pg, { dataDir });
  env = {
    DATABASE_URL: t.agent.databaseUrl,
    GEM_DATA_DIR: dataDir,
    GEM_SCRIPTS_DIR: t.agent.sources.scriptsDir,
    GEM_CONFIG_DIR: t.agent.sources.configDir,
    GEM_AGENT_TOKEN: TEST_TOKEN,
    GEM_PG_BIN: pg.binDir,
  };
  // Big enough that every phase lasts a while (a kill lands inside it, not after it).
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `create table history as select g as id, md5(g::text) || md5((g * 7)::text) as v from generate_series(1, 300000) g`,
    ),
  );
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  backupName = (job.result as { backup: { filename: string } }).backup.filename;
  atBackup = await liveState(t.agent);
});

afterAll(async () => {
  report.print();
  await t?.close();
  await pg?.stop();
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
      const run = runChild({ ...env, FAULT_ACTION: 'restore', BACKUP_NAME: backupName, ...kill });
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
