// Routes that take no options (Run maintenance now, Sync Now) refuse a body that names one, instead of
// dropping it and doing the work as saved: `{"retentionDays": 365}` to the purge deleted the history
// older than the saved 90 days. No body, or `{}`, is still how they are called.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;

const post = (path: string, body?: string) =>
  t.request(path, {
    method: 'POST',
    ...(body === undefined ? {} : { body, headers: { 'content-type': 'application/json' } }),
  });
const jobsOf = (kind: string) => t.agent.jobs.list().filter((job) => job.kind === kind);

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  // An S3 destination that is on (unreachable: a Sync would start and fail, which is not the point here).
  const put = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      offsite: {
        s3: {
          enabled: true,
          provider: 'other',
          endpoint: 'http://127.0.0.1:9',
          region: 'us-east-1',
          bucket: 'gem-backups',
          accessKeyId: 'AKIAEXAMPLE',
          secretAccessKey: 'secret-example-key',
          forcePathStyle: true,
        },
      },
    }),
  });
  expect(put.status).toBe(200);
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('a route that takes no options', () => {
  it('refuses a body naming one with 422, and runs nothing', async () => {
    const history = async () =>
      (await t.agent.sql`select count(*)::int as n from access_log`)[0]!.n as number;
    const rows = await history();
    for (const [path, body, field] of [
      ['/api/v1/maintenance/run', '{"retentionDays": 365}', 'retentionDays'],
      ['/api/v1/offsite/s3/sync', '{"dryRun": true}', 'dryRun'],
    ] as const) {
      const res = await post(path, body);
      expect(res.status, path).toBe(422);
      const { error } = (await res.json()) as { error: { code: string; message: string } };
      expect(error).toEqual({
        code: 'unprocessable',
        message: `body: unknown field: ${field}`,
        details: expect.anything(),
      });
    }
    expect(jobsOf('maintenance')).toEqual([]);
    expect(jobsOf('sync')).toEqual([]);
    expect(await history()).toBe(rows);
  });

  it('still runs without a body, or with an empty one', async () => {
    for (const body of [undefined, '{}']) {
      const run = await post('/api/v1/maintenance/run', body);
      expect(run.status).toBe(200);
      const sync = await post('/api/v1/offsite/s3/sync', body);
      expect(sync.status).toBe(202);
      await t.agent.jobs.waitFor(((await sync.json()) as { jobId: string }).jobId);
    }
    expect(jobsOf('maintenance')).toHaveLength(2);
    expect(jobsOf('sync')).toHaveLength(2);
  });
});
