/**
 * A copy that failed verification is failing in the verification area also while the scheduled
 * verification is off (a person ran it with Verify now): turning the schedule off does not hide a
 * damaged backup behind the warning that it is off.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthModule } from '../../agent/http/routes/health';
import { settingsModule } from '../../agent/http/routes/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, call, damageAndVerify, downloadKeys } from './helpers';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule, healthModule] });
  await downloadKeys(t);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('the verification area with the schedule off', () => {
  it('is failing when the last verification found the newest backup damaged', async () => {
    const saved = await call(t, 'PUT', '/settings', { verification: { enabled: false } });
    expect(saved.status, JSON.stringify(saved.body)).toBe(200);
    const off = await call(t, 'GET', '/health');
    expect(off.body.areas.verification).toMatchObject({
      status: 'warning',
      reason: 'Scheduled verification is off',
    });

    await backupNow(t);
    const damaged = await backupNow(t);
    const job = await damageAndVerify(t, damaged);
    expect(job.error).toMatchObject({ code: 'corrupt_backup' });
    expect(job.error!.message).toContain(damaged);

    const health = await call(t, 'GET', '/health');
    expect(health.body.areas.verification.status).toBe('failing');
    expect(health.body.areas.verification.reason).toMatch(/^local: /);
    expect(health.body.status).toBe('failing');
    expect(health.body.areas.verification.reason).toContain('Verify now');

    // The damaged backup deleted: nothing here is known damaged any more, and nothing but a Verify now
    // (the schedule is off) would ever replace that result.
    expect(await t.agent.catalog.delete(damaged)).toBe(true);
    const after = await call(t, 'GET', '/health');
    expect(after.body.areas.verification).toMatchObject({
      status: 'warning',
      reason: 'Scheduled verification is off',
    });
  }, 120_000);
});
