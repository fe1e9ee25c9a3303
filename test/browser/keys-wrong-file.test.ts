// A backup chosen by mistake where the keys file goes (both lie in the same downloads folder): Check
// and Import say at the field that it is not a keys file, before reading it whole or sending it.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
let dir: string;

beforeAll(async () => {
  ({ pg, browser } = await startAll({ pg: () => startPostgres({ fsync: false }), browser: launchBrowser }));
  t = await startTestAgent(pg);
  served = await serveApp(t.app);
  dir = await mkdtemp(join(tmpdir(), 'gem-keys-wrong-file-'));
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
}, 120_000);
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('a backup chosen as the keys file', () => {
  it('is said at the field by Check and by Import; nothing is sent, the keys stay', async () => {
    // A backup of 3 MiB: past what a request body may hold.
    const backup = join(dir, 'gem-backup-2026-01-02-030405.tar.gz');
    await writeFile(backup, Buffer.alloc(3 * 1024 * 1024, 7));
    const activeKey = t.agent.keyring.activeKey.id;
    const sent: string[] = [];
    page.on('request', (request) => {
      if (/\/keys\/(check|import)$/.test(request.url())) sent.push(request.url());
    });
    await openSignedIn(page, served.url);
    await page.getByText('Import keys from a previous installation').click();
    await page.getByLabel('Keys file (.json)').setInputFiles(backup);
    const fieldError = page.locator('#import-file-error');
    const said =
      /^This is not a GEM encryption keys file \(it is 3\.0 MB; a keys file is a few KB\)\. Choose the gem-encryption-keys-….json file you downloaded\.$/;
    await page.getByRole('button', { name: 'Check Keys File' }).click();
    await expect.poll(() => fieldError.textContent()).toMatch(said);
    expect(await page.locator('#import-result').textContent()).toBe('');
    await fieldError.evaluate((node) => {
      node.textContent = '';
    });
    await page.getByRole('button', { name: 'Import Keys' }).click();
    await expect.poll(() => fieldError.textContent()).toMatch(said);
    expect(await page.getByLabel('Keys file (.json)').getAttribute('aria-invalid')).toBe('true');
    expect(sent).toEqual([]);
    expect(t.agent.keyring.activeKey.id).toBe(activeKey);
  });
});
