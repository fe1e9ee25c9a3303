// The page's Push Now against the real DR Worker: a success says so, and a later failed push replaces it.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDrAgent } from '../dr/helpers';
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

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  t = await startDrAgent(pg, cloud.url, { timeoutMs: 5000 });
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
  it('says "Cloud copy updated." after a push, and the failure instead after a later push that failed', async () => {
    await openSignedIn(page, served.url);
    const push = page.getByRole('button', { name: 'Push Now' });
    await expect.poll(() => push.isEnabled()).toBe(true);
    const result = page.locator('#dr-result');
    const dialog = page.locator('#progress-dialog');

    await push.click();
    await dialog.getByText('The latest backup is now in the cloud.').waitFor({ timeout: 90_000 });
    await dialog.getByRole('button', { name: 'Close' }).click();
    await result.getByText('Cloud copy updated.').waitFor();
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
