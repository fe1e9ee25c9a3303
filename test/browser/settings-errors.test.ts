// Settings errors on the page (page drill findings 10, 12): every invalid field is marked at once, in
// a sentence that says what to enter; a field's error goes once it is edited; a save the agent never
// answers ends after 30 s saying the outcome is unknown, with Save usable again.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page, Route } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { retentionModule, settingsModule } from '../../agent/http/routes/settings';
import type { SettingsView } from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];

const saved = async () => (await (await t.request('/api/v1/settings')).json()) as SettingsView;
const status = () => page.locator('#settings-status');
const saveButton = () => page.getByRole('button', { name: 'Save All Settings' });
const errorOf = (id: string) => page.locator(`#err-${id}`);

async function openPage(): Promise<void> {
  await openSignedIn(page, served.url);
  const keep = (await saved()).autoBackup.maxBackups;
  await expect.poll(() => page.locator('#f-autoBackup-maxBackups').inputValue()).toBe(String(keep));
  await expect.poll(() => saveButton().isEnabled()).toBe(true);
}

/** Turns a destination on (its fields then show). */
async function turnOn(provider: string) {
  const box = page.locator(`#f-offsite-${provider}-enabled`);
  if (!(await box.isChecked())) await box.check();
}

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule, retentionModule, offsiteModule] });
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (error) => pageErrors.push(error.message));
}, 180_000);
afterEach(async (context) => {
  expect(pageErrors).toEqual([]);
  if (context.task.result?.state === 'fail')
    await page.screenshot({ path: `${SHOTS}/failed-settings-errors-${context.task.id}.png`, fullPage: true });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('field errors', () => {
  it('three destinations on and empty: every missing field is marked at once, in words; nothing saved', async () => {
    await openPage();
    const before = await saved();
    for (const provider of ['sftp', 's3', 'smb']) await turnOn(provider);
    await saveButton().click();
    await errorOf('f-offsite-sftp-host').waitFor();
    // SFTP host, S3 bucket, SMB host and share: all of them, not only the first.
    for (const [id, words] of [
      ['f-offsite-sftp-host', 'Enter the server’s host name or IP address.'],
      ['f-offsite-s3-bucket', 'Enter the bucket’s name.'],
      ['f-offsite-smb-host', 'Enter the server’s host name or IP address.'],
      ['f-offsite-smb-share', 'Enter the share’s name, as the PC or NAS shows it.'],
    ] as const) {
      expect(await errorOf(id).textContent(), id).toBe(words);
      expect(await page.locator(`#${id}`).getAttribute('aria-invalid'), id).toBe('true');
    }
    const marked = await page.locator('#settings-form .field-error').allTextContents();
    expect(marked.length).toBeGreaterThanOrEqual(4);
    for (const text of marked) expect(text, text).toMatch(/^[A-Z].*\.$/);
    expect(await status().textContent()).toBe(`Not saved: correct the ${marked.length} fields marked below.`);
    // The focus is on the first marked field, not the last.
    expect(await page.evaluate(() => document.activeElement?.getAttribute('aria-invalid'))).toBe('true');
    await page.screenshot({ path: `${SHOTS}/settings-errors-all.png`, fullPage: true });
    expect(await saved()).toEqual(before);
  });

  it("a field's error goes once it is edited; the others stay", async () => {
    await page.locator('#f-offsite-sftp-host').fill('backup.example');
    expect(await errorOf('f-offsite-sftp-host').count()).toBe(0);
    expect(await page.locator('#f-offsite-sftp-host').getAttribute('aria-invalid')).toBeNull();
    expect((await page.locator('#f-offsite-sftp-host').getAttribute('aria-describedby')) ?? '').not.toContain(
      'err-',
    );
    expect(await errorOf('f-offsite-s3-bucket').count()).toBe(1);
    expect(await errorOf('f-offsite-smb-share').count()).toBe(1);
  });

  it('both empty numbers are marked, and a bad number reads as a sentence naming the field', async () => {
    await openPage();
    await page.locator('#f-autoBackup-maxBackups').fill('');
    await page.locator('#f-maintenance-retentionDays').fill('');
    await saveButton().click();
    await errorOf('f-maintenance-retentionDays').waitFor();
    expect(await errorOf('f-autoBackup-maxBackups').textContent()).toBe(
      'Enter a number: this setting cannot be left empty.',
    );
    expect(await status().textContent()).toBe('Not saved: correct the 2 fields marked below.');
    await page.locator('#f-autoBackup-maxBackups').fill('0');
    expect(await errorOf('f-autoBackup-maxBackups').count()).toBe(0);
    await page.locator('#f-maintenance-retentionDays').fill('90');
    await saveButton().click();
    await errorOf('f-autoBackup-maxBackups').waitFor();
    expect(await errorOf('f-autoBackup-maxBackups').textContent()).toBe(
      'Backups to keep must be at least 1.',
    );
    expect(await status().textContent()).toBe('Not saved: correct the field marked below.');
  });
});

describe('a save the agent never answers', () => {
  it('ends after 30 s: the outcome is unknown, reload to check; Save is usable again', async () => {
    // The page's own clock, moved on by the test: 30 s of the page's time without 30 s of waiting.
    await page.clock.install();
    await openPage();
    // The agent took the request and then went silent (SIGSTOP, a hang): the PUT is never answered.
    const held: Route[] = [];
    await page.route('**/api/v1/settings', (route) =>
      route.request().method() === 'PUT' ? void held.push(route) : route.continue(),
    );
    try {
      await page.locator('#f-autoBackup-maxBackups').fill('12');
      await saveButton().click();
      await expect.poll(() => status().textContent()).toBe('Saving…');
      expect(await saveButton().isDisabled()).toBe(true);
      // Still waiting at 29 s of the page's time; given up by 31 s.
      await page.clock.runFor(29_000);
      expect(await status().textContent()).toBe('Saving…');
      await page.clock.runFor(2_000);
      await status()
        .getByText('The agent did not answer; the settings may not be saved: reload the page to check.')
        .waitFor();
      expect(held.length).toBe(1);
      expect(await saveButton().isEnabled()).toBe(true);
      expect(await status().getAttribute('class')).toContain('bad');
    } finally {
      await page.unroute('**/api/v1/settings');
      for (const route of held) await route.abort().catch(() => {});
    }
  });
});
