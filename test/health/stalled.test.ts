import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import { metricsRoutes } from '../../agent/http/routes/metrics';
import { runProcess } from '../../agent/system/spawn';
import { parsePrometheusText } from '../metrics/prometheus-parser';
import { startTestAgent, type TestAgent } from '../services/agent';
import { holdTableLock, startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, call, downloadKeys } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let databaseUrl: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [healthModule] });
  databaseUrl = t.agent.databaseUrl;
  t.app.route('/metrics', metricsRoutes(t.agent));
  // Short thresholds: a job without progress for 1.5 s, or running 20 s, is stalled.
  healthFor(t.agent, { watchdog: { noProgressMs: 1500, minRunMs: 20_000 }, offsiteProbeIntervalMs: 0 });
  await downloadKeys(t);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

async function pgDumpPids(dbName: string): Promise<number[]> {
  const r = await runProcess('pgrep', ['-f', `pg_dump.*${dbName}`]);
  return r.stdout
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((n) => n > 0);
}

async function until<T>(f: () => Promise<T | undefined>, what: string, tries = 300): Promise<T> {
  for (let i = 0; i < tries; i++) {
    const v = await f();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('the job watchdog', () => {
  it('flags a backup stuck on a paused pg_dump as stalled, and it can be cancelled', async () => {
    await backupNow(t); // a successful run first: history for the backup kind
    const dbName = new URL(databaseUrl).pathname.slice(1);
    // Hold a lock pg_dump must wait for, so the dump is surely running when we pause it.
    const unlock = await holdTableLock(databaseUrl, 'public.devices');
    const started = await call(t, 'POST', '/backups');
    expect(started.status).toBe(202);
    const jobId = started.body.jobId as string;
    const pids = await until(async () => {
      const p = await pgDumpPids(dbName);
      return p.length ? p : undefined;
    }, 'pg_dump to start');
    for (const pid of pids) process.kill(pid, 'SIGSTOP');
    await unlock();
    try {
      const health = await until(async () => {
        const h = await call(t, 'GET', '/health');
        return h.body.areas.jobs.status === 'failing' ? h.body : undefined;
      }, 'the watchdog to flag the job');
      expect(health.status).toBe('failing');
      const stalled = health.areas.jobs.stalled as Array<Record<string, unknown>>;
      expect(stalled).toHaveLength(1);
      expect(stalled[0]).toMatchObject({
        id: jobId,
        kind: 'backup',
        phase: 'dump',
        cancel: `/api/v1/jobs/${jobId}/cancel`,
      });
      expect(stalled[0]!.reason).toMatch(/no progress/);

      const cancel = await t.request(stalled[0]!.cancel as string, { method: 'POST' });
      expect(cancel.status).toBe(200);
    } finally {
      // A stopped process only acts on the cancel's SIGTERM once it runs again.
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGCONT');
        } catch {
          // already gone
        }
      }
    }
    const ended = await t.agent.jobs.waitFor(jobId);
    expect(ended.state).toBe('cancelled');
    const after = await call(t, 'GET', '/health');
    expect(after.body.areas.jobs.status).toBe('ok');
    expect(await pgDumpPids(dbName)).toEqual([]);

    // The metrics count both runs by outcome.
    const metrics = await t.request('/metrics');
    const families = parsePrometheusText(await metrics.text());
    const jobs = families.get('gem_backup_jobs_total')!;
    const count = (outcome: string) =>
      jobs.samples.find((s) => s.labels.kind === 'backup' && s.labels.outcome === outcome)?.value;
    expect(count('succeeded')).toBe(1);
    expect(count('cancelled')).toBe(1);
  }, 120_000);
});
