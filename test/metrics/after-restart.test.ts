/**
 * The last backup's duration is a gauge of what the agent holds, not of this process: after a restart it
 * still tells how long the last backup took (the jobs list, jobs.json, keeps its job), never 0.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricsRoutes } from '../../agent/http/routes/metrics';
import { backupNow } from '../health/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { parsePrometheusText } from './prometheus-parser';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('GET /metrics after a restart', () => {
  it('tells the duration of the last backup made before it', async () => {
    await backupNow(t);
    const [job] = t.agent.jobs.list().filter((j) => j.kind === 'backup');
    const took = (Date.parse(job!.endedAt!) - Date.parse(job!.startedAt)) / 1000;
    expect(took).toBeGreaterThan(0);

    const again = await startTestAgent(pg, { dataDir: t.dataDir, databaseUrl: t.agent.databaseUrl });
    try {
      again.app.route('/metrics', metricsRoutes(again.agent));
      const families = parsePrometheusText(await (await again.request('/metrics')).text());
      expect(families.get('gem_backup_last_backup_duration_seconds')?.samples[0]?.value).toBe(took);
      // The counters and histograms start again at 0 with the process, as Prometheus expects of them.
      expect(families.get('gem_backup_jobs_total')?.samples).toEqual([]);
    } finally {
      await again.close();
    }
  }, 120_000);
});
