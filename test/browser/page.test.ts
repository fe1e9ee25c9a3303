import { mkdir, stat } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { launchBrowser, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;

const shot = (name: string) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg);
  served = await serveApp(t.app);
  browser = await launchBrowser();
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(20_000);
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('the Backup & Restore page in a real browser, against a real agent and PostgreSQL', () => {
  it('loads without the token, refuses a wrong token and signs in with the right one', async () => {
    const response = await page.goto(served.url);
    expect(response?.status()).toBe(200);
    expect(response?.headers()['content-security-policy']).toContain("script-src 'self'");
    await expect(page.getByRole('heading', { name: 'Sign in' }).isVisible()).resolves.toBe(true);
    await shot('01-sign-in');

    await page.getByLabel('Admin token').fill('not-the-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('invalid admin token').waitFor();

    await page.getByLabel('Admin token').fill(TEST_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
  });

  it('shows the red keys banner until the keys are downloaded, then the green one that collapses and stays collapsed', async () => {
    const banner = page.locator('#keys-banner');
    await banner.getByRole('heading', { name: 'Encryption Keys Required!' }).waitFor();
    expect(await banner.getAttribute('class')).toContain('banner-danger');
    await shot('02-keys-required');

    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.getByRole('button', { name: 'Download Keys' }).click(),
    ]);
    expect(download.suggestedFilename()).toMatch(/^gem-encryption-keys-\d{4}-\d{2}-\d{2}\.json$/);
    const keysFile = JSON.parse(await streamText(await download.createReadStream()));
    expect(keysFile.installationId).toBe(t.agent.keyring.installationId);

    await banner.getByRole('heading', { name: 'Encryption Keys Backed Up' }).waitFor();
    await page.getByRole('button', { name: 'Download Again' }).waitFor();
    await shot('03-keys-backed-up');

    await page.getByRole('button', { name: 'Collapse the keys banner' }).click();
    await page.locator('#keys-pill').waitFor();
    await page.reload();
    await page.locator('#keys-pill').waitFor();
    expect(await banner.isHidden()).toBe(true);
    expect((await (await t.request('/api/v1/keys/status')).json()).bannerCollapsed).toBe(true);
  });

  it('creates a backup with a progress dialog that reaches done, lists it and downloads it by a one-time link', async () => {
    await page.getByRole('button', { name: 'Create Backup' }).click();
    const dialog = page.locator('#progress-dialog');
    await dialog.getByRole('heading', { name: 'Creating a backup' }).waitFor();
    await dialog.getByText(/Backup created: gem-backup-/).waitFor({ timeout: 60_000 });
    await shot('04-backup-done');
    await dialog.getByRole('button', { name: 'Close' }).click();

    const [backup] = await t.agent.catalog.list();
    expect(backup).toBeDefined();
    const row = page.locator(`tr[data-filename="${backup!.filename}"]`);
    await row.waitFor();

    const [download] = await Promise.all([
      page.waitForEvent('download'),
      row.getByRole('button', { name: `Download ${backup!.filename}` }).click(),
    ]);
    expect(download.suggestedFilename()).toBe(backup!.filename);
    const path = await download.path();
    expect((await stat(path)).size).toBe(backup!.size);
    await shot('05-backups-list');
  });
});

async function streamText(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks).toString('utf8');
}
