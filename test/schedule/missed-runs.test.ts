// Scheduled runs that did not happen as planned: cut short by a shutdown, skipped while another job ran, enabled later.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthModule } from '../../agent/http/routes/health';
import { settingsModule } from '../../agent/http/routes/settings';
import { Scheduler } from '../../agent/jobs/scheduler';
import { VerificationScheduler } from '../../agent/verification/schedule';
import { verificationStateFor } from '../../agent/verification/state';
import type { SettingsView } from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
const dirs: string[] = [];
beforeAll(async () => {
  pg = await startPostgres();
});
afterAll(async () => {
  await pg?.stop();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const DAY = 86_400_000;

/** An agent on its own data dir (kept, so the test can open it again) and database. */
async function openAgent(reuse?: { dataDir: string; databaseUrl: string }): Promise<TestAgent> {
  const modules = [settingsModule, healthModule];
  if (reuse) return startTestAgent(pg, { ...reuse, modules });
  const dataDir = await mkdtemp(join(tmpdir(), 'gem-missed-'));
  dirs.push(dataDir);
  return startTestAgent(pg, { dataDir, modules });
}

/** Holds the mutating-job lock (a long restore, say) until the returned function is called. */
async function holdLock(t: TestAgent): Promise<() => Promise<void>> {
  let release!: () => void;
  const job = await t.agent.jobs.start('restore', () => new Promise<void>((r) => (release = r)), {
    mutating: true,
  });
  return async () => {
    release();
    await t.agent.jobs.waitFor(job.id);
  };
}

function databaseUrlOf(t: TestAgent): string {
  return t.agent.databaseUrl;
}

describe('scheduled runs that did not happen as planned', () => {
  it('leaves a run stopped by a shutdown missed, so the next start catches it up once', async () => {
    const t1 = await openAgent();
    const databaseUrl = databaseUrlOf(t1);
    await t1.agent.settings.update({
      autoBackup: { enabled: true, schedule: 'daily', maxBackups: 10, timezone: 'UTC' },
    });
    await t1.agent.settings.state.recordRun('autoBackup', new Date(Date.now() - 2 * DAY), { ok: true });
    const before = await t1.agent.settings.state.get('autoBackup');

    // A table locked by another session holds pg_dump in its dump phase until the shutdown.
    const blocker = postgres(databaseUrl, { max: 1, onnotice: () => {} });
    let unblock!: () => void;
    const locked = new Promise<void>((resolve) => {
      void blocker.begin(async (tx) => {
        await tx`lock table public.attributes in access exclusive mode`;
        resolve();
        await new Promise<void>((r) => (unblock = r));
      });
    });
    await locked;
    const scheduler = new Scheduler(t1.agent);
    const dumping = new Promise<void>((resolve) => {
      const off = t1.agent.jobs.subscribeAll((e) => {
        if (e.type === 'update' && e.job.kind === 'backup' && e.job.phase === 'dump') {
          off();
          resolve();
        }
      });
    });
    const run = scheduler.fire('autoBackup', true); // what the timer does at the slot
    await dumping;
    // The SIGTERM path of main.ts: the scheduler stops, then the agent closes (cancelling the job).
    scheduler.stop();
    const closing = t1.agent.close();
    unblock();
    await closing;
    expect((await run)?.state).toBe('cancelled');
    await blocker.end();

    const t2 = await openAgent({ dataDir: t1.dataDir, databaseUrl });
    try {
      const state = await t2.agent.settings.state.get('autoBackup');
      expect(state?.lastRunAt).toEqual(before?.lastRunAt);
      const again = new Scheduler(t2.agent);
      await again.start();
      await again.settled();
      again.stop();
      // Newest first: the catch-up run, then the one the shutdown cancelled (kept in jobs.json).
      const backups = t2.agent.jobs.list().filter((j) => j.kind === 'backup');
      expect(backups.map((j) => j.state)).toEqual(['succeeded', 'cancelled']);
      expect((await t2.agent.catalog.list()).map((b) => b.kind)).toEqual(['scheduled']);
    } finally {
      await t2.close();
    }
  });

  it('records a run skipped because another job held the lock through the retry, and catches it up', async () => {
    const t = await openAgent();
    try {
      await t.agent.settings.update({
        autoBackup: { enabled: true, schedule: 'daily', maxBackups: 10, timezone: 'UTC' },
        maintenance: { enabled: true, retentionDays: 90 },
      });
      const twoDaysAgo = new Date(Date.now() - 2 * DAY);
      await t.agent.settings.state.recordRun('maintenance', twoDaysAgo, { ok: true });
      await t.agent.settings.state.recordRun('autoBackup', twoDaysAgo, { ok: true });
      const scheduler = new Scheduler(t.agent, { retryMs: 100 });
      const release = await holdLock(t);
      expect(await scheduler.fire('maintenance', true)).toBeUndefined();
      expect(await scheduler.fire('autoBackup', true)).toBeUndefined();
      await release();
      scheduler.stop();

      const view = (await (await t.request('/api/v1/settings')).json()) as SettingsView;
      expect(view.status.maintenance.lastResult).toMatchObject({
        ok: false,
        error: expect.stringMatching(/^skipped/),
      });
      expect(view.status.maintenance.lastRunAt).toBe(twoDaysAgo.toISOString());
      expect(view.status.autoBackup.lastResult).toMatchObject({
        ok: false,
        error: expect.stringMatching(/^skipped/),
      });
      const health = (await (await t.request('/api/v1/health')).json()) as {
        areas: { backups: { status: string; reason: string } };
      };
      expect(health.areas.backups.status).not.toBe('ok');
      expect(health.areas.backups.reason).toMatch(/skipped: another job was running/);

      // The last run stayed where it was: the next start catches the maintenance up once (alone, so
      // that it does not meet the backup's catch-up at the lock).
      await t.agent.settings.update({
        autoBackup: { enabled: false, schedule: 'daily', maxBackups: 10, timezone: 'UTC' },
      });
      const again = new Scheduler(t.agent);
      await again.start();
      await again.settled();
      again.stop();
      const ran = t.agent.jobs.list().filter((j) => j.kind !== 'restore');
      expect(ran.map((j) => [j.kind, j.state])).toEqual([['maintenance', 'succeeded']]);
      expect((await t.agent.settings.state.get('maintenance'))?.lastResult).toMatchObject({ ok: true });
    } finally {
      await t.close();
    }
  });

  it('marks a task turned on while the agent runs as armed, so a slot missed in a later downtime is caught up', async () => {
    const t = await openAgent();
    try {
      await t.agent.settings.update({
        autoBackup: { enabled: false, schedule: 'daily', maxBackups: 10, timezone: 'UTC' },
        maintenance: { enabled: false, retentionDays: 90 },
        verification: { enabled: false, schedule: 'weekly' },
      });
      const scheduler = new Scheduler(t.agent);
      const verification = new VerificationScheduler(t.agent);
      await scheduler.start();
      await verification.start();
      expect(await t.agent.settings.state.get('maintenance')).toBeUndefined();
      expect((await verificationStateFor(t.agent).get()).armedAt).toBeUndefined();

      // Turned on later, while running (a settings save re-arms the schedulers).
      await t.agent.settings.update({
        maintenance: { enabled: true, retentionDays: 90 },
        verification: { enabled: true, schedule: 'weekly' },
      });
      await scheduler.settled();
      await verification.settled();
      scheduler.stop();
      verification.stop();
      expect((await t.agent.settings.state.get('maintenance'))?.armedAt).toBeInstanceOf(Date);
      expect((await verificationStateFor(t.agent).get()).armedAt).toBeTruthy();

      // The agent is down for two weeks; its next start catches each up once.
      const later = () => new Date(Date.now() + 14 * DAY);
      const again = new Scheduler(t.agent, { now: later });
      const verificationAgain = new VerificationScheduler(t.agent, { now: later });
      await again.start();
      await verificationAgain.start();
      await again.settled();
      await verificationAgain.settled();
      again.stop();
      verificationAgain.stop();
      const ran = t.agent.jobs.list().map((j) => [j.kind, j.state]);
      expect(ran.sort()).toEqual([
        ['maintenance', 'succeeded'],
        ['verification', 'succeeded'],
      ]);
    } finally {
      await t.close();
    }
  });

  it('arms a task turned off and on again from then: the slots it was off for are not caught up', async () => {
    const t = await openAgent();
    try {
      await t.agent.settings.update({
        maintenance: { enabled: true, retentionDays: 90 },
        verification: { enabled: true, schedule: 'weekly' },
      });
      // Both last ran three weeks ago, then were turned off.
      const threeWeeksAgo = new Date(Date.now() - 21 * DAY);
      await t.agent.settings.state.rearm('maintenance', new Date(threeWeeksAgo.getTime() - DAY));
      await t.agent.settings.state.recordRun('maintenance', threeWeeksAgo, { ok: true });
      await verificationStateFor(t.agent).update((s) => {
        s.armedAt = new Date(threeWeeksAgo.getTime() - DAY).toISOString();
        s.lastRun = {
          jobId: 'earlier',
          startedAt: threeWeeksAgo.toISOString(),
          endedAt: threeWeeksAgo.toISOString(),
          ok: true,
          results: [],
        };
      });
      await t.agent.settings.update({
        maintenance: { enabled: false, retentionDays: 90 },
        verification: { enabled: false, schedule: 'weekly' },
      });
      const scheduler = new Scheduler(t.agent);
      const verification = new VerificationScheduler(t.agent);
      await scheduler.start();
      await verification.start();
      // Turned on again while the agent runs, then the agent restarts.
      await t.agent.settings.update({
        maintenance: { enabled: true, retentionDays: 90 },
        verification: { enabled: true, schedule: 'weekly' },
      });
      await scheduler.settled();
      await verification.settled();
      scheduler.stop();
      verification.stop();
      const again = new Scheduler(t.agent);
      const verificationAgain = new VerificationScheduler(t.agent);
      await again.start();
      await verificationAgain.start();
      await again.settled();
      await verificationAgain.settled();
      again.stop();
      verificationAgain.stop();
      expect(t.agent.jobs.list()).toEqual([]);
    } finally {
      await t.close();
    }
  });
});
