// Sign-in words (page drill finding 13): the hint names where the admin token is (the agent's first
// printout, a service manager's log, the agent-token file in the data folder) and that sign-in holds
// for this tab only; a wrong token reads "Invalid admin token. Please sign in again." as a sentence.
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { launchBrowser, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
}, 180_000);
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('sign-in', () => {
  it('the hint names the token file in the data folder, the service log, and this tab', async () => {
    await page.goto(served.url);
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    const hint = (await page.locator('#sign-in-hint').textContent())?.replace(/\s+/g, ' ') ?? '';
    expect(hint).toContain('in the file agent-token in the agent’s data folder (./data, or GEM_DATA_DIR)');
    expect(hint).toContain('journalctl');
    expect(hint).toContain('this tab only');
  });

  it('a wrong token says so as a sentence, then the right one signs in', async () => {
    await page.getByLabel('Admin token').fill('not-the-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect
      .poll(() => page.locator('#sign-in-error').textContent())
      .toBe('Invalid admin token. Please sign in again.');
    await page.getByLabel('Admin token').fill(TEST_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
  });
});
