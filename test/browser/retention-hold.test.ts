// The page in a real Chromium while pruning is held (a damaged backup records file set aside): the
// warning above the backups list, and its Resume Pruning button that ends the hold.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import type { Job } from '../../agent/jobs/runner';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;

async function backup(): Promise<Job> {
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent, { kind: 'manual' })).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return job;
}
const filenameOf = (job: Job) => (job.result as { backup: { filename: string } }).backup.filename;
const heldNow = async () =>
  ((await (await t.request('/api/v1/retention/hold')).json()) as { held: { message: string } | null }).held;

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
    await page.screenshot({ path: `${SHOTS}/failed-retention-hold.png` });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('pruning held on the page', () => {
  it('shows the hold above the backups list; Resume pruning ends it and the next backup prunes again', async () => {
    const put = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ autoBackup: { enabled: true, schedule: 'daily', maxBackups: 1 } }),
    });
    expect(put.status).toBe(200);
    const first = filenameOf(await backup());
    await t.agent.catalog.updateRecord(first, { pinned: true });
    // Damaged from outside (a torn copy): the next read sets it aside and holds pruning.
    const records = t.agent.paths.backupRecords;
    await writeFile(records, (await readFile(records)).subarray(0, 20));

    await openSignedIn(page, served.url);
    const note = page.locator('#retention-hold');
    await expect
      .poll(() => note.textContent())
      .toMatch(/^Pruning is paused: the backup records were damaged/);
    const held = await heldNow();
    expect(held).not.toBeNull();
    expect(await note.locator('p').textContent()).toBe(held!.message);
    expect(await note.getAttribute('class')).toContain('warning');
    // Above the backups list, in the backups card.
    expect(
      await page.evaluate(() => {
        const hold = document.getElementById('retention-hold');
        const table = document.getElementById('backups-body')?.closest('.table-wrap');
        return !!hold && !!table && hold.nextElementSibling === table;
      }),
    ).toBe(true);
    // The status panel says it too (the backups area's warning).
    await expect.poll(() => page.locator('#status-areas').textContent()).toContain('Pruning is paused');
    await page.screenshot({ path: `${SHOTS}/retention-hold.png` });

    // While held the next backup deletes nothing (the pin is lost, yet the old backup stays).
    const second = filenameOf(await backup());
    expect((await t.agent.catalog.list()).map((b) => b.filename).sort()).toEqual([first, second].sort());

    // Resuming asks first, naming what the next backup would then delete; Cancel keeps the hold.
    await note.getByRole('button', { name: 'Resume pruning' }).click();
    const dialog = page.locator('#confirm-dialog');
    await expect.poll(() => dialog.isVisible()).toBe(true);
    expect(await dialog.textContent()).toContain('Pins made before the backup records were damaged are gone');
    // With 1 kept, the next backup would delete both (the pin on the first is gone).
    const asked = (await dialog.textContent()) ?? '';
    expect(asked).toContain('the next backup deletes 2 backups as things stand');
    expect(asked).toContain(first);
    expect(asked).toContain(second);
    await page.locator('#confirm-cancel').click();
    await expect.poll(() => dialog.isVisible()).toBe(false);
    expect(await heldNow()).not.toBeNull();

    await note.getByRole('button', { name: 'Resume pruning' }).click();
    await expect.poll(() => dialog.isVisible()).toBe(true);
    await page.locator('#confirm-ok').click();
    await expect.poll(() => note.count()).toBe(0);
    expect(await heldNow()).toBeNull();

    // Resumed: the next backup prunes as configured (1 kept).
    const third = filenameOf(await backup());
    expect((await t.agent.catalog.list()).map((b) => b.filename)).toEqual([third]);
  });
});
