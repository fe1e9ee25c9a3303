import { randomBytes } from 'node:crypto';
import {
  chmod,
  chown,
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { SEED_COUNTS } from '../../agent/db/seed';
import { drModule } from '../../agent/http/routes/dr';
import { maintenanceModule } from '../../agent/http/routes/maintenance';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { restoreModule } from '../../agent/http/routes/restore';
import { retentionModule, settingsModule } from '../../agent/http/routes/settings';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { foreignBackup } from '../offsite/helpers';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { launchBrowser, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { type SshdService, startSshd, unixIds } from '../services/sshd';
import { startAll } from '../services/start-all';
import { tempDirForTest } from '../services/temp-dir';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let sshd: SshdService;
let browser: Browser;
let page: Page;

/** Full page, or only the viewport while a modal dialog is open (its backdrop covers the viewport). */
const shot = (name: string, fullPage = true) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage });
const gemDatabase = () => databaseUrl(t.agent.sources.conn);
let backupName = '';
let downloadedCopy = '';
let keysFilePath = '';

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, sshd, browser } = await startAll({ pg: startPostgres, sshd: startSshd, browser: launchBrowser }));
  t = await startTestAgent(pg, {
    modules: [restoreModule, settingsModule, retentionModule, maintenanceModule, drModule, offsiteModule],
  });
  served = await serveApp(t.app);
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(20_000);
});
// A failing step leaves a picture of what the page showed.
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await shot(`failed-${context.task.name.slice(0, 40).replace(/\W+/g, '-')}`);
});
afterAll(async () => {
  // The keys file one test downloads and a later one imports.
  if (keysFilePath) await rm(dirname(keysFilePath), { recursive: true, force: true });
  await browser?.close();
  await served?.close();
  await sshd?.stop();
  await t?.close();
  await pg?.stop();
});

describe('the Backup & Restore page in a real browser, against a real agent and PostgreSQL', () => {
  it('loads without the token, refuses a wrong token and signs in with the right one', async () => {
    const response = await page.goto(served.url);
    expect(response?.status()).toBe(200);
    expect(response?.headers()['content-security-policy']).toContain("script-src 'self'");
    await expect(page.getByRole('heading', { name: 'Sign in' }).isVisible()).resolves.toBe(true);
    await shot('01-sign-in');

    await page.getByLabel('Admin token').fill('not-the-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('invalid admin token').waitFor();

    await page.getByLabel('Admin token').fill(TEST_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
    // Cloud DR status comes from the agent: no endpoint is configured in this test.
    await expect.poll(() => page.locator('#dr-last').textContent()).toBe('Never');
    expect(await page.locator('#dr-next').textContent()).toBe('Not available on this controller');
  });

  it('shows the red keys banner until the keys are downloaded, then the green one that collapses and stays collapsed', async () => {
    const banner = page.locator('#keys-banner');
    await banner.getByRole('heading', { name: 'Encryption Keys Required!' }).waitFor();
    expect(await banner.getAttribute('class')).toContain('banner-danger');
    await shot('02-keys-required');

    // The dialog says what the file is; this download goes without a passphrase (a later test imports it).
    await page.getByRole('button', { name: 'Download Keys' }).click();
    await page
      .locator('#keys-dialog')
      .getByText('This file opens every backup of this installation')
      .waitFor();
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.getByRole('button', { name: 'Download Without Passphrase' }).click(),
    ]);
    expect(download.suggestedFilename()).toMatch(/^gem-encryption-keys-\d{4}-\d{2}-\d{2}\.json$/);
    keysFilePath = join(await mkdtemp(join(tmpdir(), 'gem-ui-keys-')), download.suggestedFilename());
    await download.saveAs(keysFilePath);
    const keysFile = JSON.parse(await readFile(keysFilePath, 'utf8'));
    expect(keysFile.installationId).toBe(t.agent.keyring.installationId);

    await banner.getByRole('heading', { name: 'Encryption Keys Backed Up' }).waitFor();
    await page.getByRole('button', { name: 'Download Again' }).waitFor();
    await shot('03-keys-backed-up');

    await page.getByRole('button', { name: 'Collapse the keys banner' }).click();
    await page.locator('#keys-pill').waitFor();
    await page.reload();
    await page.locator('#keys-pill').waitFor();
    expect(await banner.isHidden()).toBe(true);
    expect((await (await t.request('/api/v1/keys/status')).json()).bannerCollapsed).toBe(true);
  });

  it('creates a backup with a progress dialog that reaches done, lists it and downloads it by a one-time link', async () => {
    await page.getByRole('button', { name: 'Create Backup' }).click();
    const dialog = page.locator('#progress-dialog');
    await dialog.getByRole('heading', { name: 'Creating a backup' }).waitFor();
    await dialog.getByText(/Backup created: gem-backup-/).waitFor({ timeout: 60_000 });
    await shot('04-backup-done', false);
    await dialog.getByRole('button', { name: 'Close' }).click();

    const [backup] = await t.agent.catalog.list();
    expect(backup).toBeDefined();
    const row = page.locator(`tr[data-filename="${backup!.filename}"]`);
    await row.waitFor();

    const [download] = await Promise.all([
      page.waitForEvent('download'),
      row.getByRole('button', { name: `Download ${backup!.filename}` }).click(),
    ]);
    expect(download.suggestedFilename()).toBe(backup!.filename);
    downloadedCopy = await download.path();
    expect((await stat(downloadedCopy)).size).toBe(backup!.size);
    backupName = backup!.filename;
    await shot('05-backups-list');
  });

  it('verifies a backup from its row', async () => {
    const row = page.locator(`tr[data-filename="${backupName}"]`);
    await row.getByRole('button', { name: `Verify ${backupName}` }).click();
    const dialog = page.locator('#progress-dialog');
    await dialog.getByText('The backup is intact').waitFor({ timeout: 60_000 });
    await dialog.getByRole('button', { name: 'Close' }).click();
    await row.getByText('Verified').waitFor();
  });

  it('pins a backup from its row and says so in the list, then unpins it', async () => {
    const row = page.locator(`tr[data-filename="${backupName}"]`);
    await row.getByRole('button', { name: `Pin ${backupName}`, exact: true }).click();
    await row.locator('.tag-pin', { hasText: 'Pinned' }).waitFor();
    const pinned = (await t.agent.catalog.list()).find((b) => b.filename === backupName);
    expect(pinned?.pinned).toBe(true);
    await shot('05b-backup-pinned');
    await row.getByRole('button', { name: `Unpin ${backupName}` }).click();
    await row.getByRole('button', { name: `Pin ${backupName}`, exact: true }).waitFor();
    expect((await t.agent.catalog.list()).find((b) => b.filename === backupName)?.pinned ?? false).toBe(
      false,
    );
  });

  it('restores a backup after the data changed, behind a confirmation, and reloads with the data back', async () => {
    await withSql(gemDatabase(), async (sql) => {
      await sql`delete from macros`;
      await sql`insert into users (username, display_name, password_hash, role) values ('intruder', 'Not in the backup', 'x', 'user')`;
    });
    const row = page.locator(`tr[data-filename="${backupName}"]`);
    await row.getByRole('button', { name: `Restore ${backupName}` }).click();
    const confirm = page.locator('#confirm-dialog');
    await confirm.getByText('replaces all current data').waitFor();
    await shot('06-restore-confirm', false);
    // Cancel first: nothing happens.
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    expect(await confirm.isVisible()).toBe(false);

    await row.getByRole('button', { name: `Restore ${backupName}` }).click();
    const reloaded = page.waitForEvent('load', { timeout: 90_000 });
    await confirm.getByRole('button', { name: 'Yes, Restore' }).click();
    const progress = page.locator('#progress-dialog');
    await progress.getByRole('heading', { name: `Restoring ${backupName}` }).waitFor();
    // No restart command is set up here: the dialog says to restart GEM, and Close reloads the page.
    await progress
      .getByText('The data is restored, but GEM was not restarted: no restart command is set up')
      .waitFor({ timeout: 90_000 });
    await shot('07-restore-done', false);
    await progress.getByRole('button', { name: 'Close' }).click();
    await reloaded;
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();

    const counts = await withSql(gemDatabase(), async (sql) => ({
      macros: Number((await sql`select count(*)::int as n from macros`)[0]!.n),
      intruders: Number((await sql`select count(*)::int as n from users where username = 'intruder'`)[0]!.n),
    }));
    expect(counts).toEqual({ macros: SEED_COUNTS.macros, intruders: 0 });
    // The restore's safety backup shows in the list, tagged.
    await page.locator('tbody#backups-body .tag', { hasText: 'safety' }).first().waitFor();
  });

  it('deletes a backup behind a confirmation and uploads it back from a file', async () => {
    const row = page.locator(`tr[data-filename="${backupName}"]`);
    await row.getByRole('button', { name: `Delete ${backupName}` }).click();
    await page.locator('#confirm-dialog').getByRole('button', { name: 'Delete' }).click();
    await row.waitFor({ state: 'detached' });
    expect((await t.agent.catalog.list()).some((b) => b.filename === backupName)).toBe(false);

    const copy = join(await tempDirForTest('gem-ui-'), backupName);
    await copyFile(downloadedCopy, copy);
    await page.getByLabel('Upload a backup file').setInputFiles(copy);
    await page.getByRole('button', { name: 'Upload', exact: true }).click();
    await page.getByText(`Uploaded ${backupName}.`).waitFor();
    await row.waitFor();
    expect((await t.agent.catalog.list()).some((b) => b.filename === backupName)).toBe(true);
  });

  it('shows a settings error from the API next to its field, saves nothing, then saves a good value', async () => {
    const before = await (await t.request('/api/v1/settings')).json();
    const maxBackups = page.getByLabel('Backups to keep (1–100)');
    await maxBackups.fill('500');
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    const fieldError = page.locator('#err-f-autoBackup-maxBackups');
    await fieldError.waitFor();
    expect(await maxBackups.getAttribute('aria-invalid')).toBe('true');
    expect(await maxBackups.getAttribute('aria-describedby')).toContain('err-f-autoBackup-maxBackups');
    expect(await fieldError.textContent()).toMatch(/100/);
    await page.getByText('Not saved: correct the field marked below.').waitFor();
    await fieldError.scrollIntoViewIfNeeded();
    await shot('08-settings-field-error', false);
    expect(await (await t.request('/api/v1/settings')).json()).toEqual(before);

    await maxBackups.fill('5');
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await page.getByText('Settings saved.').waitFor();
    expect(await fieldError.count()).toBe(0);
    const after = (await (await t.request('/api/v1/settings')).json()) as {
      autoBackup: { maxBackups: number };
    };
    expect(after.autoBackup.maxBackups).toBe(5);
    await page.reload();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
    await expect.poll(() => maxBackups.inputValue()).toBe('5');
  });

  it('reveals a destination’s fields when turned on: SFTP sign-in tabs and S3 provider presets', async () => {
    const sftp = page.locator('#offsite-sftp');
    expect(await sftp.getByLabel('Host', { exact: true }).isVisible()).toBe(false);
    await sftp.getByText('Use SFTP server').click();
    await sftp.getByLabel('Host', { exact: true }).waitFor();
    expect(await sftp.getByLabel('Port').inputValue()).toBe('22');
    await sftp.getByRole('tab', { name: 'SSH key' }).click();
    await sftp.getByLabel('Private key (OpenSSH format)').waitFor();
    expect(await page.locator('#f-offsite-sftp-auth-password').isVisible()).toBe(false);
    await sftp.getByRole('tab', { name: 'Password' }).press('ArrowRight');
    await sftp.getByRole('tab', { name: 'Password' }).click();

    const s3 = page.locator('#offsite-s3');
    await s3.getByText('Use S3-compatible storage').click();
    await s3.getByLabel('Provider').selectOption('b2');
    expect(await s3.getByLabel('Endpoint URL').inputValue()).toBe('https://s3.us-west-004.backblazeb2.com');
    expect(await s3.getByLabel('Region').inputValue()).toBe('us-west-004');
    await s3.getByText('Backblaze B2: use the S3 endpoint').waitFor();
    await sftp.scrollIntoViewIfNeeded();
    await shot('11-offsite-fields', false);
    // Back off, unsaved: the next steps see the saved settings.
    await page.reload();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
  });

  it('tests an SFTP connection against a real sshd (wrong password, then right), saves it, syncs and lists the remote copies', async () => {
    const remote = join(sshd.root, 'gem-offsite');
    await mkdir(remote, { recursive: true });
    const { uid, gid } = await unixIds(sshd.passwordUser.username);
    await chown(remote, uid, gid);

    const sftp = page.locator('#offsite-sftp');
    await sftp.getByText('Use SFTP server').click();
    await sftp.getByLabel('Host', { exact: true }).fill(sshd.host);
    await sftp.getByLabel('Port').fill(String(sshd.port));
    await sftp.getByLabel('Username').fill(sshd.passwordUser.username);
    await sftp.getByLabel('Remote folder').fill(remote);
    const password = page.locator('#f-offsite-sftp-auth-password');
    const result = page.locator('#sftp-test-result');

    await password.fill('not-the-password');
    await sftp.getByRole('button', { name: 'Test Connection' }).click();
    await expect.poll(() => result.getAttribute('class'), { timeout: 30_000 }).toBe('result bad');
    expect(await result.textContent()).toMatch(/password|authenticat|sign/i);
    await result.scrollIntoViewIfNeeded();
    await shot('12-sftp-test-failed', false);

    await password.fill(sshd.passwordUser.password);
    await sftp.getByRole('button', { name: 'Test Connection' }).click();
    await expect.poll(() => result.getAttribute('class'), { timeout: 30_000 }).toBe('result ok');
    await shot('13-sftp-test-ok', false);

    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await page.getByText('Settings saved.', { exact: false }).waitFor();
    // The secret went in, and never comes back out.
    const saved = (await (await t.request('/api/v1/settings')).json()) as {
      offsite: { sftp: { enabled: boolean; auth: unknown } };
    };
    expect(saved.offsite.sftp).toMatchObject({ enabled: true, auth: { password: { set: true } } });
    expect(await password.inputValue()).toBe('');
    expect(await password.getAttribute('placeholder')).toMatch(/Saved/);

    await sftp.getByRole('button', { name: 'Sync Now' }).click();
    const dialog = page.locator('#progress-dialog');
    await dialog.getByText(/Sync complete: \d+ uploaded/).waitFor({ timeout: 60_000 });
    await dialog.getByRole('button', { name: 'Close' }).click();
    const uploaded = (await readdir(remote)).filter((name) => name.startsWith('gem-backup-'));
    expect(uploaded.length).toBeGreaterThan(0);

    // A copy another installation left in the same folder (made a month ago): its row says so.
    const otherId = randomBytes(16).toString('hex');
    const other = backupNameFor(new Date(Date.now() - 30 * 24 * 3600 * 1000));
    await writeFile(join(remote, other), await foreignBackup(new Date().toISOString(), otherId));
    try {
      await sftp.getByRole('button', { name: 'List Remote Backups' }).click();
      for (const name of uploaded) await sftp.locator(`tr[data-filename="${name}"]`).waitFor();
      const otherRow = sftp.locator(`tr[data-filename="${other}"]`);
      expect(await otherRow.locator('.filename').textContent()).toBe(
        `${other}another installation (${otherId.slice(0, 5)}…)`,
      );
      for (const name of uploaded)
        expect(await sftp.locator(`tr[data-filename="${name}"] .filename`).textContent()).toBe(name);
      await sftp.scrollIntoViewIfNeeded();
      await shot('14-sftp-remote-list', false);
      // Its restore asks first, saying whose it is (and then sends otherInstallation: the agent refuses it without).
      await otherRow.getByRole('button', { name: `Restore ${other}` }).click();
      const confirm = page.locator('#confirm-dialog');
      await confirm.waitFor();
      expect(await confirm.locator('.warning').textContent()).toBe(
        `This copy was made by another installation (${otherId.slice(0, 5)}…), not the one whose keys are active: restore it only if that is the data you want. After a keys import, restore the newest copy not marked "another installation" instead.`,
      );
      await confirm.getByRole('button', { name: 'Cancel' }).click();
      await confirm.waitFor({ state: 'hidden' });
      // Confirmed, it asks for another installation's copy explicitly (the request is only looked at here).
      const sent: unknown[] = [];
      await page.route('**/api/v1/offsite/sftp/backups/*/restore', (route) => {
        sent.push(route.request().postDataJSON());
        return route.fulfill({
          status: 409,
          contentType: 'application/json',
          body: JSON.stringify({ error: { code: 'conflict', message: 'seen by the test' } }),
        });
      });
      try {
        await otherRow.getByRole('button', { name: `Restore ${other}` }).click();
        await confirm.getByRole('button', { name: 'Yes, Restore' }).click();
        await expect.poll(() => sent).toEqual([{ otherInstallation: true, confirm: other }]);
        await page.locator('#page-error', { hasText: 'seen by the test' }).waitFor();
      } finally {
        await page.unroute('**/api/v1/offsite/sftp/backups/*/restore');
        await page.evaluate(() => {
          document.getElementById('page-error')!.hidden = true;
        });
      }
      // Ours asks as before.
      await sftp.getByRole('button', { name: `Restore ${uploaded[0]}` }).click();
      await confirm.waitFor();
      expect(await confirm.locator('.warning').count()).toBe(0);
      await confirm.getByRole('button', { name: 'Cancel' }).click();
      await confirm.waitFor({ state: 'hidden' });
    } finally {
      await rm(join(remote, other), { force: true });
    }
  });

  it('shows the steps after a backup that failed (auto-upload to an SFTP folder that refuses writes) as a problem', async () => {
    const remote = join(sshd.root, 'gem-offsite');
    const sftp = page.locator('#offsite-sftp');
    await sftp.getByText('Upload every new backup automatically').click();
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await page.getByText('Settings saved.', { exact: false }).waitFor();
    const saved = (await (await t.request('/api/v1/settings')).json()) as {
      offsite: { sftp: { autoUpload: boolean } };
    };
    expect(saved.offsite.sftp.autoUpload).toBe(true);
    // The SFTP user may read the folder but not write to it: the upload after the backup fails.
    await chmod(remote, 0o555);
    try {
      await page.getByRole('button', { name: 'Create Backup' }).click();
      const dialog = page.locator('#progress-dialog');
      await dialog.getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
      expect(await dialog.locator('#progress-state').getAttribute('data-state')).toBe('problems');
      expect(await dialog.locator('#progress-icon').textContent()).toBe('!');
      expect(await dialog.locator('#progress-text').textContent()).toMatch(
        /^Backup created: gem-backup-.*The backup is good, but a step after it failed:$/,
      );
      const problems = dialog.locator('#progress-problems li');
      expect(await problems.count()).toBe(1);
      expect(await problems.first().textContent()).toMatch(
        /^Automatic offsite upload failed: SFTP server: \S/,
      );
      await shot('15-backup-follow-up-failed', false);
      await dialog.getByRole('button', { name: 'Close' }).click();
    } finally {
      await chmod(remote, 0o755);
      // A failure above must not leave the dialog covering the page for the next steps.
      await page.evaluate(() => {
        for (const open of document.querySelectorAll('dialog[open]')) (open as HTMLDialogElement).close();
      });
    }
    await sftp.getByText('Upload every new backup automatically').click();
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await page.getByText('Settings saved.', { exact: false }).waitFor();
  });

  it('runs database maintenance only with the saved days, behind a confirmation, and shows the total and per-table counts', async () => {
    const count = () =>
      withSql(gemDatabase(), async (sql) => {
        const [row] = await sql`select (select count(*) from attribute_history)::int as a,
          (select count(*) from request_history)::int as r, (select count(*) from access_log)::int as l`;
        return {
          attributeHistory: row!.a as number,
          requestHistory: row!.r as number,
          accessLog: row!.l as number,
        };
      });
    const before = await count();
    const savedDays = (
      (await (await t.request('/api/v1/settings')).json()) as {
        maintenance: { retentionDays: number };
      }
    ).maintenance.retentionDays;
    const days = page.getByLabel('Keep history for (days)');
    const run = page.getByRole('button', { name: 'Run Maintenance Now' });
    const result = page.locator('#maintenance-result');
    const confirm = page.locator('#confirm-dialog');
    expect(await days.inputValue()).toBe(String(savedDays));

    // A different, unsaved number: nothing runs (the run would use the saved one), the page says to save first.
    await days.fill(String(savedDays + 275));
    await run.click();
    await result.getByText('Save All Settings first').waitFor();
    expect(await result.textContent()).toContain(`${savedDays + 275} days`);
    expect(await result.textContent()).toContain(`saved setting is ${savedDays} days`);
    expect(await result.getAttribute('class')).toBe('result bad');
    expect(await confirm.isVisible()).toBe(false);
    await result.scrollIntoViewIfNeeded();
    await shot('09a-maintenance-unsaved-days', false);
    expect(await count()).toEqual(before);

    // The saved number: a confirmation naming the days and what is deleted, Cancel focused; Cancel deletes nothing.
    await days.fill(String(savedDays));
    await run.click();
    await confirm.getByRole('heading', { name: 'Delete old history now?' }).waitFor();
    await confirm.getByText(`older than ${savedDays} days (the saved setting)`, { exact: false }).waitFor();
    await confirm.getByText('attribute history, request history and access log', { exact: false }).waitFor();
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('confirm-cancel');
    await shot('09b-maintenance-confirm', false);
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    await result.getByText('Maintenance not run: nothing was deleted.').waitFor();
    expect(await confirm.isVisible()).toBe(false);
    expect(await count()).toEqual(before);

    await run.click();
    await confirm.getByRole('button', { name: `Delete History Older Than ${savedDays} Days` }).click();
    await result.getByText(/Deleted [\d,]+ old rows/).waitFor({ timeout: 60_000 });
    const after = await count();
    const gone = {
      attributeHistory: before.attributeHistory - after.attributeHistory,
      requestHistory: before.requestHistory - after.requestHistory,
      accessLog: before.accessLog - after.accessLog,
    };
    expect(gone.attributeHistory).toBeGreaterThan(0);
    for (const [table, n] of Object.entries(gone)) {
      expect(await result.locator(`li[data-table="${table}"] strong`).textContent()).toBe(
        n.toLocaleString('en-US'),
      );
    }
    const total = gone.attributeHistory + gone.requestHistory + gone.accessLog;
    await result.getByText(`Deleted ${total.toLocaleString('en-US')} old rows.`).waitFor();
    await result.scrollIntoViewIfNeeded();
    await shot('09-maintenance-result', false);
  });

  it('checks a keys file on the newest backup without importing it', async () => {
    await page.getByText('Import keys from a previous installation').click();
    const form = page.locator('#import-keys-form');
    const result = page.locator('#import-result');
    const check = form.getByRole('button', { name: 'Check Keys File' });
    await check.click();
    expect(await page.locator('#import-file-error').textContent()).toBe('Choose the keys file to check.');

    // A backup file is not a keys file: the API's message, and no confirmation asked (nothing is imported).
    await form.getByLabel('Keys file (.json)').setInputFiles(downloadedCopy);
    await check.click();
    await expect.poll(() => result.getAttribute('class')).toBe('result bad');
    expect(await result.textContent()).toMatch(/keys file/i);
    expect(await page.locator('#confirm-dialog').isVisible()).toBe(false);

    const newest = (await t.agent.catalog.list())[0]!.filename;
    await form.getByLabel('Keys file (.json)').setInputFiles(keysFilePath);
    await check.click();
    await result.getByText(`These keys open ${newest}: every chunk and checksum verified.`).waitFor();
    expect(await result.getAttribute('class')).toBe('result ok');
    expect(await page.locator('#confirm-dialog').isVisible()).toBe(false);
  });

  it('imports keys from a file after a warning; a file that is not a keys file is said at once, without asking', async () => {
    const form = page.locator('#import-keys-form');
    const importButton = form.getByRole('button', { name: 'Import Keys' });
    const fieldError = page.locator('#import-file-error');
    const activeBefore = t.agent.keyring.activeKey.id;
    // A backup file (not JSON), then JSON that is not a keys file: said at the field, no "Replace the active keys?".
    const notKeys = join(dirname(keysFilePath), 'settings.json');
    await writeFile(notKeys, JSON.stringify({ retention: { keep: 7 } }));
    for (const [file, words] of [
      [downloadedCopy, 'This is not a GEM encryption keys file (it is not JSON).'],
      [notKeys, 'This is not a GEM encryption keys file. Choose the gem-encryption-keys-'],
    ] as const) {
      await form.getByLabel('Keys file (.json)').setInputFiles(file);
      await importButton.click();
      await fieldError.getByText(words).waitFor();
      expect(await form.getByLabel('Keys file (.json)').getAttribute('aria-invalid')).toBe('true');
      expect(await page.locator('#confirm-dialog').isVisible()).toBe(false);
    }
    expect(t.agent.keyring.activeKey.id).toBe(activeBefore);

    // A file that looks like one but that the agent refuses: asked first, then the API's message.
    const corrupt = join(dirname(keysFilePath), 'keyring.json');
    await writeFile(corrupt, JSON.stringify({ format: 'gem-keyring' }));
    await form.getByLabel('Keys file (.json)').setInputFiles(corrupt);
    await importButton.click();
    await page.locator('#confirm-dialog').getByRole('button', { name: 'Yes, Import Keys' }).click();
    const result = page.locator('#import-result');
    await expect.poll(() => result.getAttribute('class')).toBe('result bad');
    expect(await result.textContent()).toMatch(/keyring\.json is corrupt: /i);
    expect(await fieldError.textContent()).toBe('');
    expect(t.agent.keyring.activeKey.id).toBe(activeBefore);

    await form.getByLabel('Keys file (.json)').setInputFiles(keysFilePath);
    await form.getByRole('button', { name: 'Import Keys' }).click();
    await page.locator('#confirm-dialog').getByText('replace the active keys', { exact: false }).waitFor();
    await page.locator('#confirm-dialog').getByRole('button', { name: 'Yes, Import Keys' }).click();
    await result.getByText(/Keys imported\. Active key: /).waitFor();
    expect(await result.getAttribute('class')).toBe('result ok');
    await shot('10-keys-imported');
  });

  it('signs out (the token leaves session storage) and goes back to sign-in on any 401', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    expect(await page.locator('#app').isHidden()).toBe(true);

    // A token that stops working (e.g. changed on the agent) sends the page back to sign-in.
    await page.evaluate(() => sessionStorage.setItem('gem-backup-token', 'a-stale-token'));
    await page.reload();
    await page.getByText('invalid admin token').waitFor();
    expect(await page.evaluate(() => sessionStorage.getItem('gem-backup-token'))).toBeNull();

    // Signed in, then the token gone from this tab (signed out elsewhere): the next call's 401 says
    // so in words, not the agent's "missing admin token (Authorization: Bearer …)".
    await page.getByLabel('Admin token').fill(TEST_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
    await page.evaluate(() => sessionStorage.removeItem('gem-backup-token'));
    // The next call: this save, or a background refresh (the status panel) that gets there first.
    await page.locator('#settings-form').evaluate((form: HTMLFormElement) => form.requestSubmit());
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    expect(await page.locator('#sign-in-error').textContent()).toBe(
      'You are signed out. Please sign in again.',
    );
  });

  it('a token the agent refuses is said once in its words, however many calls were on their way with it', async () => {
    await page.goto(served.url);
    await page.evaluate(() => sessionStorage.clear());
    await page.reload();
    await page.getByLabel('Admin token').fill(TEST_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
    // The token changes on the agent while three of the page's calls are on their way with the old one:
    // the first 401 sends the page to sign-in; the two after it belong to the sign-in that ended.
    // (A string: vitest would rewrite an import() written here, which runs in the page.)
    const settled = await page.evaluate(`(async () => {
      sessionStorage.setItem('gem-backup-token', 'a-token-the-agent-changed');
      const { api } = await import('/ui/api.js');
      const calls = await Promise.allSettled([api('/backups'), api('/settings'), api('/keys')]);
      return calls.map((call) => (call.status === 'rejected' ? call.reason.status : 'answered'));
    })()`);
    expect(settled).toEqual([401, 401, 401]);
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    expect(await page.locator('#sign-in-error').textContent()).toBe(
      'Invalid admin token. Please sign in again.',
    );
  });
});
