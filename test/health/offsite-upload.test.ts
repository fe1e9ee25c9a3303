/**
 * Offsite health follows what is really on the destination (real sshd, real agent processes): Sync Now's
 * uploads count like the auto-upload's, and an auto-upload cut off by a crash (SIGKILL) is told after
 * the restart ("the newest backup is not on SFTP server") instead of staying ok.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { offsiteServiceFor } from '../../agent/offsite/service';
import { OffsiteStateStore } from '../../agent/offsite/state';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { runChild } from '../faults/child';
import { FAST, runJob } from '../offsite/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, downloadKeys, sftpSection } from './helpers';

let pg: TestPostgres;
let sshd: SshdService;
let t: TestAgent;
let dataDir: string;
let databaseUrl: string;
// The crash test's agent child bundled once for the file (test/faults/built-child.ts).
let children: BuiltChildren<'agent-child'>;

/** An agent on the test's data dir and database (seeded the first time only), probing on every evaluation. */
async function open(seed: boolean): Promise<TestAgent> {
  const agent = await startTestAgent(pg, {
    dataDir,
    ...(seed ? {} : { databaseUrl }),
    modules: [settingsModule, healthModule, offsiteModule],
  });
  offsiteServiceFor(agent.agent, FAST);
  healthFor(agent.agent, { offsiteProbeIntervalMs: 0 });
  return agent;
}

beforeAll(async () => {
  // fsync off: the kill below lands at a phase's start, not after a time; the restarted agent still
  // finds every write the server acknowledged.
  ({ pg, sshd, children } = await startAll({
    pg: () => startPostgres({ fsync: false }),
    sshd: startSshd,
    children: () => buildChildren({ 'agent-child': 'test/faults/agent-child.ts' }),
  }));
  dataDir = await mkdtemp(join(tmpdir(), 'gem-offsite-health-'));
  t = await open(true);
  databaseUrl = t.agent.config.databaseUrl!;
  await downloadKeys(t);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop(), children?.remove()]);
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

const sftpHealth = async () => {
  const health = await call(t, 'GET', '/health');
  expect(health.status).toBe(200);
  return health.body.areas.offsite.destinations.sftp;
};
const remote = async () => (await readdir(join(sshd.root, 'health-up')).catch(() => [])).sort();

describe('offsite health against what reached the destination', () => {
  it("counts Sync Now's uploads: the newest backup uploaded and when", async () => {
    // Two backups while the destination only syncs, then auto-upload is turned on: neither is there yet.
    const put = await call(t, 'PUT', '/settings', { offsite: { sftp: sftpSection(sshd, 'health-up') } });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    await backupNow(t);
    const newest = await backupNow(t);
    await call(t, 'PUT', '/settings', {
      offsite: { sftp: { ...sftpSection(sshd, 'health-up'), autoUpload: true } },
    });
    const before = await sftpHealth();
    // Soft: on a failure here the sync below still runs, so the next test starts from the same state.
    expect.soft(before.status).toBe('warning');
    expect
      .soft(before.reason)
      .toBe(
        `No backup has been uploaded to SFTP server yet (the newest is ${newest}): run Sync Now to send it`,
      );

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect((job.result as { uploaded: string[] }).uploaded).toHaveLength(2);
    expect(await remote()).toContain(newest);

    const after = await sftpHealth();
    expect(after.status, after.reason).toBe('ok');
    expect(after.lastSuccessfulUpload).toMatchObject({ backup: newest, ok: true, via: 'sync' });
    expect(Date.now() - Date.parse(after.lastSuccessfulUpload.at)).toBeLessThan(60_000);
    expect(after.lastUpload.backup).toBe(newest);
  }, 120_000);

  it('tells after a restart that an auto-upload cut off by a crash never reached the destination', async () => {
    const uploaded = (await remote()).at(-1)!; // the newest there, sent by the sync above
    await t.close();
    // A separate agent process makes a backup and is SIGKILLed as its auto-upload to SFTP starts.
    const run = runChild(
      {
        DATABASE_URL: databaseUrl,
        GEM_DATA_DIR: dataDir,
        GEM_SCRIPTS_DIR: join(dataDir, 'gem', 'scripts'),
        GEM_CONFIG_DIR: join(dataDir, 'gem', 'config'),
        GEM_PG_BIN: pg.binDir,
        NODE_ENV: 'test',
        FAULT_ACTION: 'backup',
        KILL_PHASE: 'uploading to sftp',
        KILL_FRACTION: '0',
      },
      children.paths['agent-child'],
    );
    const exit = await run.exited;
    expect(exit.signal, exit.stderr).toBe('SIGKILL');
    t = await open(false);
    const cut = (await t.agent.catalog.list())[0]!.filename;
    expect(cut > uploaded).toBe(true);
    expect(await remote()).not.toContain(cut);

    const health = await sftpHealth();
    expect(health.status).toBe('warning');
    expect(health.reason).toMatch(
      new RegExp(
        `^The newest backup, ${cut}, is not on SFTP server \\(the last upload there was ${uploaded}, \\d+ min ago\\): run Sync Now to send it$`,
      ),
    );
    const area = (await call(t, 'GET', '/health')).body.areas.offsite;
    expect(area.status).toBe('warning');

    // Sync Now sends it; health is ok again and names it.
    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect((job.result as { uploaded: string[] }).uploaded).toEqual([cut]);
    const after = await sftpHealth();
    expect(after.status, after.reason).toBe('ok');
    expect(after.lastSuccessfulUpload.backup).toBe(cut);
  }, 180_000);

  it('a failed upload whose backup landed after all is over once Sync Now finds everything there', async () => {
    const newest = (await remote()).at(-1)!;
    // The upload of the newest failed after its file had landed (its last check went unanswered).
    await new OffsiteStateStore(dataDir, t.agent.log).recordUpload('sftp', {
      at: new Date().toISOString(),
      backup: newest,
      ok: false,
      error: { code: 'dependency_down', message: 'the server did not answer the final check' },
    });
    const failed = await sftpHealth();
    expect(failed.status).toBe('failing');
    expect(failed.reason).toBe(
      'The last upload to SFTP server failed: the server did not answer the final check',
    );

    // Sync Now, as the page advises: nothing is missing, so nothing is sent, and the failure is over.
    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect((job.result as { uploaded: string[] }).uploaded).toEqual([]);
    const after = await sftpHealth();
    expect(after.status, after.reason).toBe('ok');
  }, 120_000);
});
