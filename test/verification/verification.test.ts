import { chown, copyFile, mkdir, open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor, createdAtFromName } from '../../agent/backup/catalog';
import { planLocalPrune } from '../../agent/backup/retention';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import { settingsModule } from '../../agent/http/routes/settings';
import { buildKeysExport, createKeyringFile } from '../../agent/keys/keyring';
import { collectMetrics } from '../../agent/metrics/collect';
import { metricsFor } from '../../agent/metrics/recorder';
import { offsiteServiceFor } from '../../agent/offsite/service';
import { backupNow, call, downloadKeys, sftpSection } from '../health/helpers';
import { foreignBackup } from '../offsite/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd, unixIds } from '../services/sshd';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let sshd: SshdService;
let t: TestAgent;
let keysFile: string;
let newest: string;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  t = await startTestAgent(pg, { modules: [settingsModule, healthModule] });
  offsiteServiceFor(t.agent, { providerOverrides: { sftp: { timeoutMs: 5000 } } });
  healthFor(t.agent, { offsiteProbeIntervalMs: 0 });
  const saved = await call(t, 'PUT', '/settings', { offsite: { sftp: sftpSection(sshd, 'gem-backups') } });
  expect(saved.status, JSON.stringify(saved.body)).toBe(200);
  keysFile = await downloadKeys(t);
  await backupNow(t);
  newest = await backupNow(t);
  // The newest backup's copy at the SFTP server, owned by its user as an upload would leave it.
  const folder = join(sshd.root, 'gem-backups');
  await mkdir(folder, { recursive: true });
  await copyFile(t.agent.catalog.pathOf(newest), join(folder, newest));
  const { uid, gid } = await unixIds(sshd.passwordUser.username);
  await chown(folder, uid, gid);
  await chown(join(folder, newest), uid, gid);
}, 120_000);

afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

async function runVerificationJob() {
  const res = await call(t, 'POST', '/health/verification/run');
  expect(res.status).toBe(202);
  return t.agent.jobs.waitFor(res.body.jobId);
}

describe('the scheduled verification', () => {
  it('verifies the newest local backup and the newest copy at the SFTP server in full', async () => {
    const job = await runVerificationJob();
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    const { results } = job.result as { results: Array<Record<string, unknown>> };
    expect(results.map((r) => [r.target, r.ok, r.check, r.filename ?? null])).toEqual([
      ['local', true, 'full', newest],
      ['sftp', true, 'full', newest],
      ['cloud', true, 'none', null],
    ]);
    const list = (await call(t, 'GET', '/backups')).body as Array<Record<string, any>>;
    const entry = list.find((b) => b.filename === newest)!;
    expect(entry.verifyResult).toBe('ok');
    expect(entry.verifiedAt).toBeTruthy();
    expect(entry.remoteVerify.sftp).toMatchObject({ verifyResult: 'ok' });
    const health = await call(t, 'GET', '/health');
    expect(health.body.areas.verification.status).toBe('ok');
  }, 60_000);

  it('records its run under the id of the job that ran it, as GET /health/verification answers', async () => {
    const job = await runVerificationJob();
    const state = (await call(t, 'GET', '/health/verification')).body;
    expect(state.lastRun).toMatchObject({ jobId: job.id, ok: true });
  }, 60_000);

  it("verifies this installation's newest copy at a destination another controller also writes to", async () => {
    // Another controller's backup, newer than ours, in the same folder: sealed with keys we do not hold.
    const theirs = backupNameFor(new Date(Date.now() + 60_000));
    const path = join(sshd.root, 'gem-backups', theirs);
    await writeFile(path, await foreignBackup(createdAtFromName(theirs)!));
    try {
      const job = await runVerificationJob();
      expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
      const state = (await call(t, 'GET', '/health/verification')).body;
      expect(state.targets.sftp).toMatchObject({ ok: true, check: 'full', filename: newest });
    } finally {
      await rm(path, { force: true });
    }
  }, 60_000);

  it("verifies this installation's newest local backup when a newer one of another installation was copied here", async () => {
    const theirs = backupNameFor(new Date(Date.now() + 60_000));
    const path = t.agent.catalog.pathOf(theirs);
    await writeFile(path, await foreignBackup(createdAtFromName(theirs)!), { mode: 0o600 });
    try {
      expect((await t.agent.catalog.list())[0]?.filename).toBe(theirs);
      const job = await runVerificationJob();
      expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
      const state = (await call(t, 'GET', '/health/verification')).body;
      expect(state.targets.local).toMatchObject({ ok: true, check: 'full', filename: newest });
    } finally {
      await rm(path, { force: true });
    }
  }, 60_000);

  it('catches a tampered remote copy (one flipped byte at the SFTP server)', async () => {
    const path = join(sshd.root, 'gem-backups', newest);
    const handle = await open(path, 'r+');
    try {
      const { size } = await handle.stat();
      const at = Math.floor(size / 2);
      const byte = Buffer.alloc(1);
      await handle.read(byte, 0, 1, at);
      byte[0] = byte[0]! ^ 0x01;
      await handle.write(byte, 0, 1, at);
    } finally {
      await handle.close();
    }
    const job = await runVerificationJob();
    expect(job.state).toBe('failed');
    expect(job.error?.message).toMatch(/sftp/);
    const state = (await call(t, 'GET', '/health/verification')).body;
    expect(state.targets.local.ok).toBe(true);
    expect(state.targets.sftp).toMatchObject({
      ok: false,
      filename: newest,
      error: { code: 'corrupt_backup' },
    });
    const list = (await call(t, 'GET', '/backups')).body as Array<Record<string, any>>;
    expect(list.find((b) => b.filename === newest)!.remoteVerify.sftp.verifyResult).toBe('failed');
    const health = (await call(t, 'GET', '/health')).body;
    expect(health.areas.verification.status).toBe('failing');
    expect(health.areas.offsite.status).toBe('failing');
    expect(health.areas.offsite.reason).toMatch(/failed verification/);
  }, 60_000);

  it('forgets the verdict of a destination once it points to another folder: the old failure fails nothing there', async () => {
    expect((await call(t, 'GET', '/health')).body.areas.verification.status).toBe('failing');
    const moved = join(sshd.root, 'gem-moved');
    await mkdir(moved, { recursive: true });
    const { uid, gid } = await unixIds(sshd.passwordUser.username);
    await chown(moved, uid, gid);
    const saved = await call(t, 'PUT', '/settings', { offsite: { sftp: sftpSection(sshd, 'gem-moved') } });
    expect(saved.status, JSON.stringify(saved.body)).toBe(200);
    // Already before the next run: the failure was of the copy in the other folder.
    const health = (await call(t, 'GET', '/health')).body;
    expect(health.areas.verification.status, health.areas.verification.reason).toBe('ok');
    expect(health.areas.offsite.destinations.sftp.lastVerified).toBeNull();
    // The next run finds nothing there to check: that is what it records, not the old failure.
    const job = await runVerificationJob();
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    const state = (await call(t, 'GET', '/health/verification')).body;
    expect(state.targets.sftp).toMatchObject({ ok: true, check: 'none', skipped: expect.any(String) });
    // Back at the folder of the tampered copy, its failure is found again.
    const back = await call(t, 'PUT', '/settings', { offsite: { sftp: sftpSection(sshd) } });
    expect(back.status, JSON.stringify(back.body)).toBe(200);
    expect((await runVerificationJob()).state).toBe('failed');
  }, 60_000);

  it('forgets the failure of a destination once it is turned off: health and metrics leave it out', async () => {
    const metricsBefore = await collectMetrics(t.agent, metricsFor(t.agent));
    expect(metricsBefore).toMatch(/gem_backup_verification_ok\{target="sftp"\} 0/);
    const off = await call(t, 'PUT', '/settings', {
      offsite: { sftp: { ...sftpSection(sshd), enabled: false } },
    });
    expect(off.status, JSON.stringify(off.body)).toBe(200);
    // Already before the next run: only copies that exist now count.
    const early = (await call(t, 'GET', '/health')).body;
    expect(early.areas.verification.status, early.areas.verification.reason).toBe('ok');
    expect(await collectMetrics(t.agent, metricsFor(t.agent))).not.toMatch(/target="sftp"/);
    const job = await runVerificationJob();
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    const state = (await call(t, 'GET', '/health/verification')).body;
    expect(state.targets.sftp).toBeUndefined();
    const health = (await call(t, 'GET', '/health')).body;
    expect(health.areas.verification.status, health.areas.verification.reason).toBe('ok');
    const metrics = await collectMetrics(t.agent, metricsFor(t.agent));
    expect(metrics).toMatch(/gem_backup_verification_ok\{target="local"\} 1/);
    expect(metrics).not.toMatch(/target="sftp"/);
  }, 60_000);

  it('forgets the failure of a copy once a run finds none there: the skip is what it records', async () => {
    const on = await call(t, 'PUT', '/settings', { offsite: { sftp: sftpSection(sshd) } });
    expect(on.status, JSON.stringify(on.body)).toBe(200);
    expect((await runVerificationJob()).state).toBe('failed');
    // The owner deletes the damaged copy at the server: the run finds nothing there to check.
    await rm(join(sshd.root, 'gem-backups', newest));
    const job = await runVerificationJob();
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    const state = (await call(t, 'GET', '/health/verification')).body;
    expect(state.targets.sftp).toMatchObject({ ok: true, check: 'none', skipped: expect.any(String) });
    const health = (await call(t, 'GET', '/health')).body;
    expect(health.areas.verification.status, health.areas.verification.reason).toBe('ok');
    expect(health.areas.offsite.reason).not.toMatch(/failed verification/);
  }, 60_000);
});

describe('the key check', () => {
  it('answers yes for this installation’s keys file, plain or under a passphrase', async () => {
    const res = await call(t, 'POST', '/keys/check', JSON.parse(keysFile));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ ok: true, canOpen: true, backup: newest, sameInstallation: true });
    const sealed = await buildKeysExport(t.agent.keyring.toFile(), 'a long passphrase');
    const withPass = await call(t, 'POST', '/keys/check', { file: sealed, passphrase: 'a long passphrase' });
    expect(withPass.body).toMatchObject({ canOpen: true });
    const wrongPass = await call(t, 'POST', '/keys/check', {
      file: sealed,
      passphrase: 'not the passphrase',
    });
    expect(wrongPass.status).toBe(422);
  });

  it('answers no, with the reason, for another installation’s keys, and imports nothing', async () => {
    const before = t.agent.keyring.toFile();
    const other = await buildKeysExport(createKeyringFile(), undefined);
    const res = await call(t, 'POST', '/keys/check', { file: other });
    expect(res.status).toBe(200);
    expect(res.body.canOpen).toBe(false);
    expect(res.body.sameInstallation).toBe(false);
    expect(res.body.reason).toMatch(/cannot open .*made with key .*other|installation/);
    expect(res.body.reason).toContain(t.agent.keyring.activeKey.id);
    expect(t.agent.keyring.toFile()).toEqual(before);
  });
});

describe('pinning', () => {
  it('pins a backup: the list says so and retention never prunes it', async () => {
    const oldest = (await t.agent.catalog.list()).at(-1)!.filename;
    const pinned = await call(t, 'POST', `/backups/${oldest}/pin`);
    expect(pinned.status).toBe(200);
    expect(pinned.body.pinned).toBe(true);
    const list = (await call(t, 'GET', '/backups')).body as Array<Record<string, any>>;
    expect(list.find((b) => b.filename === oldest)!.pinned).toBe(true);
    await call(t, 'PUT', '/settings', { autoBackup: { enabled: true, schedule: 'daily', maxBackups: 1 } });
    const plan = await planLocalPrune(t.agent);
    expect(plan.delete.map((b) => b.filename)).not.toContain(oldest);
    expect(plan.keep.map((b) => b.filename)).toContain(oldest);
    const unpinned = await call(t, 'DELETE', `/backups/${oldest}/pin`);
    expect(unpinned.body.pinned).toBeUndefined();
    expect((await planLocalPrune(t.agent)).delete.map((b) => b.filename)).toContain(oldest);
  });
});
