// The scheduled verification's Cloud DR check beside a push, against the real Worker: a push whose upload
// has landed in the slot, but whose success the agent has not recorded yet, is not a damaged cloud copy;
// and a Cancel of the verification ends it while the cloud does not answer its look at the slot.
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { drServiceFor } from '../../agent/dr/service';
import { isAppError } from '../../agent/errors';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { runVerification } from '../../agent/verification';
import { startVerification } from '../../agent/verification/run';
import type { TargetResult } from '../../agent/verification/state';
import { pushViaApi, startDrAgent } from '../dr/helpers';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let cloud: DrCloud;
let t: TestAgent;

/**
 * A proxy in front of the Worker. With `holdUploads`, the Worker's answer to a single-request upload is
 * kept back (the slot already holds the new bytes) until `release()`; with `hangLooks`, a HEAD of the
 * slot is never answered.
 */
const proxy = {
  holdUploads: false,
  hangLooks: false,
  looksAnswered: 0,
  uploadLanded: undefined as (() => void) | undefined,
  release: () => {},
};
let server: http.Server;
let proxyUrl: string;

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  server = http.createServer((req, res) => {
    if (proxy.hangLooks && req.method === 'HEAD') return;
    const upstream = http.request(
      { host: '127.0.0.1', port: cloud.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        const pass = () => {
          if (req.method === 'HEAD') proxy.looksAnswered++;
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        };
        if (proxy.holdUploads && req.method === 'PUT' && req.url === '/v1/dr/backup') {
          proxy.release = pass;
          proxy.uploadLanded?.();
        } else pass();
      },
    );
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxyUrl = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  t = await startDrAgent(pg, proxyUrl);
}, 120_000);
afterAll(async () => {
  await t?.close();
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await cloud?.dispose();
  await pg?.stop();
});

/** The cloud target of one verification run (the run throws when a target failed; its details carry the results). */
async function cloudResult(): Promise<TargetResult> {
  let results: TargetResult[];
  try {
    results = (await runVerification(t.agent, standaloneContext(silentLogger))).results;
  } catch (error) {
    if (!isAppError(error, 'corrupt_backup')) throw error;
    results = (error.details as { results: TargetResult[] }).results;
  }
  const cloudTarget = results.find((r) => r.target === 'cloud');
  if (!cloudTarget) throw new Error('the verification has no cloud target');
  return cloudTarget;
}

describe('the Cloud DR slot check beside a push', () => {
  it('is not a damaged cloud copy when a push lands in the slot during the check', async () => {
    const first = await pushViaApi(t);
    expect(first.error, JSON.stringify(first.error)).toBeUndefined();
    const before = (await drServiceFor(t.agent).status()).lastSuccess!;

    proxy.holdUploads = true;
    const landed = new Promise<void>((resolve) => {
      proxy.uploadLanded = resolve;
    });
    const res = await t.request('/api/v1/dr/push', { method: 'POST' });
    expect(res.status).toBe(202);
    const { jobId } = (await res.json()) as { jobId: string };
    await landed;
    // The slot holds the second push's bytes; the agent still records the first push as its last.
    expect((await drServiceFor(t.agent).status()).lastSuccess?.at).toBe(before.at);

    const looksBefore = proxy.looksAnswered;
    const verifying = cloudResult();
    while (proxy.looksAnswered === looksBefore) await new Promise((r) => setTimeout(r, 20));
    proxy.holdUploads = false;
    proxy.release();
    const second = await t.agent.jobs.waitFor(jobId);
    expect(second.error, JSON.stringify(second.error)).toBeUndefined();

    const result = await verifying;
    expect(result, JSON.stringify(result)).toMatchObject({ target: 'cloud', ok: true, check: 'metadata' });
    const after = (await drServiceFor(t.agent).status()).lastSuccess!;
    expect(after.sha256).not.toBe(before.sha256);
    expect((result.details as { slot: { sha256: string } }).slot.sha256).toBe(after.sha256);
  }, 120_000);

  it('ends at once when cancelled while the cloud does not answer its look at the slot', async () => {
    proxy.hangLooks = true;
    try {
      const job = await startVerification(t.agent);
      await new Promise<void>((resolve) => {
        const off = t.agent.jobs.subscribe(job.id, (e) => {
          if (e.type !== 'update' || e.job.phase !== 'verify cloud') return;
          off();
          resolve();
        });
      });
      await new Promise((r) => setTimeout(r, 500));
      const cancelledAt = Date.now();
      t.agent.jobs.cancel(job.id);
      const ended = await t.agent.jobs.waitFor(job.id);
      expect(ended.state).toBe('cancelled');
      expect(Date.now() - cancelledAt).toBeLessThan(5000);
    } finally {
      proxy.hangLooks = false;
    }
  }, 60_000);

  it('checks the newest real local backup, not the temporary copy a push made for the cloud', async () => {
    const real = await createBackup(backupDeps(t.agent), standaloneContext(silentLogger), {
      now: new Date(Date.now() - 2 * 24 * 3600_000),
    });
    proxy.holdUploads = true;
    const landed = new Promise<void>((resolve) => {
      proxy.uploadLanded = resolve;
    });
    const res = await t.request('/api/v1/dr/push', { method: 'POST' });
    expect(res.status).toBe(202);
    const { jobId } = (await res.json()) as { jobId: string };
    await landed;
    // No local backup is younger than 24 h: the push made a temporary one, the newest in the folder.
    const temporary = (await t.agent.catalog.list())[0]!;
    expect(temporary).toMatchObject({ kind: 'dr' });

    const looksBefore = proxy.looksAnswered;
    const verifying = runVerification(t.agent, standaloneContext(silentLogger));
    while (proxy.looksAnswered === looksBefore) await new Promise((r) => setTimeout(r, 20));
    proxy.holdUploads = false;
    proxy.release();
    expect((await t.agent.jobs.waitFor(jobId)).error).toBeUndefined();
    const { results } = await verifying;
    expect(results.find((r) => r.target === 'local')).toMatchObject({
      ok: true,
      check: 'full',
      filename: real.filename,
    });
    expect(await t.agent.catalog.exists(temporary.filename)).toBe(false);
  }, 120_000);
});
