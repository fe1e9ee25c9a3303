// Offsite buttons act only on the settings the form shows: with unsaved edits, Sync Now, the remote list and its actions refuse; Test Connection tests the form and says so.
import { chown, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { restoreModule } from '../../agent/http/routes/restore';
import { settingsModule } from '../../agent/http/routes/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd, unixIds } from '../services/sshd';
import { startAll } from '../services/start-all';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let sshd: SshdService;
let browser: Browser;
let page: Page;
let remote = '';

const sftp = () => page.locator('#offsite-sftp');
const password = () => page.locator('#f-offsite-sftp-auth-password');
const testResult = () => page.locator('#sftp-test-result');
const remoteStatus = () => page.locator('#sftp-remote-status');

/** The ids of the jobs the agent knows, through its API. */
async function jobIds(): Promise<string[]> {
  const jobs = (await (await t.request('/api/v1/jobs')).json()) as { id: string }[];
  return jobs.map((job) => job.id).sort();
}

/** Saves the SFTP settings through the API (another writer, or the setup), with this password. */
async function saveSftp(pass: string, extra: Record<string, unknown> = {}): Promise<void> {
  const answer = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      offsite: {
        sftp: {
          enabled: true,
          host: sshd.host,
          port: sshd.port,
          username: sshd.passwordUser.username,
          remotePath: remote,
          auth: { password: pass },
          ...extra,
        },
      },
    }),
  });
  expect(answer.status, await answer.clone().text()).toBe(200);
}

/** Opens the page afresh, signed in, with the saved settings in the form. */
async function openPage(): Promise<void> {
  await openSignedIn(page, served.url);
  await sftp().getByRole('button', { name: 'Sync Now' }).waitFor();
  await expect.poll(() => password().getAttribute('placeholder')).toMatch(/Saved/);
}

/** Clicks Test Connection and waits for its result: its class and text. */
async function testConnection(): Promise<{ kind: string | null; text: string | null }> {
  await sftp().getByRole('button', { name: 'Test Connection' }).click();
  await expect
    .poll(() => testResult().getAttribute('class'), { timeout: 30_000 })
    .toMatch(/^result (ok|bad)$/);
  return { kind: await testResult().getAttribute('class'), text: await testResult().textContent() };
}

/** Waits until the remote list's line says something other than "Loading…", and returns it. */
async function remoteLine(): Promise<{ kind: string | null; text: string }> {
  await expect.poll(() => remoteStatus().textContent()).toMatch(/^(?!Loading)./);
  return {
    kind: await remoteStatus().getAttribute('class'),
    text: (await remoteStatus().textContent()) ?? '',
  };
}

const NOT_SAVED_NOTE =
  'These are the settings in the form, not saved yet: Sync Now and the remote list use the saved ones until you press Save All Settings.';

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, sshd, browser } = await startAll({ pg: startPostgres, sshd: startSshd, browser: launchBrowser }));
  t = await startTestAgent(pg, { modules: [settingsModule, offsiteModule, restoreModule] });
  served = await serveApp(t.app);
  remote = join(sshd.root, 'gem-offsite-unsaved');
  await mkdir(remote, { recursive: true });
  const { uid, gid } = await unixIds(sshd.passwordUser.username);
  await chown(remote, uid, gid);
  const backup = await startBackup(t.agent, { kind: 'manual' });
  expect((await t.agent.jobs.waitFor(backup.id)).state).toBe('succeeded');
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
}, 180_000);
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({ path: `${SHOTS}/failed-offsite-unsaved-${context.task.id}.png`, fullPage: true });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await sshd?.stop();
  await t?.close();
  await pg?.stop();
});

describe('offsite buttons and unsaved destination settings, in a real browser against a real sshd', () => {
  it('an unsaved password: Test Connection tests it and says it is not saved; Sync Now and the list refuse and start nothing; after Save, Sync Now runs', async () => {
    await saveSftp('not-the-password');
    await openPage();
    await password().fill(sshd.passwordUser.password);

    // The test is of the form: it connects, and says these settings are not the saved ones.
    const tested = await testConnection();
    expect(tested.kind).toBe('result ok');
    expect(tested.text).toMatch(/^Connected/);
    expect(tested.text?.split(NOT_SAVED_NOTE)).toHaveLength(2); // said once

    const jobsBefore = await jobIds();
    await sftp().getByRole('button', { name: 'Sync Now' }).click();
    const refused = await remoteLine();
    expect(refused).toEqual({
      kind: 'result bad',
      text: 'Not run: Sync Now uses the saved settings, and your changes to the SFTP server (Password) are not saved yet. Press Save All Settings first, then Sync Now again.',
    });
    await sftp().scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${SHOTS}/50-sync-refused-unsaved.png` });
    expect(await page.locator('#progress-dialog').isVisible()).toBe(false);

    await sftp().getByRole('button', { name: 'List Remote Backups' }).click();
    await expect.poll(() => remoteStatus().textContent()).toMatch(/^Not run: List Remote Backups uses/);
    expect(await jobIds()).toEqual(jobsBefore);
    expect(await readdir(remote)).toEqual([]);

    // Saved, the same button runs: the job starts and uploads the backup with the password now saved.
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await page
      .locator('#settings-status')
      .getByText(/^Settings saved/)
      .waitFor();
    // The result of the test stays, without the note that no longer holds.
    expect(await testResult().textContent()).toBe(tested.text?.replace(` ${NOT_SAVED_NOTE}`, ''));
    await sftp().getByRole('button', { name: 'Sync Now' }).click();
    const dialog = page.locator('#progress-dialog');
    await dialog.getByText('Sync complete: 1 uploaded, 0 downloaded.').waitFor({ timeout: 60_000 });
    await dialog.getByRole('button', { name: 'Close' }).click();
    expect((await jobIds()).length).toBe(jobsBefore.length + 1);
    expect((await readdir(remote)).filter((name) => name.startsWith('gem-backup-'))).toHaveLength(1);
  });

  it('an unsaved host: the list says it is of the saved destination; Download, Restore and Delete refuse and change nothing; Test Connection tests the form', async () => {
    await openPage();
    await sftp().getByRole('button', { name: 'List Remote Backups' }).click();
    const [name] = await readdir(remote);
    await sftp().locator(`tr[data-filename="${name}"]`).waitFor();
    expect(await remoteLine()).toEqual({ kind: 'result', text: '1 backup at this destination.' });

    await sftp().getByLabel('Host', { exact: true }).fill('no-such-host.invalid');
    expect(await remoteLine()).toEqual({
      kind: 'result',
      text: '1 backup at the saved destination (your changes above are not saved yet).',
    });

    const jobsBefore = await jobIds();
    const localBefore = (await t.agent.catalog.list()).length;
    await sftp()
      .getByRole('button', { name: `Download ${name} to this controller` })
      .click();
    await expect
      .poll(() => remoteStatus().textContent())
      .toMatch(/^Not run: Download uses the saved settings/);
    expect(await remoteStatus().textContent()).toContain('(Host)');
    await sftp()
      .getByRole('button', { name: `Delete remote ${name}` })
      .click();
    await expect.poll(() => remoteStatus().textContent()).toMatch(/^Not run: Delete uses the saved settings/);
    await sftp()
      .getByRole('button', { name: `Restore ${name}` })
      .click();
    await expect
      .poll(() => remoteStatus().textContent())
      .toMatch(/^Not run: Restore uses the saved settings/);
    expect(await page.locator('dialog[open]').count()).toBe(0); // no confirmation was even asked
    expect(await jobIds()).toEqual(jobsBefore);
    expect(await readdir(remote)).toEqual([name]);
    expect((await t.agent.catalog.list()).length).toBe(localBefore);

    // Test Connection tests the host in the form, and says it is not the saved one.
    const tested = await testConnection();
    expect(tested.kind).toBe('result bad');
    expect(tested.text).toMatch(/[.!?…] These are the settings in the form, not saved yet: /); // its own sentence
    await sftp().scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${SHOTS}/51-offsite-unsaved-host.png` });

    // Back to the saved host: the form is the saved settings again (the line says so), and Delete runs.
    await sftp().getByLabel('Host', { exact: true }).fill(sshd.host);
    expect(await remoteLine()).toEqual({ kind: 'result', text: '1 backup at this destination.' });
    await sftp()
      .getByRole('button', { name: `Delete remote ${name}` })
      .click();
    await page.locator('#confirm-ok').click();
    await expect.poll(() => readdir(remote)).toEqual([]);
    // The page lists the destination again after the delete: its line follows once that answered.
    await expect.poll(remoteLine).toEqual({ kind: 'result', text: '0 backups at this destination.' });
  });

  it('a failed Test Connection: Save All Settings still saves, and the failed result stays until the next test', async () => {
    await openPage();
    await password().fill('still-not-the-password');
    const failed = await testConnection();
    expect(failed.kind).toBe('result bad');
    expect(failed.text).toMatch(/password|authenticat|sign|refused/i);
    expect(failed.text).toContain(NOT_SAVED_NOTE);

    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await page
      .locator('#settings-status')
      .getByText(/^Settings saved/)
      .waitFor();
    expect(await testResult().isVisible()).toBe(true);
    expect(await testResult().getAttribute('class')).toBe('result bad');
    expect(await testResult().textContent()).toBe(failed.text?.replace(` ${NOT_SAVED_NOTE}`, ''));
    await testResult().scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${SHOTS}/52-offsite-test-failed-then-saved.png` });

    // The next test replaces it (the saved settings now: no note).
    await password().fill(sshd.passwordUser.password);
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await page
      .locator('#settings-status')
      .getByText(/^Settings saved/)
      .waitFor();
    const passed = await testConnection();
    expect(passed.kind).toBe('result ok');
    expect(passed.text).not.toContain(NOT_SAVED_NOTE);
  });

  it('the saved destination changed elsewhere since the page loaded it: Sync Now refuses and starts nothing', async () => {
    await openPage();
    await saveSftp(sshd.passwordUser.password, { remotePath: join(sshd.root, 'elsewhere') });
    const jobsBefore = await jobIds();
    await sftp().getByRole('button', { name: 'Sync Now' }).click();
    // The refusal follows a read of the saved settings.
    await expect.poll(remoteLine).toEqual({
      kind: 'result bad',
      text: 'Not run: the SFTP server settings were changed elsewhere (another tab or person) since this page loaded them, and Sync Now uses the saved ones. Reload the page to see them.',
    });
    expect(await jobIds()).toEqual(jobsBefore);
  });
});
