// A settings load that failed (the agent restarting while the page opened) never lets Save send the
// form's defaults: Save is off and says why, with a Retry; the form fills once the agent answers; the
// save then names the revision it was loaded from, and turning Cloud DR off still asks first.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page, Request } from 'playwright-core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
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
/** Every settings PUT the page sent. */
const puts: Request[] = [];

const saved = async () => (await (await t.request('/api/v1/settings')).json()) as SettingsView;
const status = () => page.locator('#settings-status');
const saveButton = () => page.getByRole('button', { name: 'Save All Settings' });
const keepField = () => page.locator('#f-autoBackup-maxBackups');

/** The settings an owner set up: automatic backups, Cloud DR and an SFTP destination, all on. */
async function ownerSettings(): Promise<SettingsView> {
  const answer = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      autoBackup: { enabled: true, schedule: 'daily', maxBackups: 7 },
      cloudDr: { enabled: true },
      offsite: {
        sftp: {
          enabled: true,
          host: 'backup.example.net',
          port: 22,
          username: 'gem',
          remotePath: '/srv/gem',
          autoUpload: true,
          auth: { password: 'sftp-secret-1' },
        },
      },
    }),
  });
  expect(answer.status, await answer.clone().text()).toBe(200);
  return saved();
}

/** Opens the page while GET /settings cannot reach the agent (it restarts): the load fails. */
async function openWhileSettingsUnreachable(): Promise<void> {
  await page.route('**/api/v1/settings', (route) => route.abort('connectionrefused'));
  await openSignedIn(page, served.url);
  await status()
    .getByText(/^Settings could not be loaded/)
    .waitFor();
}

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg, {
    modules: [settingsModule, retentionModule, maintenanceModule, offsiteModule],
  });
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
  page.on('request', (request) => {
    if (request.method() === 'PUT' && request.url().endsWith('/api/v1/settings')) puts.push(request);
  });
}, 120_000);
beforeEach(() => {
  puts.length = 0;
});
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({ path: `${SHOTS}/failed-settings-load-${context.task.id}.png`, fullPage: true });
  await page.unrouteAll({ behavior: 'ignoreErrors' });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('the settings form when GET /settings failed at load, in a real browser', () => {
  it('keeps Save off and says why; Enter sends nothing; the form fills on its own once the agent answers', async () => {
    const before = await ownerSettings();
    await openWhileSettingsUnreachable();
    await status().scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${SHOTS}/50-settings-load-failed.png` });
    expect(await status().textContent()).toMatch(
      /^Settings could not be loaded: The agent cannot be reached\. Is it running\? Saving is off until they are/,
    );
    expect(await status().getAttribute('class')).toBe('result bad');
    expect(await saveButton().isDisabled()).toBe(true);
    await status().getByRole('button', { name: 'Retry' }).waitFor();

    // The owner fills the two empty numbers and presses Enter in one: nothing is sent.
    await keepField().fill('10');
    await page.locator('#f-maintenance-retentionDays').fill('90');
    await page.locator('#f-maintenance-retentionDays').press('Enter');
    await page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 500)));
    expect(puts).toHaveLength(0);

    // The agent answers again: the page asks on its own and the form shows the saved settings.
    await page.unroute('**/api/v1/settings');
    await expect.poll(() => keepField().inputValue(), { timeout: 20_000 }).toBe('7');
    expect(await page.locator('#f-autoBackup-enabled').isChecked()).toBe(true);
    expect(await page.locator('#f-cloudDr-enabled').isChecked()).toBe(true);
    expect(await page.locator('#f-offsite-sftp-host').inputValue()).toBe('backup.example.net');
    expect(await saveButton().isEnabled()).toBe(true);
    expect(await status().textContent()).toBe('');

    // Saved now, it names the revision the form was loaded from and keeps everything else.
    await keepField().fill('8');
    await saveButton().click();
    await status().getByText('Settings saved.').waitFor();
    expect(puts.map((request) => request.headers()['if-match'])).toEqual([`"${before.revision}"`]);
    const after = await saved();
    expect(after.autoBackup).toEqual({ ...before.autoBackup, maxBackups: 8 });
    expect(after.cloudDr.enabled).toBe(true);
    expect(after.offsite.sftp).toEqual(before.offsite.sftp);
  });

  it('Retry loads the settings; turning Cloud DR off then still asks before anything is sent', async () => {
    await ownerSettings();
    await page.reload();
    await openWhileSettingsUnreachable();
    await page.unroute('**/api/v1/settings');
    await status().getByRole('button', { name: 'Retry' }).click();
    await expect.poll(() => keepField().inputValue()).toBe('7');
    expect(await saveButton().isEnabled()).toBe(true);

    await page.getByText('Keep an encrypted copy of the latest backup in the GEM cloud').click();
    await saveButton().click();
    const confirm = page.locator('#confirm-dialog');
    await confirm.getByText('Turn off Cloud Disaster Recovery?').waitFor();
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    await status().getByText('Not saved: Cloud Disaster Recovery is still on.').waitFor();
    expect(puts).toHaveLength(0);
    expect((await saved()).cloudDr.enabled).toBe(true);
  });

  it('a save refused because the settings changed elsewhere (412) reloads them, and a later failed load turns Save off again', async () => {
    await ownerSettings();
    await page.reload();
    await expect.poll(() => keepField().inputValue()).toBe('7');
    const other = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ autoBackup: { enabled: true, schedule: 'daily', maxBackups: 12 } }),
    });
    expect(other.status).toBe(200);
    await keepField().fill('9');
    await saveButton().click();
    await status()
      .getByText(/changed elsewhere/)
      .waitFor();
    expect(await keepField().inputValue()).toBe('12');
    expect((await saved()).autoBackup.maxBackups).toBe(12);

    // The page loads the settings again (as after a restore the agent settled) and that load fails.
    await page.route('**/api/v1/settings', (route) => route.abort('connectionrefused'));
    await page.evaluate("import('/ui/settings.js').then((settings) => settings.loadSettings())");
    await status()
      .getByText(/^Settings could not be loaded/)
      .waitFor();
    expect(await saveButton().isDisabled()).toBe(true);
  });
});
