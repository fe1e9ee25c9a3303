/**
 * A failed scheduled backup is a warning in the backups area until a good backup is made after it: the
 * next scheduled run, or one a person starts once the cause is mended (not only the next slot, which a
 * weekly or monthly schedule puts days away). A slot skipped or that could not start records no run; it
 * stays named until a good backup is made after the slot.
 */
import { rename, rm, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthModule } from '../../agent/http/routes/health';
import { Scheduler } from '../../agent/jobs/scheduler';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, call, downloadKeys } from './helpers';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [healthModule] });
  await downloadKeys(t);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('the backups area after a failed scheduled backup', () => {
  it('warns about the failure until a backup made after it succeeds', async () => {
    await backupNow(t);
    const scripts = t.agent.sources.scriptsDir;
    // A file where the scripts folder should be: the scheduled backup fails.
    await rename(scripts, `${scripts}.away`);
    await writeFile(scripts, 'not a folder');
    const scheduler = new Scheduler(t.agent);
    try {
      const failed = await scheduler.fire('autoBackup', false);
      expect(failed?.state).toBe('failed');
    } finally {
      scheduler.stop();
      await rm(scripts);
      await rename(`${scripts}.away`, scripts);
    }
    const warned = await call(t, 'GET', '/health');
    expect(warned.body.areas.backups.status).toBe('warning');
    expect(warned.body.areas.backups.reason).toMatch(/^The last scheduled backup failed: /);

    // The folder is back; a person makes a backup rather than wait for the next slot.
    await backupNow(t);
    const mended = await call(t, 'GET', '/health');
    expect(mended.body.areas.backups.reason).toMatch(/^The last backup was made \d+ min ago/);
    expect(mended.body.areas.backups.status).toBe('ok');

    // A slot skipped (another job held the lock at the last retry) is no run: named after any backup
    // made before it.
    await t.agent.settings.state.recordSkip('autoBackup', new Date(), {
      ok: false,
      error: 'skipped: another job was running at the scheduled time',
    });
    const skipped = await call(t, 'GET', '/health');
    expect(skipped.body.areas.backups.status).toBe('warning');
    expect(skipped.body.areas.backups.reason).toMatch(/^The last scheduled backup was skipped: /);

    // A good backup made after that slot: nothing is missing any more.
    await backupNow(t);
    const after = await call(t, 'GET', '/health');
    expect(after.body.areas.backups.reason).toMatch(/^The last backup was made \d+ min ago/);
    expect(after.body.areas.backups.status).toBe('ok');
  }, 120_000);
});
