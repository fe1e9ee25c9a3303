// Cloud DR when things go wrong: endpoint down, opt-out while the cloud is down (retried), development
// skips, no endpoint configured, the nightly slot, and escrow key pinning.
import { stat } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { chooseEscrowKey, type EscrowKey } from '../../agent/dr/escrow';
import { nextNightlyRun, nightlyOffsetSeconds } from '../../agent/dr/schedule';
import { type DrStatus, drServiceFor } from '../../agent/dr/service';
import { silentLogger } from '../../agent/log';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { freePort } from '../services/ports';
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

async function status(t: TestAgent): Promise<DrStatus> {
  return (await (await t.request('/api/v1/dr/status')).json()) as DrStatus;
}

describe('Cloud DR failures', () => {
  it('fails cleanly while the endpoint is down and leaves the local backups untouched', async () => {
    const t = await startDrAgent(pg, `http://127.0.0.1:${await freePort()}`, { timeoutMs: 5000 });
    agents.push(t);
    const made = await t.agent.jobs.waitFor((await startBackup(t.agent, { kind: 'manual' })).id);
    expect(made.state).toBe('succeeded');
    const before = await t.agent.catalog.list();
    const sizes = await Promise.all(before.map((b) => stat(t.agent.catalog.pathOf(b.filename))));

    const job = await pushViaApi(t);
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('dependency_down');
    expect(job.error?.message).toMatch(/unreachable/);
    expect(await t.agent.catalog.list()).toEqual(before);
    const after = await Promise.all(before.map((b) => stat(t.agent.catalog.pathOf(b.filename))));
    expect(after.map((s) => [s.size, s.mtimeMs])).toEqual(sizes.map((s) => [s.size, s.mtimeMs]));
    const s = await status(t);
    expect(s.lastPush).toMatchObject({ outcome: 'failed', error: { code: 'dependency_down' } });
    expect(s.lastSuccess).toBeNull();
  });

  it('keeps an opt-out deletion that failed and retries it until the cloud confirms', async () => {
    const t = await startDrAgent(pg, cloud.url, { deletionRetry: { firstMs: 200, maxMs: 400 } });
    agents.push(t);
    const id = t.agent.keyring.installationId;
    const pushed = await pushViaApi(t);
    expect(pushed.error).toBeUndefined();
    expect(await cloud.listSlotObjects(id)).toHaveLength(1);

    await cloud.stop();
    const res = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ cloudDr: { enabled: false } }),
    });
    expect(res.status).toBe(200);
    const dr = drServiceFor(t.agent);
    await dr.settled();
    const pending = (await status(t)).pendingDeletion;
    expect(pending).toMatchObject({ attempts: 1, lastError: { code: 'dependency_down' } });

    await cloud.restart();
    // The retry timer fires on its own; wait for it by polling the recorded state, never the clock.
    for (let i = 0; i < 100 && (await status(t)).pendingDeletion; i++) {
      await new Promise((r) => setTimeout(r, 100));
      await dr.settled();
    }
    expect((await status(t)).pendingDeletion).toBeNull();
    expect(await cloud.listSlotObjects(id)).toEqual([]);
  });

  it('resumes an owed deletion at start', async () => {
    const t = await startDrAgent(pg, cloud.url);
    agents.push(t);
    const id = t.agent.keyring.installationId;
    expect((await pushViaApi(t)).error).toBeUndefined();
    const dr = drServiceFor(t.agent);
    // As if the agent had stopped right after recording the opt-out.
    await dr.state.update((s) => {
      s.pendingDeletion = { since: new Date().toISOString(), attempts: 0 };
    });
    await dr.start();
    await dr.settled();
    dr.stop();
    expect((await dr.state.get()).pendingDeletion).toBeUndefined();
    expect(await cloud.listSlotObjects(id)).toEqual([]);
  });

  it('skips the nightly push in development, recorded as skipped, not failed', async () => {
    const t = await startDrAgent(pg, cloud.url, { env: { NODE_ENV: 'development' } });
    agents.push(t);
    const dr = drServiceFor(t.agent);
    await dr.runNightly();
    const s = await status(t);
    expect(s.lastPush).toMatchObject({
      outcome: 'skipped',
      trigger: 'nightly',
      reason: 'NODE_ENV=development',
    });
    expect(s.nightlySkipped).toBe(true);
    expect(t.agent.jobs.list().filter((j) => j.kind === 'dr-push')).toEqual([]);
    expect(await cloud.listSlotObjects(t.agent.keyring.installationId)).toEqual([]);
  });

  it('says why DR is off without an endpoint, and refuses push and recover', async () => {
    const t = await startDrAgent(pg, undefined);
    agents.push(t);
    const s = await status(t);
    expect(s).toMatchObject({ enabled: false, configured: false, nextRunAt: null });
    expect(s.reason).toMatch(/GEM_DR_URL/);
    expect((await t.request('/api/v1/dr/push', { method: 'POST' })).status).toBe(422);
    const recover = await t.request('/api/v1/dr/recover', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ installationId: 'not-an-id' }),
    });
    expect(recover.status).toBe(422);
  });

  it('runs the nightly push between 03:00 and 04:00 local time at a stable per-installation second', () => {
    const id = 'a'.repeat(32);
    expect(nightlyOffsetSeconds(id)).toBe(nightlyOffsetSeconds(id));
    expect(nightlyOffsetSeconds(id)).not.toBe(nightlyOffsetSeconds('b'.repeat(32)));
    const from = new Date('2026-03-10T12:00:00Z');
    const next = nextNightlyRun(id, 'Europe/Berlin', from)!;
    const local = new Intl.DateTimeFormat('en-GB', {
      timeZone: 'Europe/Berlin',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hourCycle: 'h23',
    }).format(next);
    const offset = nightlyOffsetSeconds(id);
    const expected = `03:${String(Math.floor(offset / 60)).padStart(2, '0')}:${String(offset % 60).padStart(2, '0')}`;
    expect(local).toBe(expected);
    expect(next.getTime() - from.getTime()).toBeLessThan(24 * 3600_000);
  });

  it('pins the escrow key: accepts a rotation announced beside it, refuses an unknown or changed key', () => {
    const k = (kid: string, x: string): EscrowKey => ({ kty: 'OKP', crv: 'X25519', x, kid });
    const pinned = { kid: 'k1', publicJwk: k('k1', 'x1') };
    expect(chooseEscrowKey([k('k1', 'x1')], undefined, silentLogger)).toMatchObject({ changed: true });
    expect(chooseEscrowKey([k('k1', 'x1')], pinned, silentLogger)).toMatchObject({ changed: false });
    expect(chooseEscrowKey([k('k2', 'x2'), k('k1', 'x1')], pinned, silentLogger)).toMatchObject({
      key: { kid: 'k2' },
      changed: true,
    });
    expect(() => chooseEscrowKey([k('k3', 'x3')], pinned, silentLogger)).toThrow(/unannounced/);
    expect(() => chooseEscrowKey([k('k1', 'evil')], pinned, silentLogger)).toThrow(/changed its value/);
  });
});
