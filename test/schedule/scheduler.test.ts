// The running scheduler on a real agent: catch-up at start (once), busy retry (once), changes without restart.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { settingsModule } from '../../agent/http/routes/settings';
import { Scheduler } from '../../agent/jobs/scheduler';
import type { SettingsView } from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
const put = (body: unknown) =>
  t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule] });
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

/** Holds the mutating-job lock until the returned function is called. */
async function holdLock(): Promise<() => Promise<void>> {
  let release!: () => void;
  const job = await t.agent.jobs.start('restore', () => new Promise<void>((r) => (release = r)), {
    mutating: true,
  });
  return async () => {
    release();
    await t.agent.jobs.waitFor(job.id);
  };
}

describe('the scheduler', () => {
  it('on a first start arms the tasks without running them', async () => {
    expect((await put({ maintenance: { enabled: true, retentionDays: 90 } })).status).toBe(200);
    const scheduler = new Scheduler(t.agent);
    await scheduler.start();
    await scheduler.settled();
    scheduler.stop();
    expect(t.agent.jobs.list()).toEqual([]);
    expect((await t.agent.settings.state.get('autoBackup'))?.lastRunAt).toBeNull();
    expect((await t.agent.settings.state.get('maintenance'))?.armedAt).toBeInstanceOf(Date);
  });

  it('catches up once at start after days of missed daily slots, as a scheduled backup', async () => {
    const threeDaysAgo = new Date(Date.now() - 3 * 86_400_000);
    // On since four days ago, last run three days ago.
    await t.agent.settings.state.rearm('autoBackup', new Date(Date.now() - 4 * 86_400_000));
    await t.agent.settings.state.recordRun('autoBackup', threeDaysAgo, { ok: true });
    const scheduler = new Scheduler(t.agent);
    await scheduler.start();
    await scheduler.settled();
    scheduler.stop();
    const backups = await t.agent.catalog.list();
    expect(backups.map((b) => b.kind)).toEqual(['scheduled']);
    const state = await t.agent.settings.state.get('autoBackup');
    expect(state!.lastRunAt!.getTime()).toBeGreaterThan(threeDaysAgo.getTime());
    expect(state!.lastResult).toMatchObject({ ok: true });
    const view = (await (await t.request('/api/v1/settings')).json()) as SettingsView;
    expect(view.status.autoBackup.lastRunAt).toBe(state!.lastRunAt!.toISOString());

    // Started again: nothing was missed since that run, so nothing runs.
    const again = new Scheduler(t.agent);
    await again.start();
    await again.settled();
    again.stop();
    expect((await t.agent.catalog.list()).length).toBe(1);
  });

  it('never overlaps another mutating job: tries again a little later, until it is free', async () => {
    const scheduler = new Scheduler(t.agent, { retryMs: 300 });
    const release = await holdLock();
    const run = scheduler.fire('autoBackup', true);
    await new Promise((r) => setTimeout(r, 50));
    await release();
    const job = await run;
    expect(job?.state).toBe('succeeded');
    expect((await t.agent.catalog.list()).length).toBe(2);

    // Busy for longer than one retry (a backup of an hourly schedule holding the lock at the 03:00
    // maintenance): the slot keeps trying and runs once the lock is free.
    const releaseLater = await holdLock();
    const late = scheduler.fire('autoBackup', true);
    await new Promise((r) => setTimeout(r, 1000)); // the retries at 300, 600 and 900 ms find it busy
    await releaseLater();
    expect((await late)?.state).toBe('succeeded');
    expect((await t.agent.catalog.list()).length).toBe(3);
    scheduler.stop();

    // Still busy at the last retry: given up, nothing made, and recorded as skipped.
    const brief = new Scheduler(t.agent, { retryMs: 300, busyRetries: 2 });
    const releaseAgain = await holdLock();
    expect(await brief.fire('autoBackup', true)).toBeUndefined();
    await releaseAgain();
    expect((await t.agent.catalog.list()).length).toBe(3);
    expect((await t.agent.settings.state.get('autoBackup'))?.lastResult).toEqual({
      ok: false,
      error: 'skipped: another job was running at the scheduled time and still at the last retry',
      at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
    });
    brief.stop();
  });

  it('gives up a busy retry when the task is turned off meanwhile: nothing purged', async () => {
    const history = async () => {
      const [row] = await t.agent.sql<{ a: number; r: number; l: number }[]>`
        select (select count(*)::int from public.attribute_history) as a,
               (select count(*)::int from public.request_history) as r,
               (select count(*)::int from public.access_log) as l`;
      return row;
    };
    const [old] = await t.agent.sql<{ n: number }[]>`
      select count(*)::int as n from public.attribute_history where recorded_at < now() - interval '90 days'`;
    expect(old!.n).toBeGreaterThan(0); // there is something the purge would delete
    const before = await history();
    const jobsBefore = t.agent.jobs.list().length;

    const scheduler = new Scheduler(t.agent, { retryMs: 300 });
    await scheduler.start();
    await scheduler.settled();
    try {
      const release = await holdLock(); // the 03:00 slot fires while a restore holds the lock
      const run = scheduler.fire('maintenance', true);
      await new Promise((r) => setTimeout(r, 50));
      expect((await put({ maintenance: { enabled: false, retentionDays: 90 } })).status).toBe(200);
      await release();
      // Past the retry's time, then every run settled.
      await new Promise((r) => setTimeout(r, 600));
      expect(await run).toBeUndefined();
      await scheduler.settled();

      expect(t.agent.jobs.list().filter((j) => j.kind === 'maintenance')).toEqual([]);
      expect(t.agent.jobs.list().length).toBe(jobsBefore + 1); // only the lock holder
      expect(await history()).toEqual(before);
    } finally {
      scheduler.stop();
      expect((await put({ maintenance: { enabled: true, retentionDays: 90 } })).status).toBe(200);
    }
  });

  it('runs the maintenance task as a job and records it', async () => {
    const scheduler = new Scheduler(t.agent);
    const job = await scheduler.fire('maintenance', false);
    scheduler.stop();
    expect(job?.kind).toBe('maintenance');
    expect(job?.state).toBe('succeeded');
    expect((job!.result as { total: number }).total).toBeGreaterThan(0);
    const state = await t.agent.settings.state.get('maintenance');
    expect(state?.lastResult).toEqual({ ok: true, jobId: job!.id });
  });

  it('catches up no slot that passed while the task was off: turned on again, it is armed from then', async () => {
    expect((await put({ autoBackup: { enabled: true, schedule: 'daily' } })).status).toBe(200);
    await t.agent.settings.state.recordRun('autoBackup', new Date(Date.now() - 7 * 86_400_000), { ok: true });
    const before = (await t.agent.catalog.list()).length;
    const scheduler = new Scheduler(t.agent);
    // Started with the task off (the week it was off), turned on while it runs, then a restart.
    expect((await put({ autoBackup: { enabled: false, schedule: 'daily' } })).status).toBe(200);
    await scheduler.start();
    expect((await put({ autoBackup: { enabled: true, schedule: 'daily' } })).status).toBe(200);
    await scheduler.settled();
    scheduler.stop();
    const again = new Scheduler(t.agent);
    await again.start();
    await again.settled();
    again.stop();
    expect((await t.agent.catalog.list()).length).toBe(before);
    expect(t.agent.jobs.list().filter((j) => j.kind === 'backup' && !j.endedAt)).toEqual([]);
  });

  it('takes schedule changes on save, without a restart', async () => {
    expect(
      (await put({ autoBackup: { enabled: true, schedule: 'daily', timezone: 'America/New_York' } })).status,
    ).toBe(200);
    const scheduler = new Scheduler(t.agent);
    await scheduler.start();
    const daily = scheduler.nextRunAt('autoBackup')!;
    expect(
      new Intl.DateTimeFormat('en-US', {
        timeZone: 'America/New_York',
        hour: 'numeric',
        hourCycle: 'h23',
      }).format(daily),
    ).toBe('02');

    expect((await put({ autoBackup: { enabled: true, schedule: 'hourly' } })).status).toBe(200);
    const hourly = scheduler.nextRunAt('autoBackup')!;
    expect(hourly.getUTCMinutes()).toBe(0);
    expect(hourly.getTime() - Date.now()).toBeLessThanOrEqual(3_600_000);

    expect((await put({ autoBackup: { enabled: false, schedule: 'hourly' } })).status).toBe(200);
    expect(scheduler.nextRunAt('autoBackup')).toBeNull();
    expect(scheduler.nextRunAt('maintenance')).not.toBeNull();
    const view = (await (await t.request('/api/v1/settings')).json()) as SettingsView;
    expect(view.status.autoBackup.nextRunAt).toBeNull();
    scheduler.stop();
    await scheduler.settled();
  });
});
