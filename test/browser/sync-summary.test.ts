// The page's Sync Now summary in a real browser when the settings change mid-job: a destination turned off, the number kept raised.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { call } from '../offsite/helpers';
import { MidUploadFixture } from '../offsite/mid-upload';
import { TEST_TOKEN } from '../services/agent';
import { launchBrowser, type ServedApp, serveApp } from '../services/browser';
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
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  m = await MidUploadFixture.start(pg, sshd);
  served = await serveApp(m.t.app);
  browser = await launchBrowser();
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

let signedIn = false;

/** Opens the page (signing in the first time) so it loads the settings as they are now. */
async function openPage(): Promise<void> {
  await page.goto(served.url);
  if (!signedIn) {
    // The token then stays in this tab's sessionStorage for the later visits.
    await page.getByLabel('Admin token').fill(TEST_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    signedIn = true;
  }
  await page.getByRole('heading', { name: 'Local backups' }).waitFor();
}

/** Clicks the SFTP section's Sync Now and waits for the job's end in the progress dialog: its state and text. */
async function syncFromPage(): Promise<{ state: string | null; icon: string | null; text: string | null }> {
  await page.locator('#offsite-sftp').getByRole('button', { name: 'Sync Now' }).click();
  const dialog = page.locator('#progress-dialog');
  await dialog.getByRole('heading', { name: 'Syncing with SFTP server' }).waitFor();
  await dialog.getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
  return {
    state: await page.locator('#progress-state').getAttribute('data-state'),
    icon: await page.locator('#progress-icon').textContent(),
    text: await page.locator('#progress-text').textContent(),
  };
}

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
      text: 'Sync stopped early: 1 uploaded, 0 downloaded. The SFTP server was turned off during the job; this job uploaded nothing more and deleted nothing there.',
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
});
