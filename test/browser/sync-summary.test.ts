// The page's Sync Now summary and a backup's auto-upload notes in a real browser when the settings change mid-job
// (a destination turned off, the number kept raised), also in the dialog the page reopens after a reload.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { call } from '../offsite/helpers';
import { MidUploadFixture } from '../offsite/mid-upload';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let sshd: SshdService;
let m: MidUploadFixture;
let served: ServedApp;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, sshd, browser } = await startAll({ pg: startPostgres, sshd: startSshd, browser: launchBrowser }));
  // Uploads held over a page reload make no progress meanwhile: the stall watchdog must outlast that.
  m = await MidUploadFixture.start(pg, sshd, { stallTimeoutMs: 60_000 });
  served = await serveApp(m.t.app);
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
});
// A failing step leaves a picture of what the page showed.
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({
      path: `${SHOTS}/failed-${context.task.name.slice(0, 40).replace(/\W+/g, '-')}.png`,
    });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await m?.t.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

/** A PUT of the settings through the API, as the page does it (here from inside the upload). */
async function putSettings(body: unknown): Promise<void> {
  const res = await call(m.t, 'PUT', '/settings', body);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
}

/** Opens the page (signing in the first time) so it loads the settings as they are now. */
async function openPage(): Promise<void> {
  await openSignedIn(page, served.url);
  await page.getByRole('heading', { name: 'Local backups' }).waitFor();
}

type Shown = { state: string | null; icon: string | null; text: string | null };

/** Waits for the job's end in the progress dialog titled `title`: its state, icon and text. */
async function jobEnd(title: string): Promise<Shown> {
  const dialog = page.locator('#progress-dialog');
  await dialog.getByRole('heading', { name: title }).waitFor();
  await dialog.getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
  return {
    state: await page.locator('#progress-state').getAttribute('data-state'),
    icon: await page.locator('#progress-icon').textContent(),
    text: await page.locator('#progress-text').textContent(),
  };
}

/** Clicks the SFTP section's Sync Now and waits for the job's end in the progress dialog: its state and text. */
async function syncFromPage(): Promise<Shown> {
  await page.locator('#offsite-sftp').getByRole('button', { name: 'Sync Now' }).click();
  return jobEnd('Syncing with SFTP server');
}

/**
 * Holds the next SFTP upload (inside it, before the file takes its name) until `release()`, then runs
 * `then` there; `held` resolves once the upload is held.
 */
function holdUpload(then: () => Promise<void>): { held: Promise<void>; release: () => void } {
  let reached = () => {};
  let release = () => {};
  const held = new Promise<void>((resolve) => {
    reached = resolve;
  });
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  m.duringSftpUpload = async () => {
    reached();
    await released;
    await then();
  };
  return { held, release };
}

/** Reloads the page while a job runs and waits until it shows that job's progress dialog (`title`) again. */
async function reloadWhileRunning(kind: string, title: string): Promise<void> {
  await page.reload();
  await page.getByRole('heading', { name: 'Local backups' }).waitFor();
  expect(
    m.t.agent.jobs
      .list()
      .filter((job) => !job.endedAt)
      .map((job) => job.kind),
  ).toEqual([kind]);
  const dialog = page.locator('#progress-dialog');
  await dialog.getByRole('heading', { name: title }).waitFor();
  expect(await page.locator('#progress-state').getAttribute('data-state')).toBe('running');
}

/**
 * Turns the SFTP server on for `folder` with auto-upload and maxBackups 1, two older copies of ours
 * there (none here): an auto-upload that gets through prunes them. Their names.
 */
async function autoUploadWithOlderCopies(folder: string): Promise<string[]> {
  const { settings } = m.t.agent;
  await settings.update({
    autoBackup: { maxBackups: 1 },
    offsite: { sftp: m.sftp(folder, { enabled: false }) },
  });
  const older = await m.olderCopiesAt([m.sftpProvider(folder)]);
  await settings.update({ offsite: { sftp: m.sftp(folder, { autoUpload: true }) } });
  return older;
}

const TURNED_OFF_SYNC =
  'Sync stopped early: 1 uploaded, 0 downloaded. The SFTP server was turned off during the job; this job uploaded nothing more and deleted nothing there.';

async function closeDialog(): Promise<void> {
  const dialog = page.locator('#progress-dialog');
  await dialog.getByRole('button', { name: 'Close' }).click();
  await expect.poll(() => dialog.isVisible()).toBe(false);
}

describe("Sync Now's summary on the page when the settings change while the job runs", () => {
  it('the SFTP server turned off mid-job: the dialog says the sync stopped early and that nothing more was uploaded or deleted there', async () => {
    const [b1, b2, b3, b4] = await m.fourBackups('page-turned-off');
    await openPage();
    m.duringSftpUpload = () =>
      putSettings({ offsite: { sftp: m.sftp('page-turned-off', { enabled: false }) } });

    const shown = await syncFromPage();
    expect(m.duringSftpUpload).toBeUndefined(); // the PUT ran inside the upload of b3
    expect(shown).toEqual({
      state: 'succeeded',
      icon: '✓',
      text: TURNED_OFF_SYNC,
    });
    await page.screenshot({ path: `${SHOTS}/40-sync-turned-off.png` });
    // What the page said is what happened: b3 landed, b4 was never sent, b1 and b2 were not pruned.
    expect(await m.remoteNames('page-turned-off')).toEqual([b1, b2, b3]);
    expect(await m.localNames()).toEqual([b1, b2, b3, b4]);
    expect((await offsiteServiceFor(m.t.agent).status()).sftp.lastSync).toMatchObject({
      ok: true,
      uploaded: [b3],
      skipped: { reason: 'turned_off' },
    });
    await closeDialog();
  });

  it('the number kept raised from 2 to 4 mid-job: the dialog says the sync completed and why nothing was pruned', async () => {
    const [b1, b2, b3, b4] = await m.fourBackups('page-raised');
    await openPage(); // the SFTP server is on again: its Sync Now is shown
    m.duringSftpUpload = () =>
      putSettings({ autoBackup: { ...m.t.agent.settings.get().autoBackup, maxBackups: 4 } });

    const shown = await syncFromPage();
    expect(m.duringSftpUpload).toBeUndefined();
    expect(shown).toEqual({
      state: 'succeeded',
      icon: '✓',
      text: 'Sync complete: 2 uploaded, 0 downloaded. The number of backups kept was raised during the job (from 2 to 4); this job deleted nothing more.',
    });
    await page.screenshot({ path: `${SHOTS}/41-sync-keep-raised.png` });
    expect(await m.remoteNames('page-raised')).toEqual([b1, b2, b3, b4]);
    expect(await m.localNames()).toEqual([b1, b2, b3, b4]);
    await closeDialog();
  });

  it('a reload while the sync runs, then the SFTP server turned off: the reopened dialog ends with the same summary', async () => {
    const [b1, b2, b3, b4] = await m.fourBackups('page-reload');
    await openPage();
    const upload = holdUpload(() =>
      putSettings({ offsite: { sftp: m.sftp('page-reload', { enabled: false }) } }),
    );
    try {
      await page.locator('#offsite-sftp').getByRole('button', { name: 'Sync Now' }).click();
      await upload.held; // b3's upload waits for the reload
      await reloadWhileRunning('sync', 'Syncing with SFTP server');
    } finally {
      upload.release();
    }

    const shown = await jobEnd('Syncing with SFTP server');
    expect(m.duringSftpUpload).toBeUndefined();
    expect(shown).toEqual({ state: 'succeeded', icon: '✓', text: TURNED_OFF_SYNC });
    await page.screenshot({ path: `${SHOTS}/42-sync-after-reload.png` });
    expect(await m.remoteNames('page-reload')).toEqual([b1, b2, b3]);
    expect(await m.localNames()).toEqual([b1, b2, b3, b4]);
    await closeDialog();
  });
});

describe("a backup's auto-upload on the page when the settings change while it uploads", () => {
  it("the SFTP server's auto-upload turned off mid-upload: the backup's dialog says it was left alone", async () => {
    const older = await autoUploadWithOlderCopies('page-auto-off');
    await openPage();
    m.duringSftpUpload = () =>
      putSettings({ offsite: { sftp: m.sftp('page-auto-off', { autoUpload: false }) } });

    await page.getByRole('button', { name: 'Create Backup' }).click();
    const shown = await jobEnd('Creating a backup');
    expect(m.duringSftpUpload).toBeUndefined();
    const [made] = await m.localNames();
    expect(shown).toEqual({
      state: 'succeeded',
      icon: '✓',
      text: `Backup created: ${made}. The SFTP server (or its auto-upload) was turned off during the job; this job uploaded nothing more and deleted nothing there.`,
    });
    await page.screenshot({ path: `${SHOTS}/43-backup-auto-upload-turned-off.png` });
    // The upload under way landed; the older copies it would have pruned are still there.
    expect(await m.remoteNames('page-auto-off')).toEqual([...older, made].sort());
    await closeDialog();
  });

  it('a reload while the auto-upload runs, then the number kept raised from 1 to 4: the reopened dialog says why nothing was pruned', async () => {
    const older = await autoUploadWithOlderCopies('page-auto-raised');
    await openPage();
    const upload = holdUpload(() =>
      putSettings({ autoBackup: { ...m.t.agent.settings.get().autoBackup, maxBackups: 4 } }),
    );
    try {
      await page.getByRole('button', { name: 'Create Backup' }).click();
      await upload.held;
      await reloadWhileRunning('backup', 'Creating a backup');
    } finally {
      upload.release();
    }

    const shown = await jobEnd('Creating a backup');
    expect(m.duringSftpUpload).toBeUndefined();
    const [made] = await m.localNames();
    expect(shown).toEqual({
      state: 'succeeded',
      icon: '✓',
      text: `Backup created: ${made}. The number of backups kept was raised during the job (from 1 to 4); this job deleted nothing more.`,
    });
    await page.screenshot({ path: `${SHOTS}/44-backup-keep-raised-after-reload.png` });
    expect(await m.remoteNames('page-auto-raised')).toEqual([...older, made].sort());
    await closeDialog();
  });
});
