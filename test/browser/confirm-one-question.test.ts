// The confirmation dialog in a real Chromium: one answer confirms one action, the one the dialog names.
// The offsite list's Delete first asks the agent for the saved settings, then opens the dialog: a click
// on another row's Delete meanwhile (the agent slow to answer) asks a second question while the first
// is on screen. Its Confirm must not also confirm the other one, nor confirm a backup the dialog does
// not name.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page, Route } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { uploadBackup } from '../../agent/offsite/index';
import { backupNow, filenameOf } from '../offsite/helpers';
import { MidUploadFixture } from '../offsite/mid-upload';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';

const SHOTS = 'test-artifacts/screenshots';
const FOLDER = 'page-one-question';

let pg: TestPostgres;
let sshd: SshdService;
let m: MidUploadFixture;
let served: ServedApp;
let browser: Browser;
let page: Page;

const sftp = () => page.locator('#offsite-sftp');

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, sshd, browser } = await startAll({ pg: startPostgres, sshd: startSshd, browser: launchBrowser }));
  m = await MidUploadFixture.start(pg, sshd);
  served = await serveApp(m.t.app);
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
});
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({ path: `${SHOTS}/failed-confirm-one-question.png` });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await m?.t.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

describe('the confirmation dialog', () => {
  it('answers only the question it shows when a second Delete is clicked while the first waits for the agent', async () => {
    const { agent } = m.t;
    const first = filenameOf(await backupNow(m.t));
    const second = filenameOf(await backupNow(m.t));
    await agent.settings.update({ offsite: { sftp: m.sftp(FOLDER) } });
    for (const name of [first, second]) await uploadBackup(agent, m.sftpProvider(FOLDER), name);

    await openSignedIn(page, served.url);
    await sftp().getByRole('button', { name: 'List Remote Backups' }).click();
    await sftp()
      .getByRole('button', { name: `Delete remote ${second}` })
      .waitFor();

    // The saved settings each Delete asks for first are held until both Deletes were clicked.
    const held: Route[] = [];
    await page.route('**/api/v1/settings', (route) => {
      held.push(route);
    });
    const deletes: string[] = [];
    page.on('request', (request) => {
      if (request.method() === 'DELETE') deletes.push(decodeURIComponent(request.url()));
    });
    await sftp()
      .getByRole('button', { name: `Delete remote ${first}` })
      .click();
    await expect.poll(() => held.length).toBe(1);
    await sftp()
      .getByRole('button', { name: `Delete remote ${second}` })
      .click();
    await expect.poll(() => held.length).toBe(2);

    // The first answer comes: its question is shown. Then the second's.
    await held[0]!.continue();
    await page.locator('#confirm-dialog[open]').waitFor();
    await held[1]!.continue();
    await page.unroute('**/api/v1/settings');
    // The second Delete has had its answer and gone on (to its own question, or to nothing).
    await page.evaluate(() => fetch(location.href).then((response) => response.status));

    const named = await page.locator('#confirm-body strong').textContent();
    expect([first, second]).toContain(named);
    const other = named === first ? second : first;
    await page.locator('#confirm-ok').click();
    await expect.poll(() => m.remoteNames(FOLDER)).toEqual([other]);
    // A request of the page's made after the delete's: a second delete the confirm started was sent before it.
    await page.evaluate(() => fetch(location.href).then((response) => response.status));
    expect(deletes.filter((url) => url.includes('/offsite/'))).toHaveLength(1);
    expect(deletes[0]).toContain(named);
    expect(await m.remoteNames(FOLDER)).toEqual([other]);
    expect(await page.locator('#confirm-dialog').evaluate((dialog: HTMLDialogElement) => dialog.open)).toBe(
      false,
    );
  });
});
