// A rebuilt box that imported the old installation's keys carries its identity with its own (sample) data
// until one of its backups is restored: no DR push (Push Now, CLI, nightly) may replace that
// installation's only cloud copy with it, until a restore of one of that installation's backups (not of
// this box's own from before the import), or the owner's explicit word. Two boxes pushing as one
// installation: the one behind is told what that means.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../agent/app';
import { type DrStatus, drServiceFor } from '../../agent/dr/service';
import { restoreModule } from '../../agent/http/routes/restore';
import type { Job } from '../../agent/jobs/runner';
import { buildKeysExport } from '../../agent/keys/keyring';
import { AWAITING_RESTORE_REASON } from '../../agent/restore/last-restore';
import { restoreFromFile } from '../../agent/restore/restore';
import { TEST_TOKEN, type TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { pushViaApi, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
let a: TestAgent;
let b: TestAgent;
let c: TestAgent;
let d: TestAgent;

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  [a, b, c, d] = await Promise.all([
    startDrAgent(pg, cloud.url),
    startDrAgent(pg, cloud.url),
    startDrAgent(pg, cloud.url),
    startDrAgent(pg, cloud.url),
  ]);
});
afterAll(async () => {
  await Promise.all([a, b, c, d].map((t) => t?.close().catch(() => {})));
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

    // B backs up; A goes on and pushes a newer backup: B, pushing as the same installation, is behind
    // (its push reuses its own backup, older than the cloud's), and told what that means.
    for (const box of [b, a]) {
      const made = await box.request('/api/v1/backups', { method: 'POST' });
      await box.agent.jobs.waitFor(((await made.json()) as { jobId: string }).jobId);
    }
    expect((await pushViaApi(a)).error).toBeUndefined();
    const behind = await pushViaApi(b);
    expect(behind.error?.code).toBe('conflict');
    expect(behind.error?.message).toMatch(/the DR cloud answered 409 older_backup: /);
    expect(behind.error?.message).toContain(
      '; the cloud holds a newer backup of this installation, pushed by another controller (or by this one earlier); if this box replaced that controller, retire the old one (stop its agent) so that only this one pushes; if not, run `gem-backup dr recover --abandon` on the box that should not push (or turn Cloud DR off there: unset GEM_DR_URL)',
    );
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

describe('a restore after a keys import of a backup another installation made', () => {
  it("this box's own from before the import: refused without otherInstallation (API); with it, pushes stay held", async () => {
    const app = createApp(d.agent, [restoreModule]);
    const post = (path: string, body: unknown) =>
      Promise.resolve(
        app.request(path, {
          method: 'POST',
          headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
          body: JSON.stringify(body),
        }),
      );
    const restore = async (name: string, body: Record<string, unknown> = {}): Promise<Job> => {
      const res = await post(`/api/v1/backups/${name}/restore`, { confirm: name, ...body });
      expect(res.status).toBe(202);
      return d.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    };
    const made = await d.request('/api/v1/backups', { method: 'POST' });
    await d.agent.jobs.waitFor(((await made.json()) as { jobId: string }).jobId);
    const own = (await d.agent.catalog.list())[0]!;
    const ownId = d.agent.keyring.installationId;
    await importKeysOf(a, d);
    const slot = await cloud.listSlotObjects(a.agent.keyring.installationId);

    const refused = await restore(own.filename);
    expect(refused.state).toBe('failed');
    expect(refused.error?.code).toBe('conflict');
    expect(refused.error?.message).toBe(
      `this backup was made by installation ${ownId.slice(0, 8)}…, not by installation ${a.agent.keyring.installationId.slice(0, 8)}… whose keys are active here, so nothing was changed: restore the newest copy not marked 'another installation' instead, or, if you do want this one's data here, ask for it explicitly (\`gem-backup restore NAME --other-installation\`, or "otherInstallation": true in the request)`,
    );
    // Refused before anything: no safety backup.
    expect((await d.agent.catalog.list()).map((b) => b.filename)).toEqual([own.filename]);

    const forced = await restore(own.filename, { otherInstallation: true });
    expect(forced.state, JSON.stringify(forced.error)).toBe('succeeded');
    // The data is this box's own still: the push stays refused, and the nightly run skips.
    expect(await refusedPush(d)).toBe(AWAITING_RESTORE_REASON);
    await drServiceFor(d.agent).runNightly();
    expect(await cloud.listSlotObjects(a.agent.keyring.installationId)).toEqual(slot);
  });
});
