// The page's offsite list in a real Chromium: the Delete button of a pinned backup's copy is off, saying
// why; one pinned after the list was shown (by the CLI, another tab) is refused by the agent, the page
// shows its sentence, and the copy stays. A pinned backup whose file here was removed by hand (so the
// local list no longer shows it) is unpinned from its copy's Unpin button, and its Delete comes on.
//
// One answer of the confirmation dialog confirms one action, the one it names: Delete first asks the
// agent for the saved settings, then opens the dialog, so a click on another row's Delete meanwhile (the
// agent slow to answer) asks a second question while the first is on screen.
import { mkdir, readdir, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page, Route } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { uploadBackup } from '../../agent/offsite/index';
import { createdAtFromName } from '../../agent/offsite/transfer';
import { backupNow, filenameOf, foreignBackup } from '../offsite/helpers';
import { MidUploadFixture } from '../offsite/mid-upload';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';

const SHOTS = 'test-artifacts/screenshots';
const FOLDER = 'page-pinned';

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
    await page.screenshot({ path: `${SHOTS}/failed-offsite-pinned-delete.png` });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await m?.t.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

describe('deleting the offsite copy of a pinned backup on the page', () => {
  it('turns its Delete button off with the reason, and shows the refusal of one pinned meanwhile', async () => {
    const { agent } = m.t;
    const pinned = filenameOf(await backupNow(m.t));
    const other = filenameOf(await backupNow(m.t));
    await agent.settings.update({ offsite: { sftp: m.sftp(FOLDER) } });
    for (const name of [pinned, other]) await uploadBackup(agent, m.sftpProvider(FOLDER), name);
    await agent.catalog.updateRecord(pinned, { pinned: true });

    await openSignedIn(page, served.url);
    await sftp().getByRole('button', { name: 'List Remote Backups' }).click();
    const button = sftp().getByRole('button', { name: `Delete remote ${pinned}` });
    await expect.poll(() => button.isDisabled()).toBe(true);
    expect(await button.getAttribute('title')).toBe('Pinned: unpin it first to delete it');
    const unpinned = sftp().getByRole('button', { name: `Delete remote ${other}` });
    expect(await unpinned.isDisabled()).toBe(false);
    // Its file is here: it is unpinned from the local list, not from its copy.
    expect(
      await sftp()
        .getByRole('button', { name: `Unpin ${pinned}` })
        .count(),
    ).toBe(0);

    // Pinned after the list was drawn: the confirmed delete is refused, and the copy stays.
    await agent.catalog.updateRecord(other, { pinned: true });
    await unpinned.click();
    // Its file is here too: the question says so.
    await expect
      .poll(() => page.locator('#confirm-body').textContent())
      .toBe(
        `${other} will be deleted from SFTP server. Its copy on this controller stays.This cannot be undone.`,
      );
    await page.locator('#confirm-ok').click();
    await page
      .locator('#sftp-remote-status')
      .getByText(`${other} is pinned: unpin it first (the Unpin button, or gem-backup unpin ${other})`)
      .waitFor();
    expect((await readdir(join(sshd.root, FOLDER))).sort()).toEqual([pinned, other].sort());
  });

  it('unpins a backup whose file here was removed from its copy, after a confirmation, and its Delete comes on', async () => {
    const { agent } = m.t;
    const folder = 'page-unpin-removed';
    const removed = filenameOf(await backupNow(m.t));
    await agent.settings.update({ offsite: { sftp: m.sftp(folder) } });
    await uploadBackup(agent, m.sftpProvider(folder), removed);
    await agent.catalog.updateRecord(removed, { pinned: true });
    await unlink(agent.catalog.pathOf(removed));

    await openSignedIn(page, served.url);
    await sftp().getByRole('button', { name: 'List Remote Backups' }).click();
    const remove = sftp().getByRole('button', { name: `Delete remote ${removed}` });
    await expect.poll(() => remove.isDisabled()).toBe(true);
    expect(await remove.getAttribute('title')).toBe(
      'Pinned: unpin it first (Unpin, beside it: its file here was removed) to delete it',
    );

    // Cancelled: nothing asked of the agent, still pinned.
    const unpins: string[] = [];
    page.on('request', (request) => {
      if (request.method() === 'DELETE' && request.url().endsWith('/pin')) unpins.push(request.url());
    });
    const unpin = sftp().getByRole('button', { name: `Unpin ${removed}` });
    await unpin.click();
    await expect
      .poll(() => page.locator('#confirm-body').textContent())
      .toContain(
        `${removed} is pinned, and its file on this controller was removed. The pin is all that keeps its offsite copies.`,
      );
    await page.locator('#confirm-cancel').click();
    // A request of the page's made after the dialog closed: an unpin the cancel started was sent before it.
    await page.evaluate(() => fetch(location.href).then((response) => response.status));
    expect(unpins).toEqual([]);
    expect((await agent.catalog.pinnedNames()).has(removed)).toBe(true);

    await unpin.click();
    await page.locator('#confirm-ok').click();
    await expect.poll(() => unpins.length).toBe(1);
    // The list is drawn again from the agent: not pinned any more, so its copy may be deleted.
    await expect.poll(() => remove.isDisabled()).toBe(false);
    expect(await remove.getAttribute('title')).toBe(null);
    expect(await unpin.count()).toBe(0);
    expect((await agent.catalog.pinnedNames()).has(removed)).toBe(false);

    // Its file here was removed: the question says this may be its last copy.
    await remove.click();
    await expect
      .poll(() => page.locator('#confirm-body').textContent())
      .toBe(
        `${removed} will be deleted from SFTP server. It is not on this controller: this may be the last copy of this backup.This cannot be undone.`,
      );
    await page.locator('#confirm-ok').click();
    await expect.poll(() => m.remoteNames(folder)).toEqual([]);
  });

  it("says so when the copy is another installation's (another controller's, sharing the folder)", async () => {
    const folder = 'page-delete-foreign';
    const name = 'gem-backup-2026-02-03-040509.tar.gz';
    await mkdir(join(sshd.root, folder), { recursive: true });
    await writeFile(join(sshd.root, folder, name), await foreignBackup(createdAtFromName(name)!));
    await m.t.agent.settings.update({ offsite: { sftp: m.sftp(folder) } });

    await openSignedIn(page, served.url);
    await sftp().getByRole('button', { name: 'List Remote Backups' }).click();
    await sftp()
      .getByRole('button', { name: `Delete remote ${name}` })
      .click();
    await expect
      .poll(() => page.locator('#confirm-body').textContent())
      .toMatch(
        new RegExp(
          `^${name.replaceAll('.', '\\.')} will be deleted from SFTP server\\. It is not on this controller: this may be the last copy of this backup\\.It was made by another installation \\([0-9a-f]{5}…\\), not the one whose keys are active: another controller using this folder may count on it\\.This cannot be undone\\.$`,
        ),
      );
    await page.locator('#confirm-cancel').click();
    expect(await m.remoteNames(folder)).toEqual([name]);
  });
});

describe('the confirmation dialog', () => {
  it('answers only the question it shows when a second Delete is clicked while the first waits for the agent', async () => {
    const { agent } = m.t;
    const folder = 'page-one-question';
    const first = filenameOf(await backupNow(m.t));
    const second = filenameOf(await backupNow(m.t));
    await agent.settings.update({ offsite: { sftp: m.sftp(folder) } });
    for (const name of [first, second]) await uploadBackup(agent, m.sftpProvider(folder), name);

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
    // The second Delete has had its answer (read whole: the agent may answer it after a later request
    // of the page's, on a loaded machine) and gone on (to its own question, or to nothing).
    const secondAnswer = page.waitForResponse((response) => response.request() === held[1]!.request());
    await held[1]!.continue();
    await (await secondAnswer).finished();
    await page.unroute('**/api/v1/settings');
    await page.evaluate(() => fetch(location.href).then((response) => response.status));

    const named = await page.locator('#confirm-body strong').textContent();
    expect([first, second]).toContain(named);
    const other = named === first ? second : first;
    await page.locator('#confirm-ok').click();
    await expect.poll(() => m.remoteNames(folder)).toEqual([other]);
    // A request of the page's made after the delete's: a second delete the confirm started was sent before it.
    await page.evaluate(() => fetch(location.href).then((response) => response.status));
    expect(deletes.filter((url) => url.includes('/offsite/'))).toHaveLength(1);
    expect(deletes[0]).toContain(named);
    expect(await m.remoteNames(folder)).toEqual([other]);
    expect(await page.locator('#confirm-dialog').evaluate((dialog: HTMLDialogElement) => dialog.open)).toBe(
      false,
    );
  });
});
