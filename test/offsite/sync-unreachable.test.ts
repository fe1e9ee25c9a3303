// A destination that stops answering during a sync ends the sync after the first transfer it failed
// (its retries spent), naming the others as not attempted, instead of waiting out every transfer's
// timeouts in turn while the job lock is held. Real smbd, frozen with SIGSTOP as the first upload starts.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offsiteServiceFor } from '../../agent/offsite/index';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SmbdService, startSmbd } from '../services/smbd';
import { startAll } from '../services/start-all';
import { backupNow, FAST, filenameOf, runJob, startOffsiteAgent } from './helpers';

let pg: TestPostgres;
let smbd: SmbdService;
let t: TestAgent;
let paused = false;

function resume(): void {
  if (paused) smbd.resume();
  paused = false;
}

beforeAll(async () => {
  ({ pg, smbd } = await startAll({ pg: startPostgres, smbd: startSmbd }));
  t = await startOffsiteAgent(pg);
}, 120_000);
afterAll(async () => {
  resume();
  await t?.close();
  await Promise.all([pg?.stop(), smbd?.stop()]);
});

const smb = (remotePath: string) => ({
  enabled: true,
  host: smbd.host,
  port: smbd.port,
  share: smbd.share,
  username: smbd.username,
  password: smbd.password,
  remotePath,
  autoUpload: false,
});

describe('a sync whose destination stops answering', () => {
  it('stops after the first failed transfer and names the rest as not attempted; the next sync sends all', async () => {
    const made: string[] = [];
    for (let i = 0; i < 3; i++) made.push(filenameOf(await backupNow(t)));
    await t.agent.settings.update({ autoBackup: { maxBackups: 10 }, offsite: { smb: smb('/frozen/') } });

    // smbd freezes as the first upload begins (the listing and sweep before it went through).
    const uploads: string[] = [];
    const off = t.agent.jobs.subscribeAll((event) => {
      if (event.type !== 'update' || event.job.kind !== 'sync') return;
      const phase = /^uploading (.+)$/.exec(event.job.phase)?.[1];
      if (phase === undefined || uploads.includes(phase)) return;
      uploads.push(phase);
      if (!paused) {
        smbd.pause();
        paused = true;
      }
    });
    // Once smbd is frozen each upload attempt ends only at the stall limit: 1 s without progress for
    // this sync (as test/offsite/interrupted), FAST's 3 s again for the next one.
    offsiteServiceFor(t.agent, { ...FAST, stallTimeoutMs: 1000 });
    let job: Awaited<ReturnType<typeof runJob>>;
    try {
      job = await runJob(t, 'POST', '/offsite/smb/sync');
    } finally {
      off();
      resume();
      offsiteServiceFor(t.agent, FAST);
    }
    expect(job.state).toBe('failed');
    // One transfer tried; the two after it never started.
    expect(uploads).toEqual([made[0]]);
    expect(job.error?.message).toMatch(/^1 transfer failed; nothing was pruned\. /);
    expect(job.error?.message).toContain(`${made[0]}: Cannot reach ${smbd.host} on port ${smbd.port}`);
    expect(job.error?.message).toContain(
      `2 other transfers were not attempted (the destination is not answering): ${made[1]}, ${made[2]}.`,
    );
    const { smb: recorded } = await offsiteServiceFor(t.agent).status();
    expect(recorded.lastSync).toMatchObject({ ok: false, uploaded: [], notAttempted: [made[1], made[2]] });
    // Nothing of ours under a backup's name on the share, and every local backup is still here.
    const names = await readdir(join(smbd.root, 'frozen')).catch(() => [] as string[]);
    expect(names.filter((n) => made.includes(n))).toEqual([]);
    expect((await t.agent.catalog.list()).map((b) => b.filename).sort()).toEqual([...made].sort());

    // Answering again: the next sync sends all three.
    const again = await runJob(t, 'POST', '/offsite/smb/sync');
    expect(again.state, JSON.stringify(again.error)).toBe('succeeded');
    expect((again.result as { uploaded: string[] }).uploaded).toEqual(made);
    expect((await readdir(join(smbd.root, 'frozen'))).filter((n) => made.includes(n)).sort()).toEqual(
      [...made].sort(),
    );
  }, 120_000);
});
