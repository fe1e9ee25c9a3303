// The page on a 375 px phone in a real Chromium: nothing scrolls sideways, every backup's actions reachable.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';

const SHOTS = 'test-artifacts/screenshots';
const PHONE = { width: 375, height: 812 };

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;

const shot = (name: string, fullPage = true) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage });

/** True if the box lies within the phone's width (nothing cut off at either side). */
function withinWidth(box: { x: number; width: number } | null): boolean {
  return box !== null && box.x >= 0 && box.x + box.width <= PHONE.width;
}

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg);
  // The kinds of row the list shows: a plain one, a scheduled one, one with a long label, a pinned one.
  const made: string[] = [];
  for (const options of [
    { kind: 'manual' as const },
    { kind: 'scheduled' as const },
    { kind: 'manual' as const, label: 'before the firmware upgrade of the north wing controllers' },
  ]) {
    const job = await t.agent.jobs.waitFor((await startBackup(t.agent, options)).id);
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    made.push((job.result as { backup: { filename: string } }).backup.filename);
  }
  const pin = await t.request(`/api/v1/backups/${made[0]}/pin`, { method: 'POST' });
  expect(pin.status, await pin.clone().text()).toBeLessThan(300);
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: PHONE });
  page.setDefaultTimeout(20_000);
});
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await shot(`failed-phone-${context.task.name.slice(0, 40).replace(/\W+/g, '-')}`);
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('the Backup & Restore page on a 375 px phone', () => {
  it('does not scroll sideways, and Sign out fits on the screen', async () => {
    await openSignedIn(page, served.url);
    await page.locator('#backups-body tr').nth(2).waitFor();
    await page.locator('#status-panel:not([hidden])').waitFor();
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(PHONE.width);
    expect(withinWidth(await page.getByRole('button', { name: 'Sign out' }).boundingBox())).toBe(true);
    expect(withinWidth(await page.locator('#status-panel').boundingBox())).toBe(true);
    await shot('phone-01-page');
  });

  it('shows each backup as a card whose every action is on screen without scrolling sideways', async () => {
    const rows = page.locator('#backups-body tr');
    expect(await rows.count()).toBe(3);
    for (const row of await rows.all()) {
      const name = await row.getAttribute('data-filename');
      // Each button's name is its action and the backup's name ("Restore gem-backup-…").
      for (const action of [/^Download /, /^Verify /, /^Restore /, /^(Pin|Unpin) /, /^Delete /]) {
        const button = row.getByRole('button', { name: action });
        // Up or down only, as a thumb scrolls: the button must then be on screen as it is.
        await button.evaluate((b) =>
          window.scrollBy(0, b.getBoundingClientRect().top - window.innerHeight / 2),
        );
        const box = await button.boundingBox();
        expect(withinWidth(box), `${String(action)} of ${name}: ${JSON.stringify(box)}`).toBe(true);
        expect(box!.y >= 0 && box!.y + box!.height <= PHONE.height).toBe(true);
      }
      // The values keep their names once the header row is out of sight.
      expect(
        await row.locator('td.date').evaluate((cell) => getComputedStyle(cell, '::before').content),
      ).toBe('"Created"');
    }
    // Nothing was scrolled sideways: not the page, not the list.
    expect(await page.evaluate(() => window.scrollX)).toBe(0);
    expect(await page.locator('.table-wrap').evaluate((wrap) => wrap.scrollLeft)).toBe(0);
    await rows.first().scrollIntoViewIfNeeded();
    await shot('phone-02-backup-cards', false);
  });

  it('still reaches Restore on a phone: its confirmation opens', async () => {
    const row = page.locator('#backups-body tr').last();
    await row.getByRole('button', { name: /^Restore / }).click();
    await page.locator('#confirm-dialog[open]').waitFor();
    expect(withinWidth(await page.locator('#confirm-ok').boundingBox())).toBe(true);
    await page.locator('#confirm-cancel').click();
  });
});
