/**
 * A backup dated a little after the clock (within the tolerance: the clock was set back by a few minutes
 * after it was made) is the newest backup, made just now: never "made -3 min ago".
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, call, downloadKeys } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
/** How far the clock health reads was set back. */
let back = 0;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [healthModule] });
  healthFor(t.agent, { now: () => new Date(Date.now() - back) });
  await downloadKeys(t);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('the backups area after the clock was set back a little', () => {
  it('says the newest backup was made 0 min ago', async () => {
    const filename = await backupNow(t);
    back = 3 * 60_000;
    const health = await call(t, 'GET', '/health');
    const backups = health.body.areas.backups;
    expect(backups.lastBackup.filename).toBe(filename);
    expect(backups.reason).toBe('The last backup was made 0 min ago (daily schedule)');
    expect(backups.ageSeconds).toBe(0);
    expect(backups.status).toBe('ok');
  }, 60_000);
});
