// The backups area of health counts only this installation's backups: another installation's fresh backup in the folder does not make an overdue schedule ok.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { startBackup } from '../../agent/backup/operations';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import { standaloneContext } from '../../agent/jobs/runner';
import { Keyring } from '../../agent/keys/keyring';
import { silentLogger } from '../../agent/log';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { call } from './helpers';

const DAY = 86_400_000;
let pg: TestPostgres;
let t: TestAgent;
/** Where another installation keeps its keyring (another controller whose backup was copied here). */
let elsewhere: string;
/** The agent's clock for health: moved forward by the test, never waited for. */
let clock = new Date();
const now = () => clock;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [healthModule] });
  healthFor(t.agent, { now, offsiteProbeIntervalMs: 0 });
  elsewhere = await mkdtemp(join(tmpdir(), 'gem-other-installation-'));
}, 60_000);

afterAll(async () => {
  if (t) healthFor(t.agent).stop();
  await t?.close();
  await pg?.stop();
  if (elsewhere) await rm(elsewhere, { recursive: true, force: true });
});

/** A manual backup of this installation made at `at` (its header's time); returns its file name. */
async function ownBackup(at?: Date): Promise<string> {
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent, at ? { now: at } : {})).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return (job.result as { backup: { filename: string } }).backup.filename;
}

async function backupsHealth(): Promise<{
  status: string;
  reason: string;
  lastBackup: { filename: string } | null;
  count: number;
}> {
  const res = await call(t, 'GET', '/health');
  expect(res.status).toBe(200);
  return res.body.areas.backups;
}

describe('health: the backups area and another installation’s backup', () => {
  it('the only fresh backup is another installation’s: overdue (warning) on our own older one; ok after a backup of ours', async () => {
    expect(t.agent.settings.get().autoBackup).toMatchObject({ enabled: true, schedule: 'daily' });
    const ours = await ownBackup();
    expect((await backupsHealth()).status).toBe('ok');

    // Two days later (twice the daily interval) another controller's backup, made just now with its own
    // keyring, lands in our backups folder: a real, readable backup file of another installation.
    clock = new Date(clock.getTime() + 2 * DAY);
    const other = await Keyring.loadOrCreate(join(elsewhere, 'keyring.json'));
    expect(other.installationId).not.toBe(t.agent.keyring.installationId);
    const foreign = await createBackup(
      backupDeps(t.agent, { keyring: other }),
      standaloneContext(silentLogger),
      { kind: 'manual', now: clock },
    );
    const listed = await t.agent.catalog.list();
    expect(listed[0]).toMatchObject({
      filename: foreign.filename,
      installation: other.installationId.slice(0, 8),
      installationTag: other.installationTag,
      verifyResult: 'ok',
    });

    const stale = await backupsHealth();
    expect(stale.status).toBe('warning');
    expect(stale.lastBackup?.filename).toBe(ours);
    // Whole units gone by: just under two days reads "47 h".
    expect(stale.reason).toMatch(/^The last backup was made (47 h|2 days) ago .*backups are overdue/);
    expect(stale.count).toBe(2);

    // A backup of our own now: fresh again, and it is the one health names.
    const fresh = await ownBackup(clock);
    const ok = await backupsHealth();
    expect(ok.status).toBe('ok');
    expect(ok.lastBackup?.filename).toBe(fresh);
    expect(ok.count).toBe(3);
  });

  it("a restore's safety backup is not the last backup: it holds the data the restore replaced", async () => {
    const newest = (await backupsHealth()).lastBackup?.filename;
    // Two days on, a restore (or a DR recovery) takes a safety backup; no backup of what runs now follows.
    clock = new Date(clock.getTime() + 2 * DAY);
    const safety = await createBackup(backupDeps(t.agent), standaloneContext(silentLogger), {
      kind: 'safety',
      now: clock,
    });
    expect((await t.agent.catalog.list())[0]?.filename).toBe(safety.filename);
    const after = await backupsHealth();
    expect(after.lastBackup?.filename).toBe(newest);
    expect(after.status).toBe('warning');
    expect(after.reason).toMatch(/^The last backup was made (47 h|2 days) ago .*backups are overdue/);
  });
});
