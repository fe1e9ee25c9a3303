// Saving a history clean-up that deletes more asks first, with the cut-off date; and the page says the
// time zone the schedules run in (autoBackup.timezone), which it can set.
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  ({ pg, browser } = await startAll({ pg: () => startPostgres({ fsync: false }), browser: launchBrowser }));
  t = await startTestAgent(pg);
  served = await serveApp(t.app);
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
}, 120_000);
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

/** Opens the page afresh, signed in, once the settings are in the form. */
async function openPage(): Promise<void> {
  await openSignedIn(page, served.url);
  await page.reload();
  await expect.poll(() => page.locator('#save-settings').isEnabled()).toBe(true);
}

const status = () => page.locator('#settings-status');

describe('the settings page', () => {
  it('asks before saving a history clean-up that deletes more, naming the cut-off; Cancel saves nothing', async () => {
    expect(t.agent.settings.get().maintenance.enabled).toBe(false);
    await openPage();
    await page.getByLabel('Clean up history automatically').check();
    await page.getByLabel('Keep history for (days)').fill('1');
    const before = Date.now();
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    const confirm = page.locator('#confirm-dialog');
    await confirm.getByRole('heading', { name: 'Delete history older than 1 day?' }).waitFor();
    // The cut-off is a day before the save, as the page writes dates.
    const after = Date.now();
    const cutoff = await page.locator('#purge-cutoff').textContent();
    const written = (at: number) =>
      page.evaluate(
        `import('/ui/format.js').then((format) => format.dateTime('${new Date(at - 86_400_000).toISOString()}'))`,
      );
    expect([await written(before), await written(after)]).toContain(cutoff);
    expect(await confirm.textContent()).toContain('every history row older than that is permanently deleted');
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    await status()
      .getByText(/^Not saved: the history clean-up is as it was/)
      .waitFor();
    expect(t.agent.settings.get().maintenance.enabled).toBe(false);

    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await confirm.getByRole('button', { name: 'Save: Keep 1 Day of History' }).click();
    await status().getByText('Settings saved.').waitFor();
    expect(t.agent.settings.get().maintenance).toMatchObject({ enabled: true, retentionDays: 1 });

    // Keeping more days deletes nothing more: saved without a question.
    await page.getByLabel('Keep history for (days)').fill('30');
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await status().getByText('Settings saved.').waitFor();
    expect(t.agent.settings.get().maintenance.retentionDays).toBe(30);
  }, 90_000);

  it('asks again when a change made elsewhere makes the merged save delete more', async () => {
    await t.agent.settings.update({ maintenance: { enabled: false, retentionDays: 30 } });
    await openPage();
    // Behind the page's back, fewer days are set (the clean-up still off); the page turns it on.
    await t.agent.settings.update({ maintenance: { enabled: false, retentionDays: 2 } });
    await page.getByLabel('Clean up history automatically').check();
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    const confirm = page.locator('#confirm-dialog');
    await confirm.getByRole('button', { name: 'Save: Keep 30 Days of History' }).click();
    // Merged, the save would keep 2 days: asked again, and Cancel saves nothing.
    await confirm.getByRole('heading', { name: 'Delete history older than 2 days?' }).waitFor();
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    await status()
      .getByText(/^Not saved: the history clean-up is as it was/)
      .waitFor();
    expect(t.agent.settings.get().maintenance).toEqual({ enabled: false, retentionDays: 2 });
  }, 90_000);

  it('says the time zone the schedules run in, and sets it', async () => {
    const current = t.agent.settings.get().autoBackup;
    await t.agent.settings.update({ autoBackup: { ...current, timezone: 'Pacific/Kiritimati' } });
    await openPage();
    const schedule = page.getByLabel('Schedule');
    expect(await schedule.locator('option[value="daily"]').textContent()).toBe(
      'Daily (02:00, Pacific/Kiritimati time)',
    );
    expect(await page.locator('#maint-zone').textContent()).toBe('Pacific/Kiritimati time');
    const zone = page.getByLabel('Time zone');
    expect(await zone.inputValue()).toBe('Pacific/Kiritimati');

    await zone.fill('Europe/Berlin');
    expect(await schedule.locator('option[value="weekly"]').textContent()).toBe(
      'Weekly (Sunday 02:00, Europe/Berlin time)',
    );
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await status().getByText('Settings saved.').waitFor();
    expect(t.agent.settings.get().autoBackup.timezone).toBe('Europe/Berlin');

    // Empty: the controller's own clock again.
    await zone.fill('');
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await status().getByText('Settings saved.').waitFor();
    expect(t.agent.settings.get().autoBackup.timezone).toBeUndefined();
    expect(await schedule.locator('option[value="daily"]').textContent()).toBe(
      'Daily (02:00, controller time)',
    );
    expect(await page.locator('#maint-zone').textContent()).toBe('the controller’s time');
  }, 90_000);
});
