// A job the page did not start (the schedule, the API, the CLI) shows in a panel that leaves the page
// usable, with how long it has run; Cancel, there and in the page's own progress dialog, always asks
// first, and focus never rests on it: Enter after signing in no longer cancels a running backup.
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { launchBrowser, type ServedApp, serveApp } from '../services/browser';
import { holdTableLock, startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;
/** The table lock that keeps a backup's dump waiting; let go at each test's end. */
let unblock: (() => Promise<void>) | undefined;

beforeAll(async () => {
  ({ pg, browser } = await startAll({ pg: () => startPostgres({ fsync: false }), browser: launchBrowser }));
  t = await startTestAgent(pg);
  served = await serveApp(t.app);
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
}, 120_000);
afterEach(async () => {
  await unblock?.();
  unblock = undefined;
  for (const job of t.agent.jobs.active()) await t.agent.jobs.waitFor(job.id);
});
afterAll(async () => {
  await unblock?.();
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

/** A backup started through the API (not by the page), held in its dump step; its id. */
async function backupStartedElsewhere(): Promise<string> {
  unblock = await holdTableLock(t.agent.databaseUrl, 'users');
  const { jobId } = (await (await t.request('/api/v1/backups', { method: 'POST' })).json()) as {
    jobId: string;
  };
  return jobId;
}

const jobState = (id: string) => `${t.agent.jobs.get(id)?.state}/${t.agent.jobs.get(id)?.phase}`;

describe('a running job in the page', () => {
  it('one started elsewhere: a panel, not a modal; Enter and Esc leave it running; Cancel asks first', async () => {
    const id = await backupStartedElsewhere();
    await page.goto(served.url);
    await page.getByLabel('Admin token').fill(TEST_TOKEN);
    await page.keyboard.press('Enter');
    const panel = page.locator('#job-panel');
    await panel.getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    expect(await panel.getByRole('heading').textContent()).toBe('Creating a backup');
    expect(await panel.evaluate((node) => node.matches(':modal'))).toBe(false);
    expect(await page.locator('#progress-dialog').isVisible()).toBe(false);
    // show() puts the focus on the panel's first button: the panel gives it back, Cancel never has it.
    expect(await page.evaluate(() => document.activeElement?.id ?? '')).not.toMatch(/^job-panel/);
    await page.keyboard.press('Enter');
    await page.keyboard.press('Escape');
    await page.keyboard.press('Enter');
    // How long it has run, redrawn as it goes on.
    await panel.getByText(/^Running for \d+ s \(started .+\)\.$/).waitFor();
    // The page stays usable: a control outside the panel takes a click.
    await page.getByRole('button', { name: 'Create Backup' }).click({ trial: true });
    expect(jobState(id)).toBe('running/dump');

    const confirm = page.locator('#confirm-dialog');
    await panel.getByRole('button', { name: 'Cancel' }).click();
    await confirm.getByRole('heading', { name: 'Cancel the running backup?' }).waitFor();
    // The safe choice has the focus: Enter keeps the backup running.
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe('Keep It Running');
    await page.keyboard.press('Enter');
    await confirm.waitFor({ state: 'hidden' });
    expect(jobState(id)).toBe('running/dump');

    await panel.getByRole('button', { name: 'Cancel' }).click();
    await confirm.getByRole('button', { name: 'Yes, Cancel It' }).click();
    // Taken: cancelling, or already cancelled (the dump waiting on the lock stops at once).
    await expect.poll(() => jobState(id)).toMatch(/^(running\/cancelling|cancelled\/.*)$/);
    await unblock?.();
    unblock = undefined;
    await panel.getByRole('button', { name: 'Close' }).waitFor({ timeout: 60_000 });
    expect(t.agent.jobs.get(id)?.state).toBe('cancelled');
    await panel.getByRole('button', { name: 'Close' }).click();
    await panel.waitFor({ state: 'hidden' });
  }, 120_000);

  it('one the page started: the dialog has the focus, not Cancel; Enter does not cancel it', async () => {
    unblock = await holdTableLock(t.agent.databaseUrl, 'users');
    const dialog = page.locator('#progress-dialog');
    await page.getByRole('button', { name: 'Create Backup' }).click();
    await dialog.getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('progress-dialog');
    await page.keyboard.press('Enter');
    await page.keyboard.press('Escape');
    await dialog.getByText(/^Running for \d+ s/).waitFor();
    const [job] = t.agent.jobs.active();
    expect(jobState(job!.id)).toBe('running/dump');
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await page.locator('#confirm-dialog').getByRole('button', { name: 'Keep It Running' }).click();
    expect(jobState(job!.id)).toBe('running/dump');
    // The answer gives the focus back to the dialog, not to Cancel.
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('progress-dialog');
    await unblock();
    unblock = undefined;
    await dialog.getByText(/^Backup created: gem-backup-/).waitFor({ timeout: 60_000 });
    await dialog.getByRole('button', { name: 'Close' }).click();
  }, 120_000);
});
