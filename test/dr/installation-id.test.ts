// Cloud DR state belongs to an installation id: after a keys import the status is the new id's (not
// enrolled, never pushed), the opt-out deletes the copy the old id pushed, signed with its retired key,
// and a deletion the cloud refuses for good is recorded as refused and not retried forever. The status
// and health find out from the cloud when another box holding the id pushed over this box's copy.
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type DrStatus, drServiceFor } from '../../agent/dr/service';
import { drArea } from '../../agent/health/sources';
import { HealthStateStore } from '../../agent/health/state';
import { buildKeysExport } from '../../agent/keys/keyring';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { pushViaApi, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
const agents: TestAgent[] = [];

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
});
afterAll(async () => {
  for (const t of agents) await t.close().catch(() => {});
  await cloud?.dispose();
  await pg?.stop();
});

async function agent(): Promise<TestAgent> {
  const t = await startDrAgent(pg, cloud.url, { deletionRetry: { firstMs: 50, maxMs: 100 } });
  agents.push(t);
  return t;
}
async function status(t: TestAgent): Promise<DrStatus> {
  return (await (await t.request('/api/v1/dr/status')).json()) as DrStatus;
}
async function importKeysOf(from: TestAgent, into: TestAgent): Promise<void> {
  const file = await buildKeysExport(from.agent.keyring.toFile(), 'drill passphrase');
  const res = await into.request('/api/v1/keys/import', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ file, passphrase: 'drill passphrase' }),
  });
  expect(res.status).toBe(200);
}
async function optOut(t: TestAgent): Promise<void> {
  const res = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ cloudDr: { enabled: false } }),
  });
  expect(res.status).toBe(200);
  await drServiceFor(t.agent).settled();
}

it('after a keys import the status is the new id’s, and the opt-out deletes the old id’s copy', async () => {
  const [a, other] = await Promise.all([agent(), agent()]);
  const oldId = a.agent.keyring.installationId;
  expect((await pushViaApi(a)).error).toBeUndefined();
  expect(await cloud.listSlotObjects(oldId)).toHaveLength(1);

  await importKeysOf(other, a);
  const s = await status(a);
  expect(s.installationId).toBe(other.agent.keyring.installationId);
  expect(s.lastPush).toBeNull();
  expect(s.lastSuccess).toBeNull();
  expect(s.formerCopies).toEqual([
    { installation: `${oldId.slice(0, 8)}…`, pushedAt: expect.any(String), pendingDeletion: null },
  ]);

  await optOut(a);
  expect(await cloud.listSlotObjects(oldId)).toEqual([]);
  const after = await status(a);
  expect(after.pendingDeletion).toBeNull();
  expect(after.formerCopies).toEqual([]);
});

it('a deletion the cloud refuses for good (401) is recorded as refused, not retried', async () => {
  const [a, other] = await Promise.all([agent(), agent()]);
  const oldId = a.agent.keyring.installationId;
  expect((await pushViaApi(a)).error).toBeUndefined();
  await importKeysOf(other, a);
  // The retired identity now holds a key the cloud did not enroll for that id: its delete is a 401.
  const file = a.agent.keyring.toFile();
  await a.agent.keyring.replace({
    ...file,
    retiredIdentities: file.retiredIdentities.map((i) =>
      i.installationId === oldId ? { ...i, signingKey: other.agent.keyring.signingKey } : i,
    ),
  });

  await optOut(a);
  const s = await status(a);
  expect(s.pendingDeletion).toMatchObject({ attempts: 1, refused: true });
  expect(s.pendingDeletion?.lastError?.message).toMatch(/401 bad_signature/);
  expect(s.formerCopies[0]?.pendingDeletion).toMatchObject({ refused: true });
  // Not retried: no retry is armed.
  expect(drServiceFor(a.agent).deletionRetryArmed).toBe(false);
  expect(await cloud.listSlotObjects(oldId)).toHaveLength(1);
});

it('a copy another box holding the id pushed over this one is named in the status and health', async () => {
  const [a, b] = await Promise.all([agent(), agent()]);
  expect((await pushViaApi(a)).error).toBeUndefined();
  const dr = drServiceFor(a.agent);
  expect(await dr.checkCloudCopy()).toMatchObject({ ok: true });

  // B holds A's id (its keys; a `dr recover` there gives the same) and pushes a newer backup of its own.
  await importKeysOf(a, b);
  const made = await b.request('/api/v1/backups', { method: 'POST' });
  await b.agent.jobs.waitFor(((await made.json()) as { jobId: string }).jobId);
  const res = await b.request('/api/v1/dr/push', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ dataIsCurrent: true }),
  });
  expect(res.status).toBe(202);
  const pushed = await b.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  expect(pushed.error).toBeUndefined();

  expect(await dr.checkCloudCopy()).toMatchObject({ ok: false });
  const s = await status(a);
  expect(s.cloudCheck?.problem).toMatch(
    /^the cloud copy is not the one this box pushed \(.*sha256 differs.*\): another box holding this installation's id pushed over it/,
  );
  const health = await drArea(
    dr,
    new HealthStateStore(join(a.agent.config.dataDir, 'health-state.json'), a.agent.log),
  )(new Date());
  expect(health.status).toBe('warning');
  expect(health.reason).toContain(s.cloudCheck!.problem!);
});
