// A multipart DR upload left half done is not resumed once its backup's verify has failed (rot found
// after the first attempt): its parts still to send would carry the damage into the slot. The upload is
// dropped (aborted in the cloud), its temporary backup removed, and a new backup goes instead.
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { DrFaults } from '../../agent/dr/client';
import type { PushResult } from '../../agent/dr/push';
import { drServiceFor } from '../../agent/dr/service';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { addRandomData, startDrAgent } from './helpers';

const MiB = 1024 * 1024;
let pg: TestPostgres;
let cloud: DrCloud;
let a: TestAgent;
const faults: DrFaults = {};

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  a = await startDrAgent(pg, cloud.url, {
    faults,
    tuning: { multipartThreshold: MiB, partSize: 5 * MiB, partAttempts: 3, retryDelayMs: 50 },
  });
});
afterAll(async () => {
  await a?.close().catch(() => {});
  await cloud?.dispose();
  await pg?.stop();
});

it('does not resume an upload whose backup failed its verify since: a new backup goes instead', async () => {
  await addRandomData(a.agent, 7);
  const dr = drServiceFor(a.agent);

  // Part 1 goes through; part 2 is cut on every try: the push fails, the upload and its temporary backup are kept.
  faults.cutUploads = { after: 1, times: 3, afterBytes: MiB };
  const failed = await a.agent.jobs.waitFor((await dr.startPush()).id);
  expect(failed.state).toBe('failed');
  const pending = (await dr.state.get()).upload!;
  expect(pending).toMatchObject({ temporary: true });
  expect((await a.agent.catalog.list()).map((x) => x.filename)).toEqual([pending.backupName]);
  expect(await dr.client!.uploadStatus(pending.uploadId)).not.toBeNull();

  // A verification then finds it damaged.
  await a.agent.catalog.updateRecord(pending.backupName, {
    verifiedAt: new Date().toISOString(),
    verifyResult: 'failed',
    verifyError: 'chunk 3: authentication failed',
  });

  const job = await a.agent.jobs.waitFor((await dr.startPush()).id);
  expect(job.error).toBeUndefined();
  const result = job.result as PushResult;
  expect(result).toMatchObject({ resumed: false, temporary: true, multipart: true, partsSkipped: 0 });
  expect(result.sha256).not.toBe(pending.sha256);
  // The damaged temporary backup went with its upload, and the new one after its push.
  expect(await a.agent.catalog.list()).toEqual([]);
  expect((await dr.state.get()).upload).toBeUndefined();
  expect(await dr.client!.uploadStatus(pending.uploadId)).toBeNull();
  expect((await dr.state.get()).lastSuccess).toMatchObject({ sha256: result.sha256 });
  expect(await cloud.listSlotObjects(a.agent.keyring.installationId)).toHaveLength(1);
});
