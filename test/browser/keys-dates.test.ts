// Download Keys says what the file is and offers a passphrase (POST /keys/export), and dates on the
// page name their time zone, in a real browser (set in New York) against a real agent and PostgreSQL.
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { parseKeysExport } from '../../agent/keys/keyring';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { tempDirForTest } from '../services/temp-dir';

const SHOTS = 'test-artifacts/screenshots';
const ZONE = 'America/New_York';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;
let backup: { filename: string; createdAt: string };

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg);
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent)).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  backup = (job.result as { backup: { filename: string; createdAt: string } }).backup;
  served = await serveApp(t.app);
  browser = await launchBrowser();
  const context = await browser.newContext({
    viewport: { width: 1100, height: 900 },
    locale: 'en-US',
    timezoneId: ZONE,
  });
  page = await context.newPage();
  page.setDefaultTimeout(20_000);
  await openSignedIn(page, served.url);
  await page.getByRole('heading', { name: 'Local backups' }).waitFor();
}, 120_000);
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({ path: `${SHOTS}/failed-keys-dates-${context.task.id}.png`, fullPage: true });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('dates and the keys download on the page', () => {
  it('shows a backup’s date in the browser’s zone with the zone named', async () => {
    const cell = page.locator(`tr[data-filename="${backup.filename}"] td.date`);
    const expected = new Date(backup.createdAt).toLocaleString('en-US', {
      year: 'numeric',
      month: 'short',
      day: 'numeric',
      hour: 'numeric',
      minute: '2-digit',
      timeZone: ZONE,
      timeZoneName: 'short',
    });
    expect(expected).toMatch(/ E[SD]T$/);
    expect(await cell.textContent()).toBe(expected);
    // The schedule's hours are the controller's clock, which may not be the browser's: they say so.
    expect(await page.locator('#f-autoBackup-schedule option[value="daily"]').textContent()).toBe(
      'Daily (02:00, controller time)',
    );
  });

  it('Download Keys says what the file is, checks the passphrase, and saves a file only that passphrase opens', async () => {
    await page.getByRole('button', { name: 'Download Keys' }).click();
    const dialog = page.locator('#keys-dialog');
    await dialog.getByText('This file opens every backup of this installation').waitFor();
    await page.screenshot({ path: `${SHOTS}/70-keys-dialog.png` });
    const error = page.locator('#keys-passphrase-error');

    // Too short, then typed differently: refused at the field, nothing downloaded.
    await page.getByLabel('Passphrase (recommended)').fill('short');
    await dialog.getByRole('button', { name: 'Download With Passphrase' }).click();
    await error.getByText('Use at least 8 characters, or leave both fields empty.').waitFor();
    expect(await page.getByLabel('Passphrase (recommended)').getAttribute('aria-invalid')).toBe('true');
    await page.getByLabel('Passphrase (recommended)').fill('correct horse battery');
    await page.getByLabel('Passphrase again').fill('correct horse batery');
    await dialog.getByRole('button', { name: 'Download With Passphrase' }).click();
    await error.getByText('The two passphrases differ: type the same one twice.').waitFor();
    expect((await (await t.request('/api/v1/keys/status')).json()).downloaded).toBe(false);

    await page.getByLabel('Passphrase again').fill('correct horse battery');
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      dialog.getByRole('button', { name: 'Download With Passphrase' }).click(),
    ]);
    const path = join(await tempDirForTest('gem-ui-keys-'), download.suggestedFilename());
    await download.saveAs(path);
    await dialog.waitFor({ state: 'hidden' });
    const text = await readFile(path, 'utf8');
    // The master key is not in the file in clear; the passphrase opens it, nothing else does.
    for (const key of t.agent.keyring.toFile().masterKeys) expect(text).not.toContain(key.key);
    const opened = await parseKeysExport(text, 'correct horse battery');
    expect(opened.installationId).toBe(t.agent.keyring.installationId);
    await expect(parseKeysExport(text)).rejects.toThrow();
    await page.locator('#keys-banner').getByRole('heading', { name: 'Encryption Keys Backed Up' }).waitFor();
  });
});
