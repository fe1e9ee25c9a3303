// Offsite pruning follows the local pins: while they are unknown (a damaged backup-records.json was set
// aside: pruning held) neither a Sync nor an auto-upload's prune deletes anything, on either side.
import { readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, filenameOf, runJob } from './helpers';
import { MidUploadFixture } from './mid-upload';

let pg: TestPostgres;
let sshd: SshdService;
let m: MidUploadFixture;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  m = await MidUploadFixture.start(pg, sshd);
  t = m.t;
});
afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

describe('offsite pruning while pruning is held', () => {
  it('a Sync and an auto-upload delete nothing on either side; after the resume the Sync prunes again', async () => {
    const [b1, b2, b3, b4] = await m.fourBackups('held');
    await t.agent.catalog.updateRecord(b1, { pinned: true });
    const records = t.agent.paths.backupRecords;
    await writeFile(records, (await readFile(records)).subarray(0, 30));

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(job.result).toEqual({
      uploaded: [b3, b4],
      downloaded: [],
      deleted: { remote: [], local: [] },
      pruneStopped: expect.stringMatching(/^Pruning is paused: the backup records were damaged/),
    });
    expect(await m.remoteNames('held')).toEqual([b1, b2, b3, b4]);
    expect(await m.localNames()).toEqual([b1, b2, b3, b4]);

    // An auto-upload's prune of the destination deletes nothing either.
    await t.agent.settings.update({ offsite: { sftp: m.sftp('held', { autoUpload: true }) } });
    const b5 = filenameOf(await backupNow(t));
    expect(await m.remoteNames('held')).toEqual([b1, b2, b3, b4, b5]);
    expect(await m.localNames()).toEqual([b1, b2, b3, b4, b5]);

    // Resumed (the owner pinned b1 again): the next Sync keeps the pin and the newest two, on both sides.
    await t.agent.catalog.updateRecord(b1, { pinned: true });
    await t.agent.catalog.hold.resume();
    const next = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(next.state, JSON.stringify(next.error)).toBe('succeeded');
    expect(next.result).toEqual({
      uploaded: [],
      downloaded: [],
      deleted: { remote: [b2, b3], local: [b2, b3] },
    });
    expect(await m.remoteNames('held')).toEqual([b1, b4, b5]);
  });
});
