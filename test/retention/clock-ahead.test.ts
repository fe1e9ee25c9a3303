// Backups made while the clock was ahead (a wrong year set by hand, then corrected): retention keeps the real backups made since, and health says what happened.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { healthFor } from '../../agent/health/service';
import { call, sftpSection } from '../health/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let sshd: SshdService;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  t = await startTestAgent(pg);
  healthFor(t.agent, { offsiteProbeIntervalMs: 0 });
}, 60_000);
afterAll(async () => {
  if (t) healthFor(t.agent).stop();
  await t?.close();
  await sshd?.stop();
  await pg?.stop();
});

/** A scheduled backup made at `at` (its header's time; the agent's clock then), retention hook included. */
async function backup(at?: Date): Promise<string> {
  const job = await t.agent.jobs.waitFor(
    (await startBackup(t.agent, { kind: 'scheduled', ...(at ? { now: at } : {}) })).id,
  );
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return (job.result as { backup: { filename: string } }).backup.filename;
}
const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename).sort();

describe('backups dated after the clock', () => {
  it('are kept and not counted: the real backups made since keep their history, and health warns', async () => {
    const put = await call(t, 'PUT', '/settings', {
      autoBackup: { enabled: true, schedule: 'daily', maxBackups: 3 },
      offsite: { sftp: { ...sftpSection(sshd, 'clock-ahead'), autoUpload: true } },
    });
    expect(put.status).toBe(200);
    // Three nights with the clock set ten years ahead.
    const ahead = [];
    for (let day = 1; day <= 3; day++) ahead.push(await backup(new Date(Date.UTC(2036, 0, day, 2, 0, 0))));
    // The clock is corrected; four real backups follow (a minute apart, as the clock had it).
    const real = [];
    const start = Date.now() - 10 * 60_000;
    for (let i = 0; i < 4; i++) real.push(await backup(new Date(start + i * 60_000)));

    // Counted, the 2036 ones were "the newest three" and each real backup went at the next one.
    expect(await localNames()).toEqual([...real.slice(1), ...ahead].sort());
    // The destination's retention (after each auto-upload) keeps the same ones.
    const remote = (await call(t, 'GET', '/offsite/sftp/backups')).body.backups as Array<{
      filename: string;
    }>;
    expect(remote.map((b) => b.filename).sort()).toEqual([...real.slice(1), ...ahead].sort());
    const deleted = (await call(t, 'GET', '/retention/preview')).body as { delete: unknown[] };
    expect(deleted.delete).toEqual([]);

    const health = (await call(t, 'GET', '/health')).body.areas.backups as {
      status: string;
      reason: string;
      lastBackup: { filename: string } | null;
    };
    expect(health.status).toBe('warning');
    // Freshness is the newest real backup's, not the 2036 one's.
    expect(health.lastBackup?.filename).toBe(real[3]);
    expect(health.reason).toContain(
      `3 backups (the newest ${ahead[2]}) are dated after this machine's clock: the clock was ahead when they were made`,
    );
    expect(health.reason).toContain('delete them yourself once newer backups have replaced them');

    // Scheduled verification reads the newest real backup, not the 2036 one.
    const run = await call(t, 'POST', '/health/verification/run');
    expect(run.status).toBe(202);
    const verified = await t.agent.jobs.waitFor(run.body.jobId);
    expect(verified.state, JSON.stringify(verified.error)).toBe('succeeded');
    const results = (verified.result as { results: Array<{ target: string; filename?: string }> }).results;
    expect(results).toContainEqual(expect.objectContaining({ target: 'local', filename: real[3] }));
    expect(results).toContainEqual(expect.objectContaining({ target: 'sftp', filename: real[3] }));

    // Once a person deletes them, the area is ok again.
    for (const name of ahead) expect((await call(t, 'DELETE', `/backups/${name}`)).status).toBe(200);
    expect(((await call(t, 'GET', '/health')).body.areas.backups as { status: string }).status).toBe('ok');
  });
});
