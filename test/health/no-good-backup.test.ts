/**
 * The backups area when backups are in the folder but none is a good one of this installation: it says
 * why (failed verification, another installation's), not "No backup has been made yet", which sent a
 * user looking for a backup job that never ran.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { healthModule } from '../../agent/http/routes/health';
import { settingsModule } from '../../agent/http/routes/settings';
import { standaloneContext } from '../../agent/jobs/runner';
import { Keyring } from '../../agent/keys/keyring';
import { silentLogger } from '../../agent/log';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, call, damageAndVerify, downloadKeys } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
/** Where another installation keeps its keyring (another controller whose backup was copied here). */
let elsewhere: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule, healthModule] });
  await downloadKeys(t);
  elsewhere = await mkdtemp(join(tmpdir(), 'gem-other-installation-'));
}, 60_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (elsewhere) await rm(elsewhere, { recursive: true, force: true });
});

async function backupsArea(): Promise<{ status: string; reason: string; count: number }> {
  const res = await call(t, 'GET', '/health');
  expect(res.status).toBe(200);
  return res.body.areas.backups;
}

describe('the backups area with no good backup of this installation in the folder', () => {
  it('says the one backup failed verification, then that the other is another installation’s', async () => {
    expect((await backupsArea()).reason).toMatch(/^No backup has been made yet \(daily schedule since/);

    await damageAndVerify(t, await backupNow(t));
    const failed = await backupsArea();
    expect(failed.count).toBe(1);
    expect(failed.reason).toMatch(
      /^No good backup of this installation: of the 1 here, 1 failed verification \(daily schedule since/,
    );

    // Another controller's backup copied into the folder: readable, verified, not ours.
    const other = await Keyring.loadOrCreate(join(elsewhere, 'keyring.json'));
    await createBackup(backupDeps(t.agent, { keyring: other }), standaloneContext(silentLogger), {
      kind: 'manual',
    });
    const saved = await call(t, 'PUT', '/settings', { autoBackup: { enabled: false } });
    expect(saved.status, JSON.stringify(saved.body)).toBe(200);
    expect(await backupsArea()).toMatchObject({
      status: 'failing',
      count: 2,
      reason:
        'No good backup of this installation: of the 2 here, 1 failed verification, 1 made by another installation, and automatic backups are off',
    });
  }, 120_000);
});
