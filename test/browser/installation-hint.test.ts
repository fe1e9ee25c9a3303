// The page's installation line tells the owner to keep the id elsewhere: on a new controller it alone recovers the DR backup.
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  served = await serveApp(t.app);
  browser = await launchBrowser();
}, 60_000);
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('the installation id on the page', () => {
  it('says beside the id to keep it off the controller, because it recovers the DR backup', async () => {
    const page = await browser.newPage();
    page.setDefaultTimeout(20_000);
    await openSignedIn(page, served.url);
    const line = page.locator('#installation');
    await expect.poll(() => line.isVisible()).toBe(true);
    expect(await line.textContent()).toBe(
      `Installation ${t.agent.keyring.installationId} (keep this id off the controller: it recovers the DR backup)`,
    );
  }, 60_000);
});
