// The page's progress dialog during a restore's loading step, in a real browser against a real agent and
// PostgreSQL: "N of M steps" under a bar that moves, never bytes ("0 B of 0 B") and never past the total;
// and during its safety backup, each step's count under its own words, never going back.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { restoreModule } from '../../agent/http/routes/restore';
import { addSlowToLoadTable } from '../restore/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;
let backupName: string;

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, browser } = await startAll({ pg: () => startPostgres({ fsync: false }), browser: launchBrowser }));
  t = await startTestAgent(pg, { modules: [restoreModule] });
  // A table whose rows and indexes take a moment to load: the dialog sees the steps go by.
  await addSlowToLoadTable(t.agent.databaseUrl);
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent)).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  backupName = (job.result as { backup: { filename: string } }).backup.filename;
  served = await serveApp(t.app);
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
  await openSignedIn(page, served.url);
  await page.getByRole('heading', { name: 'Local backups' }).waitFor();
}, 120_000);
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({ path: `${SHOTS}/failed-restore-progress.png` });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

interface Shown {
  step: string;
  amount: string;
  value: number | null;
  max: number;
}

/** The bytes an amount line counts so far: "21 MB of 284 MB" -> 21 MiB, "264 MB so far" -> 264 MiB. */
function amountBytes(amount: string): number {
  const match = /^([\d.]+) (B|KB|MB|GB) (of|so far)/.exec(amount);
  if (!match) throw new Error(`not an amount in bytes: ${amount}`);
  return Number(match[1]) * 1024 ** ['B', 'KB', 'MB', 'GB'].indexOf(match[2]!);
}

describe('a restore’s progress on the page', () => {
  it('shows the loading step as "N of M steps" under a bar that fills, and the safety backup step by step, never going back', async () => {
    // Every change of the dialog's amount line, with the step and the bar as they were then.
    await page.evaluate(() => {
      const amount = document.getElementById('progress-bytes')!;
      const bar = document.getElementById('progress-bar') as HTMLProgressElement;
      const seen: Shown[] = [];
      (window as unknown as { shown: Shown[] }).shown = seen;
      new MutationObserver(() =>
        seen.push({
          step: document.getElementById('progress-text')!.textContent ?? '',
          amount: amount.textContent ?? '',
          value: bar.hasAttribute('value') ? bar.value : null,
          max: bar.max,
        }),
      ).observe(amount, { childList: true, characterData: true, subtree: true });
    });
    const row = page.locator(`tr[data-filename="${backupName}"]`);
    await row.getByRole('button', { name: `Restore ${backupName}` }).click();
    await page.locator('#confirm-dialog').getByRole('button', { name: 'Yes, Restore' }).click();
    const progress = page.locator('#progress-dialog');
    await progress.getByText('steps', { exact: false }).waitFor({ timeout: 60_000 });
    await page.screenshot({ path: `${SHOTS}/restore-progress-steps.png` });
    // The end (no restart command is set up here: it waits for Close, which reloads the page).
    await progress.getByText('The data is restored').waitFor({ timeout: 90_000 });
    const shown = await page.evaluate(() => (window as unknown as { shown: Shown[] }).shown);

    const loading = shown.filter((s) => s.step.startsWith('Loading the backup'));
    const counted = loading.filter((s) => s.amount !== '');
    expect(counted.length, JSON.stringify(shown)).toBeGreaterThan(1);
    let last = 0;
    for (const s of counted) {
      const match = /^(\d+) of (\d+) steps$/.exec(s.amount);
      expect(match, s.amount).not.toBeNull();
      const [done, total] = [Number(match![1]), Number(match![2])];
      expect(done).toBeLessThanOrEqual(total);
      expect(done).toBeGreaterThanOrEqual(last);
      expect([s.value, s.max]).toEqual([done, total]);
      last = done;
    }
    expect(counted.at(-1)!.amount).toMatch(/^(\d+) of \1 steps$/);

    // The safety backup's own steps (export, pack, verify) each count under their own words: under one
    // text the amount never goes back ("264 MB so far" then "0 B of 284 MB" did, under one phase).
    const safety = shown.filter((s) => s.step.startsWith('Taking a safety backup') && s.amount !== '');
    const texts = [...new Set(safety.map((s) => s.step))];
    expect(texts, JSON.stringify(shown)).toEqual(
      expect.arrayContaining([
        'Taking a safety backup of the current data: exporting the database…',
        'Taking a safety backup of the current data: verifying…',
      ]),
    );
    for (const text of texts) {
      const amounts = safety.filter((s) => s.step === text).map((s) => amountBytes(s.amount));
      for (let i = 1; i < amounts.length; i++)
        expect(amounts[i], `${text} ${JSON.stringify(amounts)}`).toBeGreaterThanOrEqual(amounts[i - 1]!);
    }
  }, 120_000);
});
