// A rebuilt box that imported the old installation's keys carries its identity with its own (sample) data
// until one of its backups is restored: no DR push (Push Now, CLI, nightly) may replace that
// installation's only cloud copy with it, until a restore, or the owner's explicit word.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DrStatus, drServiceFor } from '../../agent/dr/service';
import { buildKeysExport } from '../../agent/keys/keyring';
import { AWAITING_RESTORE_REASON } from '../../agent/restore/last-restore';
import { restoreFromFile } from '../../agent/restore/restore';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { pushViaApi, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
let a: TestAgent;
let b: TestAgent;
let c: TestAgent;

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  [a, b, c] = await Promise.all([
    startDrAgent(pg, cloud.url),
    startDrAgent(pg, cloud.url),
    startDrAgent(pg, cloud.url),
  ]);
});
afterAll(async () => {
  await Promise.all([a, b, c].map((t) => t?.close().catch(() => {})));
  await cloud?.dispose();
  await pg?.stop();
});

const json = (body: unknown) => ({
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(body),
});
async function importKeysOf(from: TestAgent, into: TestAgent): Promise<void> {
  const file = await buildKeysExport(from.agent.keyring.toFile(), 'drill passphrase');
  const res = await into.request('/api/v1/keys/import', json({ file, passphrase: 'drill passphrase' }));
  expect(res.status).toBe(200);
  expect(into.agent.keyring.installationId).toBe(from.agent.keyring.installationId);
}
async function refusedPush(t: TestAgent): Promise<string> {
  const res = await t.request('/api/v1/dr/push', { method: 'POST' });
  expect(res.status).toBe(422);
  return ((await res.json()) as { error: { message: string } }).error.message;
}

describe('DR push after a keys import', () => {
  it('is refused until one of the installation’s backups is restored; the nightly run is skipped', async () => {
    const made = await a.request('/api/v1/backups', { method: 'POST' });
    expect(made.status).toBe(202);
    await a.agent.jobs.waitFor(((await made.json()) as { jobId: string }).jobId);
    expect((await pushViaApi(a)).result).toMatchObject({ reused: true });
    const slot = await cloud.listSlotObjects(a.agent.keyring.installationId);
    expect(slot).toHaveLength(1);

    await importKeysOf(a, b);
    expect(await refusedPush(b)).toBe(AWAITING_RESTORE_REASON);
    expect(AWAITING_RESTORE_REASON).not.toContain(a.agent.keyring.installationId);
    await drServiceFor(b.agent).runNightly();
    const status = (await (await b.request('/api/v1/dr/status')).json()) as DrStatus;
    expect(status.lastPush).toMatchObject({
      trigger: 'nightly',
      outcome: 'skipped',
      reason: AWAITING_RESTORE_REASON,
    });
    // A's copy is untouched.
    expect(await cloud.listSlotObjects(a.agent.keyring.installationId)).toEqual(slot);

    // A's backup restored here: the data is A's now, and the push goes.
    const backup = (await a.agent.catalog.list())[0]!;
    const restored = await b.agent.jobs.waitFor(
      (
        await b.agent.jobs.start(
          'restore',
          (ctx) => restoreFromFile(b.agent, ctx, a.agent.catalog.pathOf(backup.filename)),
          { mutating: true },
        )
      ).id,
    );
    expect(restored.state, JSON.stringify(restored.error)).toBe('succeeded');
    const pushed = await pushViaApi(b);
    expect(pushed.error).toBeUndefined();
  });

  it('goes with the owner’s word that the data here is the installation’s (only the data dir was lost)', async () => {
    await importKeysOf(a, c);
    expect(await refusedPush(c)).toBe(AWAITING_RESTORE_REASON);
    const res = await c.request('/api/v1/dr/push', json({ dataIsCurrent: true }));
    expect(res.status).toBe(202);
    const job = await c.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    expect(job.error).toBeUndefined();
    // Said once: the next push needs no word.
    expect((await pushViaApi(c)).error).toBeUndefined();
  });
});
