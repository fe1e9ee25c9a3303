// A nightly Cloud DR push missed while the agent was down runs once at start, as a missed scheduled
// backup does; none is run when no slot passed since the last push.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { drServiceFor } from '../../agent/dr/service';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { pushViaApi, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  t = await startDrAgent(pg, cloud.url);
});
afterAll(async () => {
  drServiceFor(t.agent).stop();
  await t?.close().catch(() => {});
  await cloud?.dispose();
  await pg?.stop();
});

it('pushes at start when the last push is older than the last nightly slot, not otherwise', async () => {
  const dr = drServiceFor(t.agent);
  expect((await pushViaApi(t)).error).toBeUndefined();
  await dr.start();
  await dr.settled();
  dr.stop();
  // The manual push is after every slot that passed: nothing to catch up.
  expect((await dr.state.get()).lastPush?.trigger).toBe('manual');

  // As if the agent had been down for two nights since that push.
  await dr.state.update((s) => {
    s.lastPush!.at = new Date(Date.now() - 2 * 86_400_000).toISOString();
  });
  await dr.start();
  await dr.settled();
  dr.stop();
  expect((await dr.state.get()).lastPush).toMatchObject({ trigger: 'nightly', outcome: 'succeeded' });
  expect(await cloud.listSlotObjects(t.agent.keyring.installationId)).toHaveLength(1);
});
