/** Load: 50 concurrent HTTP clients poll job status and list backups while a backup and its S3 upload run; every answer 2xx, memory flat. */
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { startAll } from '../services/start-all';
import { faultReport } from './report';

const CLIENTS = Number(process.env.GEM_FAULTS_CLIENTS ?? 50);
const report = faultReport('load', 'concurrent clients');

let pg: TestPostgres;
let s3: S3Service;
let t: TestAgent;
let server: ReturnType<typeof serve>;
let base: string;

beforeAll(async () => {
  ({ pg, s3 } = await startAll({ pg: () => startPostgres({ fsync: false }), s3: startS3 }));
  t = await startTestAgent(pg, { modules: [offsiteModule] });
  offsiteServiceFor(t.agent, {
    retry: { attempts: 2, baseDelayMs: 50, maxDelayMs: 200 },
    stallTimeoutMs: 10_000,
  });
  // About 30 MB of backup, so the backup and the upload take a while under the load: 28 000 rows of
  // 1 KiB of random bytes, read by the server from /dev/urandom (gen_random_uuid() 64 times a row took 5 s).
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `create table noise as select g as id, pg_read_binary_file('/dev/urandom', 0, 1024) as data from generate_series(1, 28000) g`,
    ),
  );
  await t.agent.settings.update({
    offsite: {
      s3: {
        enabled: true,
        provider: 'minio',
        endpoint: s3.endpoint,
        region: s3.region,
        bucket: s3.bucket,
        accessKeyId: s3.accessKeyId,
        secretAccessKey: s3.secretAccessKey,
        autoUpload: true,
      },
    },
  });
  await new Promise<void>((resolve) => {
    server = serve({ fetch: t.app.fetch, hostname: '127.0.0.1', port: 0 }, (info: AddressInfo) => {
      base = `http://127.0.0.1:${info.port}`;
      resolve();
    });
  });
});

afterAll(async () => {
  report.print();
  await new Promise((resolve) => server?.close(resolve));
  await t?.close();
  await Promise.all([pg?.stop(), s3?.stop()]);
});

const auth = { authorization: `Bearer ${TEST_TOKEN}` };

describe(`${CLIENTS} clients polling during a backup and an upload`, () => {
  it('get only 2xx answers, the backup and upload complete, memory stays flat', async () => {
    global.gc?.();
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 50);
    const started = await fetch(`${base}/api/v1/backups`, { method: 'POST', headers: auth });
    expect(started.status).toBe(202);
    const { jobId } = (await started.json()) as { jobId: string };
    let running = true;
    const errors: string[] = [];
    let requests = 0;
    const client = async (n: number) => {
      // Bounded: until the job ends, at most 400 requests each.
      for (let i = 0; running && i < 400; i++) {
        const path = (n + i) % 2 === 0 ? `/api/v1/jobs/${jobId}` : '/api/v1/backups';
        const res = await fetch(`${base}${path}`, { headers: auth }).catch((e: Error) => ({ status: 0, e }));
        requests += 1;
        if (res.status < 200 || res.status >= 300) errors.push(`${path}: ${res.status}`);
        if ('text' in res) await res.text();
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    const clients = Array.from({ length: CLIENTS }, (_, n) => client(n));
    const job = await t.agent.jobs.waitFor(jobId);
    running = false;
    await Promise.all(clients);
    clearInterval(sampler);
    report.inject(CLIENTS);
    const growth = peak - baseline;
    console.log(
      `load: ${CLIENTS} clients, ${requests} requests, ${errors.length} errors, RSS growth ${(growth / 1048576).toFixed(0)} MiB`,
    );
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    const result = job.result as {
      backup: { filename: string; size: number };
      followUps: Record<string, { ok: boolean }>;
    };
    expect(Object.values(result.followUps).every((f) => f.ok)).toBe(true);
    const remote = await fetch(`${base}/api/v1/offsite/s3/backups`, { headers: auth });
    expect(JSON.stringify(await remote.json())).toContain(result.backup.filename);
    report.tried(errors.length === 0, `${errors.length} non-2xx answers`);
    expect(errors).toEqual([]);
    // Generous: the agent streams; 50 clients' buffers and garbage awaiting collection stay far below this.
    expect(growth).toBeLessThan(300 * 1024 * 1024);
  });
});
