// A keys import while a Cloud DR push runs: the push was checked against the "keys imported, no restore
// since" hold when it started, but signed each request with the identity the keyring held at that moment.
// An old installation's keys imported while a rebuilt box's push made its temporary backup turned that
// push into an upload of the rebuilt box's own data as the old installation, replacing its only cloud copy.
// Now the push keeps the identity it started with, and stops before it sends anything once the keyring
// holds another installation; the page's and the CLI's import are refused while a push runs.
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { drServiceFor, IDENTITY_CHANGED_REASON } from '../../agent/dr/service';
import { acquireLock } from '../../agent/jobs/lock';
import { buildKeysExport, Keyring } from '../../agent/keys/keyring';
import { LastRestoreStore } from '../../agent/restore/last-restore';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment, type TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { pushViaApi, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
/** The old installation: it pushed the cloud copy that must survive. */
let old: TestAgent;
/**
 * Rebuilt boxes, each with its own sample data and no backup: a push makes a temporary one. The first
 * upload request of `page`'s and `retried`'s is cut, and retried 2 s later.
 */
let page: TestAgent;
let cli: TestAgent;
let written: TestAgent;
let retried: TestAgent;
let cliDataDir: string;
let cliEnv: NodeJS.ProcessEnv;

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  ({ dataDir: cliDataDir, env: cliEnv } = await seededEnvironment(pg, 'gem-dr-import-push-'));
  const cutOnce = () => ({
    faults: { cutUploads: { after: 0, times: 1, afterBytes: 1 } },
    tuning: { retryDelayMs: 2000 },
  });
  [old, page, cli, written, retried] = await Promise.all([
    startDrAgent(pg, cloud.url),
    startDrAgent(pg, cloud.url, cutOnce()),
    startDrAgent(pg, cloud.url, {
      dataDir: cliDataDir,
      databaseUrl: cliEnv.DATABASE_URL!,
      env: { GEM_SCRIPTS_DIR: cliEnv.GEM_SCRIPTS_DIR!, GEM_CONFIG_DIR: cliEnv.GEM_CONFIG_DIR! },
    }),
    startDrAgent(pg, cloud.url),
    startDrAgent(pg, cloud.url, cutOnce()),
  ]);
  const made = await old.request('/api/v1/backups', { method: 'POST' });
  await old.agent.jobs.waitFor(((await made.json()) as { jobId: string }).jobId);
  expect((await pushViaApi(old)).error).toBeUndefined();
});
afterAll(async () => {
  await Promise.all([old, page, cli, written, retried].map((t) => t?.close().catch(() => {})));
  await cloud?.dispose();
  await pg?.stop();
  if (cliDataDir) await rm(cliDataDir, { recursive: true, force: true });
});

/** The old installation's cloud copy is still the one it pushed (a signed HEAD of its slot). */
async function oldCopyIntact(): Promise<void> {
  expect(await drServiceFor(old.agent).checkCloudCopy()).toMatchObject({ ok: true });
}

/** Starts a push through the API; resolves with its job id. */
async function startPush(t: TestAgent): Promise<string> {
  const res = await t.request('/api/v1/dr/push', { method: 'POST' });
  expect(res.status).toBe(202);
  return ((await res.json()) as { jobId: string }).jobId;
}

/** Resolves once job `id` of `t` has entered phase `phase`. */
function inPhase(t: TestAgent, id: string, phase: string): Promise<void> {
  return new Promise((resolve) => {
    const off = t.agent.jobs.subscribe(id, (e) => {
      if (e.type !== 'update' || e.job.phase !== phase) return;
      off();
      resolve();
    });
  });
}

/**
 * What `gem-backup keys import` of the old installation's keys does to the data dir of `t`, written from
 * outside `t`'s keyring as that process writes it: the hold recorded, then the keyring file replaced.
 * `t`'s keyring notices the new file at its next use. (The CLI itself looks for a running push first;
 * this is an import whose look came just before the push started.)
 */
async function importFromAnotherProcess(t: TestAgent): Promise<void> {
  await new LastRestoreStore(t.agent.paths.lastRestore, t.agent.log).recordIdentityChange(
    new Date(),
    old.agent.keyring.installationId,
    t.agent.keyring.installationId,
  );
  const beside = await Keyring.load(t.agent.paths.keyring);
  await beside.importKeys(old.agent.keyring.toFile());
}

/** Runs `work` holding `t`'s job lock: a push started meanwhile waits for it to make its temporary backup. */
async function whileJobLockHeld<T>(t: TestAgent, work: () => Promise<T>): Promise<T> {
  const release = await acquireLock(t.agent.jobs.lockPath, 'the test');
  try {
    return await work();
  } finally {
    await release();
  }
}

describe('a keys import while a Cloud DR push runs', () => {
  it('on the page, is refused (409) until the push has ended, which goes on as this box', async () => {
    const ownId = page.agent.keyring.installationId;
    const id = await startPush(page);
    // Uploading, past its temporary backup (which held the job lock, refusing any import too).
    await inPhase(page, id, 'upload');
    const file = await buildKeysExport(old.agent.keyring.toFile(), undefined);
    const refused = await page.request('/api/v1/keys/import', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ file }),
    });
    expect(page.agent.jobs.get(id)?.endedAt).toBeUndefined();
    expect(refused.status).toBe(409);
    expect(await refused.json()).toMatchObject({
      error: {
        code: 'job_running',
        message: `a Cloud DR push is running (job ${id}): import the keys once it has ended, or cancel it first`,
      },
    });
    expect(page.agent.keyring.installationId).toBe(ownId);

    const pushed = await page.agent.jobs.waitFor(id);
    expect(pushed.error).toBeUndefined();
    expect(await cloud.listSlotObjects(ownId)).not.toEqual([]);
    await oldCopyIntact();

    const imported = await page.request('/api/v1/keys/import', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ file }),
    });
    expect(imported.status).toBe(200);
    expect(page.agent.keyring.installationId).toBe(old.agent.keyring.installationId);
  });

  it('by `gem-backup keys import` beside the service, is refused while the push runs', async () => {
    const ownId = cli.agent.keyring.installationId;
    const id = await whileJobLockHeld(cli, async () => {
      const id = await startPush(cli);
      const file = join(cliDataDir, 'old-keys.json');
      await writeFile(file, await buildKeysExport(old.agent.keyring.toFile()), { mode: 0o600 });
      const res = await runProcess(process.execPath, ['bin/gem-backup.js', 'keys', 'import', file], {
        env: cliEnv,
        cwd: process.cwd(),
      });
      expect(cli.agent.jobs.get(id)?.endedAt).toBeUndefined();
      expect(res.code).not.toBe(0);
      expect(res.stderr).toContain(
        `a Cloud DR push is running (job ${id}): import the keys once it has ended, or cancel it first`,
      );
      return id;
    });
    const pushed = await cli.agent.jobs.waitFor(id);
    expect(pushed.error).toBeUndefined();
    expect(cli.agent.keyring.installationId).toBe(ownId);
    await oldCopyIntact();
  });

  it('written by another process once the push had started: the push stops before its upload', async () => {
    const ownId = written.agent.keyring.installationId;
    const id = await whileJobLockHeld(written, async () => {
      const id = await startPush(written);
      await importFromAnotherProcess(written);
      return id;
    });
    const pushed = await written.agent.jobs.waitFor(id);
    expect(pushed.state).toBe('failed');
    expect(pushed.error).toEqual({ code: 'conflict', message: IDENTITY_CHANGED_REASON });
    expect(pushed.phase).toBe('hash');
    expect(written.agent.keyring.installationId).toBe(old.agent.keyring.installationId);
    // Sent as neither installation; the temporary backup is gone.
    expect(await cloud.listSlotObjects(ownId)).toEqual([]);
    await oldCopyIntact();
    expect(await written.agent.catalog.list()).toEqual([]);
  });

  it('written by another process while the upload is retried: the retry is not sent', async () => {
    const ownId = retried.agent.keyring.installationId;
    const id = await startPush(retried);
    await inPhase(retried, id, 'upload');
    // The first request is cut after its first byte; its retry waits 2 s.
    await importFromAnotherProcess(retried);
    const pushed = await retried.agent.jobs.waitFor(id);
    expect(pushed.state).toBe('failed');
    expect(pushed.error).toEqual({ code: 'conflict', message: IDENTITY_CHANGED_REASON });
    expect(await cloud.listSlotObjects(ownId)).toEqual([]);
    await oldCopyIntact();
  });
});
