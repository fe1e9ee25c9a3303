// After a keys import of another installation, the page says what the import does (the installation id
// changes, DR pushes are held, this box's backups become another installation's), marks those backups in
// the local list, and restores one after saying so, with the `otherInstallation` the agent asks for.
// Before that, a backup chosen by mistake where the keys file goes (both lie in the same downloads
// folder): Check and Import say at the field that it is not a keys file, before reading it whole or
// sending it.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { buildKeysExport, Keyring } from '../../agent/keys/keyring';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;
let keysDir: string;

beforeAll(async () => {
  ({ pg, browser } = await startAll({ pg: () => startPostgres({ fsync: false }), browser: launchBrowser }));
  t = await startTestAgent(pg);
  served = await serveApp(t.app);
  keysDir = await mkdtemp(join(tmpdir(), 'gem-keys-import-'));
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
}, 120_000);
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
  if (keysDir) await rm(keysDir, { recursive: true, force: true });
});

describe('a backup chosen as the keys file', () => {
  it('is said at the field by Check and by Import; nothing is sent, the keys stay', async () => {
    // A backup of 3 MiB: past what a request body may hold.
    const backup = join(keysDir, 'gem-backup-2026-01-02-030405.tar.gz');
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

describe("this box's own backups after a keys import", () => {
  it('the import says what changes; the list marks them; Restore asks and sends otherInstallation', async () => {
    const made = await t.agent.jobs.waitFor((await startBackup(t.agent)).id);
    const own = (made.result as { backup: { filename: string } }).backup.filename;
    const ownId = t.agent.keyring.installationId;
    const other = await Keyring.loadOrCreate(join(keysDir, 'keyring.json'));
    const keysFile = join(keysDir, 'other-keys.json');
    await writeFile(keysFile, await buildKeysExport(other.toFile()));

    await openSignedIn(page, served.url);
    const row = page.locator(`tr[data-filename="${own}"]`);
    await row.waitFor();
    expect(await row.getByText(/another installation/).count()).toBe(0);

    await page.getByText('Import keys from a previous installation').click();
    await page.getByLabel('Keys file (.json)').setInputFiles(keysFile);
    await page.getByRole('button', { name: 'Import Keys' }).click();
    const confirm = page.locator('#confirm-dialog');
    await confirm.getByRole('heading', { name: 'Replace the active keys?' }).waitFor();
    const said = (await confirm.textContent()) ?? '';
    expect(said).toContain(
      `the installation id changes from ${ownId.slice(0, 5)}… to ${other.installationId.slice(0, 5)}…`,
    );
    expect(said).toContain('Cloud DR pushes are held until one of that installation’s backups is restored');
    expect(said).toContain(
      'This controller’s own backups, here and offsite, then count as another installation’s',
    );
    await confirm.getByRole('button', { name: 'Yes, Import Keys' }).click();
    await page.getByText(/^Keys imported\./).waitFor();
    expect(t.agent.keyring.installationId).toBe(other.installationId);

    // Without a reload, the list marks the box's own backup as another installation's.
    await row.getByText(`another installation (${ownId.slice(0, 5)}…)`).waitFor();
    const sent = page.waitForRequest((request) => request.url().endsWith(`/backups/${own}/restore`));
    await row.getByRole('button', { name: `Restore ${own}` }).click();
    await confirm.getByText(/This backup was made by another installation/).waitFor();
    await confirm.getByRole('button', { name: 'Yes, Restore' }).click();
    expect((await sent).postDataJSON()).toEqual({ otherInstallation: true, confirm: own });
    const dialog = page.locator('#progress-dialog');
    await dialog.getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
    expect(await page.locator('#progress-text').textContent()).toMatch(/^The data is restored/);
    const restore = t.agent.jobs.list().find((job) => job.kind === 'restore' && job.target === own);
    expect(restore?.state).toBe('succeeded');
  }, 180_000);
});
