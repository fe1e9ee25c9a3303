// The page in a real Chromium: a pinned backup's Delete button is off, saying why; one pinned after the
// list was shown (by the CLI, another tab) is refused by the agent and the page shows its sentence.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;

async function backup(): Promise<string> {
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent, { kind: 'manual' })).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return (job.result as { backup: { filename: string } }).backup.filename;
}

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg);
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.setDefaultTimeout(20_000);
});
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({ path: `${SHOTS}/failed-pinned-delete.png` });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('deleting a pinned backup on the page', () => {
  it('turns the Delete button of a pinned backup off with the reason, and shows the refusal of one pinned meanwhile', async () => {
    const pinned = await backup();
    const other = await backup();
    await t.agent.catalog.updateRecord(pinned, { pinned: true });
    await openSignedIn(page, served.url);

    const button = page
      .locator(`tr[data-filename="${pinned}"]`)
      .getByRole('button', { name: `Delete ${pinned}` });
    await expect.poll(() => button.isDisabled()).toBe(true);
    expect(await button.getAttribute('title')).toBe('Pinned: unpin it first to delete it');
    const unpinned = page
      .locator(`tr[data-filename="${other}"]`)
      .getByRole('button', { name: `Delete ${other}` });
    expect(await unpinned.isDisabled()).toBe(false);

    // Pinned after the list was drawn: the confirmed delete is refused, and nothing is deleted.
    await t.agent.catalog.updateRecord(other, { pinned: true });
    await unpinned.click();
    await page.locator('#confirm-dialog').getByRole('button', { name: 'Delete' }).click();
    await page
      .locator('#page-error')
      .getByText(`${other} is pinned: unpin it first (the Unpin button, or gem-backup unpin ${other})`)
      .waitFor();
    expect(await t.agent.catalog.exists(other)).toBe(true);
    await expect.poll(() => unpinned.isDisabled()).toBe(true);
  });
});
