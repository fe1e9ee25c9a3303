// Save All Settings after the settings changed behind the page's back: an edit of other fields is merged, one of the same field refused and reloaded; never a silent overwrite.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { drModule } from '../../agent/http/routes/dr';
import { maintenanceModule } from '../../agent/http/routes/maintenance';
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
/** The If-Match header of every settings PUT the page sent. */
const putIfMatch: (string | undefined)[] = [];

const saved = async () => (await (await t.request('/api/v1/settings')).json()) as SettingsView;
const retentionField = () => page.locator('#f-maintenance-retentionDays');
const keepField = () => page.locator('#f-autoBackup-maxBackups');
const status = () => page.locator('#settings-status');

/** Another writer (a script, another tab) saves the days of history kept, behind the page's back. */
async function otherWriterSetsRetention(days: number): Promise<void> {
  const answer = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ maintenance: { enabled: false, retentionDays: days } }),
  });
  expect(answer.status).toBe(200);
}

/** Opens the page afresh, signed in, with the saved settings in the form. */
async function openPage(): Promise<void> {
  await openSignedIn(page, served.url);
  const days = (await saved()).maintenance.retentionDays;
  await expect.poll(() => retentionField().inputValue()).toBe(String(days));
}

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg, {
    modules: [settingsModule, retentionModule, maintenanceModule, drModule, offsiteModule],
  });
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
  page.on('request', (request) => {
    if (request.method() === 'PUT' && request.url().endsWith('/api/v1/settings'))
      putIfMatch.push(request.headers()['if-match']);
  });
}, 120_000);
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({ path: `${SHOTS}/failed-settings-stale-${context.task.id}.png`, fullPage: true });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('Save All Settings when the settings changed elsewhere, in a real browser', () => {
  it("merges an edit of another field: both saved, the page's save retried once on the current revision", async () => {
    await openPage();
    const before = await saved();
    expect(before.autoBackup.maxBackups).toBe(10);

    await otherWriterSetsRetention(45);
    const between = await saved();
    // The user, on the page loaded before that, edits another field and saves.
    await keepField().fill('7');
    putIfMatch.length = 0;
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await status()
      .getByText(/^Settings saved/)
      .waitFor();
    await status().scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${SHOTS}/40-settings-merged.png` });

    // Refused once on the revision the page had loaded, then sent again on the current one.
    expect(putIfMatch).toEqual([`"${before.revision}"`, `"${between.revision}"`]);
    expect(await status().getAttribute('class')).toBe('result ok');
    expect(await status().textContent()).toContain('together with a change made elsewhere meanwhile');
    const after = await saved();
    expect(after.maintenance.retentionDays).toBe(45);
    expect(after.autoBackup.maxBackups).toBe(7);
    expect(await retentionField().inputValue()).toBe('45');
    expect(await keepField().inputValue()).toBe('7');
  });

  it("refuses an edit of a field the other writer changed too, keeps the other writer's value and shows it; a save after that works", async () => {
    await openPage();
    const before = await saved();
    const other = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ autoBackup: { ...before.autoBackup, maxBackups: 12 } }),
    });
    expect(other.status).toBe(200);
    await keepField().fill('5');
    putIfMatch.length = 0;
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await status()
      .getByText(/changed elsewhere/)
      .waitFor();
    await status().scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${SHOTS}/41-settings-changed-elsewhere.png` });

    expect(putIfMatch).toEqual([`"${before.revision}"`]);
    expect(await status().getAttribute('class')).toBe('result bad');
    const message = (await status().textContent()) ?? '';
    expect(message).toMatch(/^Not saved: the settings were changed elsewhere/);
    expect(message).toContain('The form now shows the current settings.');
    expect(message).toContain(
      'Your unsaved changes were discarded (Backups to keep (1–100)), since Backups to keep (1–100) changed there too',
    );
    // The other writer's value stands, and the form shows it.
    const after = await saved();
    expect(after.autoBackup.maxBackups).toBe(12);
    expect(await keepField().inputValue()).toBe('12');

    // Made again, the edit saves (the page now holds the current revision).
    await keepField().fill('5');
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await status().getByText('Settings saved.').waitFor();
    expect(putIfMatch.at(-1)).toBe(`"${after.revision}"`);
    expect((await saved()).autoBackup.maxBackups).toBe(5);
  });

  it('a field set elsewhere to the value this page has is no clash (as the host key the agent pins); another value is', async () => {
    await openPage();
    const before = await saved();
    await otherWriterSetsRetention(30);
    const other = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ autoBackup: { ...before.autoBackup, maxBackups: 9 } }),
    });
    expect(other.status).toBe(200);
    // This page sets the same number the other writer saved, and the days to another value.
    await keepField().fill('9');
    await retentionField().fill('20');
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await status()
      .getByText(/^Settings saved|Not saved/)
      .waitFor();
    expect(await status().textContent()).toContain('changed there too');
    // The days clash (30 there, 20 here): refused; the same 9 alone would not have been.
    await keepField().fill('9');
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await status().getByText('Settings saved.').waitFor();
    expect((await saved()).autoBackup.maxBackups).toBe(9);
    expect((await saved()).maintenance.retentionDays).toBe(30);
    // Now only the same value as elsewhere: merged without a word about a clash.
    await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ autoBackup: { ...(await saved()).autoBackup, maxBackups: 4 } }),
    });
    await keepField().fill('4');
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await status()
      .getByText(/^Settings saved/)
      .waitFor();
    expect(await status().textContent()).toContain('together with a change made elsewhere meanwhile');
    expect((await saved()).autoBackup.maxBackups).toBe(4);
  });

  it('merges an edit made over a change of the agent itself (SettingsService.change) to another field', async () => {
    await openPage();
    await t.agent.settings.change((current) => ({
      ...current,
      maintenance: { ...current.maintenance, enabled: false, retentionDays: 60 },
    }));
    await page.getByText('Clean up history automatically').click();
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    // Turning the clean-up on asks first (with the days the form had: the merge keeps more).
    await page
      .locator('#confirm-dialog')
      .getByRole('button', { name: /^Save: Keep \d+ Days of History$/ })
      .click();
    await status()
      .getByText(/^Settings saved/)
      .waitFor();
    expect(await status().textContent()).toContain('together with a change made elsewhere meanwhile');
    expect((await saved()).maintenance).toEqual({ enabled: true, retentionDays: 60 });
    expect(await retentionField().inputValue()).toBe('60');
    expect(await page.locator('#f-maintenance-enabled').isChecked()).toBe(true);
  });
});
