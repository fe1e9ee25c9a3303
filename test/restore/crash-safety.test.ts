/**
 * A restore killed before its swap (SIGKILL: a power cut) changed nothing: the next start removes the
 * safety backup it made (named in restore-safety-<id>.json before it was written), and says so in the
 * log, so that it cannot push an earlier restore's safety backup out of the newest three kept. One killed
 * after its swap committed keeps its safety backup (the only copy of the data it replaced). A real agent
 * process is killed; a real start of the agent follows.
 */
import { readdir, readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAgent } from '../../agent/agent';
import { loadConfig } from '../../agent/config';
import { createLogger } from '../../agent/log';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { agentEnv, backupNow, crashingRestore, leftovers, liveState } from './helpers';

let pg: TestPostgres;
let children: BuiltChildren<'crash-safety-child'>;
let t: TestAgent;
let backupPath: string;

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
  t = await startTestAgent(pg);
  backupPath = t.agent.catalog.pathOf(await backupNow(t.agent, 'safety'));
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await children?.remove();
});

describe('a restore killed mid-way and its safety backup', () => {
  it('before its swap: the next start removes the safety backup it made (and its record), and logs it', async () => {
    const before = await liveState(t.agent);
    await killedRestore('copy-settings');
    const [made, ...others] = await safetyBackups();
    expect(made).toBeDefined();
    expect(others).toEqual([]);
    expect(await records()).toHaveLength(1);

    const log = await start();
    expect(await safetyBackups()).toEqual([]);
    expect(await records()).toEqual([]);
    // Its entry in backup-records.json went with it: a later file of that name inherits nothing.
    const entries = JSON.parse(await readFile(t.agent.paths.backupRecords, 'utf8'));
    expect(Object.keys(entries)).not.toContain(made);
    expect(log).toContainEqual(
      expect.objectContaining({
        msg: 'removed the safety backup of a restore interrupted before its swap: nothing was changed',
        safetyBackup: made,
      }),
    );
    expect(await leftovers(t.agent)).toEqual([]);
    expect(await liveState(t.agent)).toEqual(before);
  });

  it('after its commit: the start keeps the safety backup (the data it replaced)', async () => {
    await killedRestore('role-record');
    const made = await safetyBackups();
    expect(made).toHaveLength(1);
    expect(await records()).toEqual([]);
    await start();
    expect(await safetyBackups()).toEqual(made);
  });
});
