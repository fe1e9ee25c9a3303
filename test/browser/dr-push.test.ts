// The page's Push Now against the real DR Worker: it names the backup it sends, says when that backup is
// more than a day old (an unfinished upload resumed), a success says so, and a later failed push replaces it.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import type { DrFaults } from '../../agent/dr/client';
import { drServiceFor } from '../../agent/dr/service';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { pushViaApi, startDrAgent } from '../dr/helpers';
import type { TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let cloud: DrCloud;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;
/** The DR service's clock runs this far behind (ms); its upload is cut while the fault has tries left. */
let clockBehind = 0;
const faults: DrFaults = {};
const DAY = 24 * 3600_000;

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  t = await startDrAgent(pg, cloud.url, {
    timeoutMs: 5000,
    faults,
    now: () => new Date(Date.now() - clockBehind),
    tuning: { multipartThreshold: 1024, partSize: 5 * 1048576, partAttempts: 3, retryDelayMs: 10 },
  });
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await cloud?.dispose();
  await pg?.stop();
});

describe('Cloud DR Push Now in a real browser', () => {
  it('names the backup it sends, and says so when it is more than a day old (an unfinished upload resumed)', async () => {
    // While the slot is empty: a push that chose a backup as the clock stood 2.5 days ago, cut on every
    // try of its one part, keeps its upload to resume; by now its backup is three days old.
    const old = await createBackup(backupDeps(t.agent), standaloneContext(silentLogger), {
      now: new Date(Date.now() - 3 * DAY),
    });
    clockBehind = 2.5 * DAY;
    faults.cutUploads = { after: 0, times: 3, afterBytes: 1024 };
    const failed = await pushViaApi(t);
    expect(failed.error?.code, failed.error?.message).toBe('dependency_down');
    expect((await drServiceFor(t.agent).state.get()).upload?.backupName).toBe(old.filename);
    clockBehind = 0;

    await openSignedIn(page, served.url);
    const push = page.getByRole('button', { name: 'Push Now' });
    await expect.poll(() => push.isEnabled()).toBe(true);
    const dialog = page.locator('#progress-dialog');
    await push.click();
    await dialog.getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
    const pushed = (await drServiceFor(t.agent).state.get()).lastPush;
    expect(pushed).toMatchObject({ outcome: 'succeeded', backup: old.filename });
    // The size sent: the backup with the escrow header in front.
    const what = `the backup of ${await localTime(old.createdAt)} (${await pageBytes(pushed!.size!)})`;
    expect(await page.locator('#progress-title').textContent()).toBe(`Pushed ${what}`);
    expect(await page.locator('#progress-state').getAttribute('data-state')).toBe('problems');
    expect(await page.locator('#progress-text').textContent()).toBe(`In the cloud now: ${what}.`);
    expect(await page.locator('#progress-problems').textContent()).toMatch(
      /^The backup sent is more than a day old \(made .+\): the cloud holds data that old\. Check that automatic backups run\.$/,
    );
    await dialog.getByRole('button', { name: 'Close' }).click();
    await page.locator('#dr-result').getByText(`Cloud copy updated: ${what}.`).waitFor();
  });

  it('says "Cloud copy updated" after a push, and the failure instead after a later push that failed', async () => {
    await openSignedIn(page, served.url);
    const push = page.getByRole('button', { name: 'Push Now' });
    await expect.poll(() => push.isEnabled()).toBe(true);
    const result = page.locator('#dr-result');
    const dialog = page.locator('#progress-dialog');

    await push.click();
    // The only local backup is three days old: the push makes a fresh one, and says so.
    await dialog.getByText(/^In the cloud now: a backup made for this push, /).waitFor({ timeout: 90_000 });
    expect(await page.locator('#progress-state').getAttribute('data-state')).toBe('succeeded');
    expect(await page.locator('#progress-title').textContent()).toMatch(
      /^Pushed a backup made for this push, /,
    );
    await dialog.getByRole('button', { name: 'Close' }).click();
    await result.getByText(/^Cloud copy updated: a backup made for this push, .+ \(.+ KB\)\.$/).waitFor();
    expect(await result.getAttribute('class')).toBe('result ok');

    // The cloud goes away: the next push fails, and the page must not keep saying the copy was updated.
    await cloud.stop();
    await expect.poll(() => push.isEnabled()).toBe(true);
    await push.click();
    await dialog.getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
    expect(await page.locator('#progress-state').getAttribute('data-state')).toBe('failed');
    await dialog.getByRole('button', { name: 'Close' }).click();
    await expect.poll(() => result.getAttribute('class')).toBe('result bad');
    const text = (await result.textContent()) ?? '';
    expect(text).toMatch(/^Push failed: .*unreachable.*The cloud copy was not updated\.$/);
    expect(text).not.toContain('Cloud copy updated');
    await result.scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${SHOTS}/30-dr-push-failed.png` });
  });
});

/** A time as the page writes it (format.js dateTime), in the browser's locale: a string, as pageBytes. */
function localTime(iso: string): Promise<string> {
  return page.evaluate(`import('/ui/format.js').then((format) => format.dateTime(${JSON.stringify(iso)}))`);
}

/** A size as the page writes it (format.js bytes): a string, so the test's transform leaves the import alone. */
function pageBytes(n: number): Promise<string> {
  return page.evaluate(`import('/ui/format.js').then((format) => format.bytes(${n}))`);
}
