// A push after a restore of an older backup: the restored backup holds what runs now, but the cloud holds
// a newer copy this box pushed before the restore, and refuses anything older. The push makes a new
// backup of what runs now instead of sending the restored one into that refusal.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import type { PushResult } from '../../agent/dr/push';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { startRestore } from '../../agent/restore/restore';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { pushViaApi, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
let a: TestAgent;

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  a = await startDrAgent(pg, cloud.url);
});
afterAll(async () => {
  await a?.close().catch(() => {});
  await cloud?.dispose();
  await pg?.stop();
});

it('never sends a backup older than the copy it pushed: after restoring one, a new backup goes', async () => {
  const deps = backupDeps(a.agent);
  const ctx = standaloneContext(silentLogger);
  const older = await createBackup(deps, ctx, { now: new Date(Date.now() - 2 * 3600_000) });
  const newer = await createBackup(deps, ctx, { now: new Date(Date.now() - 3600_000) });
  const first = await pushViaApi(a);
  expect(first.error).toBeUndefined();
  expect(first.result).toMatchObject({ backup: newer.filename, reused: true });

  // The owner goes back to the older backup: from now on it is what runs here.
  const restored = await a.agent.jobs.waitFor((await startRestore(a.agent, older.filename)).id);
  expect(restored.state, JSON.stringify(restored.error)).toBe('succeeded');

  const job = await pushViaApi(a);
  expect(job.error).toBeUndefined();
  const result = job.result as PushResult;
  expect(result).toMatchObject({ reused: false, temporary: true });
  expect(Date.parse(result.createdAt)).toBeGreaterThan(Date.parse(newer.createdAt));
  expect(await cloud.listSlotObjects(a.agent.keyring.installationId)).toHaveLength(1);
});
