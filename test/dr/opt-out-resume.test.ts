// An opt-out whose deletion was never recorded (settings saved, DR listener lost) is completed at the next start, once.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type DrService, drServiceFor } from '../../agent/dr/service';
import type { DrState } from '../../agent/dr/state';
import { startTestAgent, type TestAgent } from '../services/agent';
import { DR_ENROLLMENT_TOKEN, type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let cloud: DrCloud;
let dataDir: string;
const open: TestAgent[] = [];

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  dataDir = await mkdtemp(join(tmpdir(), 'gem-dr-resume-'));
});
afterAll(async () => {
  for (const t of open) await t.close().catch(() => {});
  await cloud?.dispose();
  await pg?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

/** The same installation (data dir and database) opened again, as a restart of the agent does. */
async function openInstallation(databaseUrl?: string): Promise<TestAgent> {
  const t = await startTestAgent(pg, {
    dataDir,
    ...(databaseUrl ? { databaseUrl } : {}),
    env: { GEM_DR_URL: cloud.url, GEM_DR_ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN },
  });
  open.push(t);
  return t;
}

async function closeInstallation(t: TestAgent): Promise<void> {
  open.splice(open.indexOf(t), 1);
  await t.close();
}

/** Every DR state the service writes, in order (the real store; only watched). */
function watchState(dr: DrService): DrState[] {
  const written: DrState[] = [];
  const update = dr.state.update.bind(dr.state);
  dr.state.update = async (change) => {
    const next = await update(change);
    written.push(structuredClone(next));
    return next;
  };
  return written;
}

it('a start with Cloud DR off after a push and no deletion owed deletes the cloud copy, and only once', async () => {
  // A push: the cloud holds a copy.
  const first = await openInstallation();
  const databaseUrl = first.agent.databaseUrl;
  const id = first.agent.keyring.installationId;
  const pushing = drServiceFor(first.agent);
  const job = await first.agent.jobs.waitFor((await pushing.startPush()).id);
  expect(job.error).toBeUndefined();
  expect(await cloud.listSlotObjects(id)).toHaveLength(1);
  await closeInstallation(first);

  // The opt-out is saved, but the DR listener never runs (no DR service in this process).
  const lost = await openInstallation(databaseUrl);
  await lost.agent.settings.update({ cloudDr: { enabled: false } });
  await closeInstallation(lost);

  // The next start, as main.ts does it: the deletion is recorded, then done.
  const restarted = await openInstallation(databaseUrl);
  expect(restarted.agent.settings.get().cloudDr.enabled).toBe(false);
  const dr = drServiceFor(restarted.agent);
  const written = watchState(dr);
  await dr.start();
  await dr.settled();
  dr.stop();
  expect(written[0]?.pendingDeletion).toMatchObject({ attempts: 0 });
  expect(await cloud.listSlotObjects(id)).toEqual([]);
  const after = await dr.state.get();
  expect(after.pendingDeletion).toBeUndefined();
  expect(after.lastSuccess).toBeUndefined();
  expect(after.lastPush).toMatchObject({ outcome: 'succeeded' });
  const status = await dr.status();
  expect(status).toMatchObject({ enabled: false, lastSuccess: null, pendingDeletion: null });
  await closeInstallation(restarted);

  // A second start owes nothing: no deletion is recorded or attempted.
  const again = await openInstallation(databaseUrl);
  const dr2 = drServiceFor(again.agent);
  const written2 = watchState(dr2);
  await dr2.start();
  await dr2.settled();
  dr2.stop();
  expect(written2).toEqual([]);
  expect((await dr2.state.get()).pendingDeletion).toBeUndefined();
});
