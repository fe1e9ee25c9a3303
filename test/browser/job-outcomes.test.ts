// How a job's dialog ends when things go wrong, in a real browser against a real agent and PostgreSQL:
// a restore says whether GEM was restarted (done, failed, not set up), Cancel goes once the data is
// being switched over, a restore that failed says whether the current data was changed, one a step
// after the switch-over failed in is told as done with what did not finish, and a dialog
// whose agent stops answering says so instead of freezing on its last figure.
import { copyFile, mkdir, open, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { serve } from '@hono/node-server';
import type { Browser, Locator, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { restoreModule } from '../../agent/http/routes/restore';
import { settingsModule } from '../../agent/http/routes/settings';
import { startRestore } from '../../agent/restore/restore';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn } from '../services/browser';
import { holdTableLock, startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import { tempDirForTest } from '../services/temp-dir';

const SHOTS = 'test-artifacts/screenshots';
/** The page's address stays while the test stops and starts serving the agent (page2's port range). */
const PORT = 18951;
const url = `http://127.0.0.1:${PORT}`;

let pg: TestPostgres;
let t: TestAgent;
let server: { close(): Promise<void> } | undefined;
let browser: Browser;
let page: Page;
let backupName: string;
/** Locks the test holds, let go at its end even when a step failed. */
const locks = new Set<() => Promise<void>>();

const dialog = () => page.locator('#progress-dialog');
const progressText = () => page.locator('#progress-text');
const cancelButton = () => dialog().getByRole('button', { name: 'Cancel' });
/** Cancel, and Yes in the question it asks first. */
async function cancelJob(): Promise<void> {
  await cancelButton().click();
  await page.locator('#confirm-dialog').getByRole('button', { name: 'Yes, Cancel It' }).click();
}

/** Serves the agent's app on PORT (a real HTTP server); close() drops every open connection, event streams too. */
function startServing(): Promise<void> {
  return new Promise((resolve) => {
    const s = serve({ fetch: t.app.fetch, port: PORT, hostname: '127.0.0.1' }, (_info: AddressInfo) => {
      server = {
        close: () =>
          new Promise<void>((done) => {
            (s as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
            s.close(() => done());
          }),
      };
      resolve();
    });
  });
}

/** Holds GEM's `users` table: pg_dump (a backup, a restore's safety backup) waits until it is let go. */
async function lockUsers(): Promise<() => Promise<void>> {
  const unblock = await holdTableLock(t.agent.databaseUrl, 'users');
  const once = async () => {
    if (locks.delete(once)) await unblock();
  };
  locks.add(once);
  return once;
}

/** The command the agent runs after a restore's swap (GEM_RESTART_COMMAND), or none. */
function setRestartCommand(command: string[] | undefined): void {
  (t.agent.config as { restartCommand?: string[] }).restartCommand = command;
}

async function restoreFromPage(name: string): Promise<void> {
  await page
    .locator(`tr[data-filename="${name}"]`)
    .getByRole('button', { name: `Restore ${name}` })
    .click();
  await page.locator('#confirm-dialog').getByRole('button', { name: 'Yes, Restore' }).click();
}

async function problems(): Promise<string[]> {
  return page.locator('#progress-problems li').allTextContents();
}

/**
 * A restore's dialog that ended done with `listed` problems, saying `text`: its Close reloads the page.
 * Returns the restore note the reloaded page shows.
 */
async function expectDoneWithProblems(text: string, listed: string[]): Promise<Locator> {
  expect(await progressText().textContent()).toBe(text);
  expect(await problems()).toEqual(listed);
  expect(await page.locator('#progress-state').getAttribute('data-state')).toBe('problems');
  const reloaded = page.waitForEvent('load');
  await dialog().getByRole('button', { name: 'Close' }).click();
  await reloaded;
  const note = page.locator('#restore-note');
  await note.waitFor();
  return note;
}

/** The newest restore job's safety backup. */
async function lastSafetyBackup(): Promise<string> {
  const restores = t.agent.jobs
    .list()
    .filter((job) => job.kind === 'restore' && job.state === 'succeeded')
    .sort((a, b) => String(b.startedAt).localeCompare(String(a.startedAt)));
  return (restores[0]?.result as { safetyBackup?: string } | undefined)?.safetyBackup ?? 'none';
}

/**
 * Waits until `locator` shows, moving the page's clock (installed in beforeAll) on by half a second at
 * each look: the page's one-second polls of a job go by without being waited out.
 */
async function showsMovingClock(locator: Locator, timeout = 15_000): Promise<void> {
  await expect
    .poll(
      async () => {
        if (await locator.isVisible()) return true;
        await page.clock.fastForward(500);
        return locator.isVisible();
      },
      { timeout, interval: 50 },
    )
    .toBe(true);
}

/**
 * Starts a restore of the backup whose fault point (`beforeSwapStep` or `afterCommit`, at the step
 * named) waits until the job is in `phase` and the page, reloaded then, shows its dialog found running
 * (the switch-over under way: no Cancel), then throws `message`. Resolves with the job's id once the
 * dialog says how it ended.
 */
async function restoreFailingAfterReload(
  at: { beforeSwapStep: string } | { afterCommit: string },
  phase: string,
  message: string,
): Promise<string> {
  let release!: () => void;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  const [point, failing] = Object.entries(at)[0]!;
  const fail = async (step: string) => {
    if (step !== failing) return;
    await held;
    throw new Error(message);
  };
  const job = await startRestore(t.agent, backupName, { faults: { [point]: fail } });
  try {
    await expect.poll(() => t.agent.jobs.get(job.id)?.phase, { timeout: 60_000 }).toBe(phase);
    await page.reload();
    await progressText().getByText('Switching over to the restored data…').waitFor();
    expect(await cancelButton().isHidden()).toBe(true);
  } finally {
    release();
  }
  await dialog().getByRole('button', { name: 'Close' }).waitFor({ timeout: 60_000 });
  return job.id;
}

async function openPage(): Promise<void> {
  await openSignedIn(page, url);
  await page.locator(`tr[data-filename="${backupName}"]`).waitFor();
}

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, browser } = await startAll({ pg: () => startPostgres({ fsync: false }), browser: launchBrowser }));
  t = await startTestAgent(pg, { modules: [restoreModule, settingsModule] });
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent)).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  backupName = (job.result as { backup: { filename: string } }).backup.filename;
  await startServing();
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
  // The page's timers run on Playwright's clock: in real time, unless a test moves it on.
  await page.clock.install();
  await openPage();
}, 120_000);
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({
      path: `${SHOTS}/failed-job-outcomes-${context.task.name.slice(0, 40).replace(/\W+/g, '-')}.png`,
    });
  for (const unlock of [...locks]) await unlock();
  if (!server) await startServing();
  await page.unrouteAll({ behavior: 'ignoreErrors' });
  await page.evaluate(() => {
    for (const open of document.querySelectorAll('dialog[open]')) (open as HTMLDialogElement).close();
  });
  // Each test starts on a fresh page (a restore reloads it; a running job's dialog must not carry over).
  for (const job of t.agent.jobs.active()) await t.agent.jobs.waitFor(job.id);
  await openPage();
});
afterAll(async () => {
  for (const unlock of [...locks]) await unlock();
  await browser?.close();
  await server?.close();
  await t?.close();
  await pg?.stop();
});

describe('a restore’s end says what happened to GEM', () => {
  it('a restart command that failed: the data is restored, the reason, restart GEM by hand; the note after the reload says it again', async () => {
    setRestartCommand(['sh', '-c', 'echo gem-restart-broke >&2; exit 3']);
    await restoreFromPage(backupName);
    await dialog().getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
    await page.screenshot({ path: `${SHOTS}/60-restore-restart-failed.png` });
    const note = await expectDoneWithProblems(
      'The data is restored, but GEM could not be restarted. Close reloads the page.',
      [
        'GEM could not be restarted: the restart command exited with 3: gem-restart-broke. The data is restored; restart GEM by hand so it uses it.',
      ],
    );
    expect(await note.textContent()).toBe(
      `Restored ${backupName}. To undo, restore the safety backup ${await lastSafetyBackup()}. ` +
        'GEM could not be restarted: the restart command exited with 3: gem-restart-broke. The data is restored; restart GEM by hand so it uses it.',
    );
    expect(await note.getAttribute('class')).toBe('result bad');
  });

  it('a restore with warnings (a role it had to create): the dialog lists them and waits for Close; the note keeps them', async () => {
    setRestartCommand(['true']);
    await withSql(t.agent.databaseUrl, (sql) =>
      sql.unsafe(
        `create role page_app; create table page_owned (v text); alter table page_owned owner to page_app`,
      ),
    );
    const made = await t.agent.jobs.waitFor((await startBackup(t.agent)).id);
    expect(made.state, JSON.stringify(made.error)).toBe('succeeded');
    const name = (made.result as { backup: { filename: string } }).backup.filename;
    await withSql(t.agent.databaseUrl, (sql) => sql.unsafe('drop table page_owned; drop role page_app'));
    await openPage();
    await restoreFromPage(name);
    await dialog().getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
    expect(await progressText().textContent()).toMatch(/ Close reloads the page\.$/);
    const listed = await problems();
    expect(listed).toEqual([
      expect.stringMatching(/^Created role page_app \(no login\): set its password if GEM logs in with it/),
    ]);
    const reloaded = page.waitForEvent('load');
    await dialog().getByRole('button', { name: 'Close' }).click();
    await reloaded;
    const note = page.locator('#restore-note');
    await note.waitFor();
    expect(await note.textContent()).toContain(listed[0]!);
    expect(await note.getAttribute('class')).toBe('result bad');
  });

  it('no restart command set up: never "Restore complete" alone, but "restart GEM now"', async () => {
    setRestartCommand(undefined);
    await restoreFromPage(backupName);
    await dialog().getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
    await page.screenshot({ path: `${SHOTS}/61-restore-no-restart-command.png` });
    expect(await progressText().textContent()).toBe(
      'The data is restored, but GEM was not restarted: no restart command is set up on this controller. Close reloads the page.',
    );
    expect(await problems()).toEqual(['Restart GEM now so it uses the restored data.']);
    const reloaded = page.waitForEvent('load');
    await dialog().getByRole('button', { name: 'Close' }).click();
    await reloaded;
    await page.locator('#restore-note').waitFor();
    expect(await page.locator('#restore-note').textContent()).toContain(
      'Restart GEM now so it uses the restored data.',
    );
  });

  it('a Cancel that reaches the agent after the switch-over began: Cancel goes, "too late", then GEM restarted and the reload', async () => {
    // The restart command runs until the test lets it end, once the Cancel has reached the agent.
    const restartMayEnd = join(await tempDirForTest('gem-restart-'), 'may-end');
    setRestartCommand(['sh', '-c', 'while [ ! -e "$0" ]; do sleep 0.05; done', restartMayEnd]);
    let cancelled: string | undefined;
    try {
      const unlock = await lockUsers();
      await restoreFromPage(backupName);
      await progressText()
        .getByText('Taking a safety backup of the current data')
        .waitFor({ timeout: 30_000 });
      // The click's request reaches the agent only once the restore is restarting GEM (past its swap).
      await page.route('**/api/v1/jobs/*/cancel', async (route) => {
        const id = decodeURIComponent(new URL(route.request().url()).pathname.split('/').at(-2)!);
        await expect
          .poll(() => t.agent.jobs.get(id)?.phase ?? 'gone', { timeout: 60_000, interval: 50 })
          .toMatch(/^(restart|done|gone)$/);
        cancelled = id;
        await route.continue();
      });
      await cancelJob();
      await progressText().getByText('Cancelling…').waitFor();
      await unlock();
      await progressText().getByText('Too late to cancel: the data is being switched over.').waitFor({
        timeout: 60_000,
      });
      expect(await cancelButton().isHidden()).toBe(true);
      await page.screenshot({ path: `${SHOTS}/62-restore-cancel-too-late.png` });
      // The Cancel reached the agent while GEM was being restarted (the job takes it: 'cancelling').
      await expect
        .poll(() => (cancelled ? t.agent.jobs.get(cancelled)?.phase : undefined), {
          timeout: 60_000,
          interval: 50,
        })
        .toBe('cancelling');
    } finally {
      await writeFile(restartMayEnd, '');
    }
    let reloaded = false;
    page.once('load', () => {
      reloaded = true;
    });
    await progressText()
      .getByText('Restore complete. GEM was restarted and uses the restored data. Reloading the page…')
      .waitFor({ timeout: 60_000 });
    expect(await problems()).toEqual([]);
    // The page reloads 1.5 s after it said so: its clock is moved on instead.
    await expect
      .poll(
        async () => {
          if (!reloaded) await page.clock.fastForward(500).catch(() => {}); // the reload may be under way
          return reloaded;
        },
        { timeout: 60_000, interval: 50 },
      )
      .toBe(true);
    await page.locator('#restore-note').waitFor();
    expect(await page.locator('#restore-note').textContent()).toBe(
      `Restored ${backupName}. To undo, restore the safety backup ${await lastSafetyBackup()}.`,
    );
  });
});

describe('a restore that did not finish says whether the current data was changed', () => {
  it('cancelled before the switch-over: nothing was changed', async () => {
    const unlock = await lockUsers();
    await restoreFromPage(backupName);
    await progressText().getByText('Taking a safety backup of the current data').waitFor({ timeout: 30_000 });
    await cancelJob();
    await unlock();
    await dialog().getByRole('button', { name: 'Close' }).waitFor({ timeout: 60_000 });
    expect(await progressText().textContent()).toBe(
      'Cancelled. Nothing was changed: GEM still has its current data.',
    );
  });

  it('failed before the switch-over (a damaged backup file): the reason, nothing was changed, what to do', async () => {
    const damaged = backupName.replace(/\d{6}\.tar\.gz$/, '000001.tar.gz');
    await copyFile(t.agent.catalog.pathOf(backupName), t.agent.catalog.pathOf(damaged));
    const file = await open(t.agent.catalog.pathOf(damaged), 'r+');
    const { size } = await file.stat();
    await file.write(Buffer.alloc(64, 0x5a), 0, 64, Math.floor(size / 2));
    await file.close();
    await page.reload();
    await page.locator(`tr[data-filename="${damaged}"]`).waitFor();
    await restoreFromPage(damaged);
    await dialog().getByRole('button', { name: 'Close' }).waitFor({ timeout: 60_000 });
    await page.screenshot({ path: `${SHOTS}/63-restore-failed-unchanged.png` });
    const job = t.agent.jobs.list().find((j) => j.kind === 'restore' && j.target === damaged);
    expect(job?.state).toBe('failed');
    const text = (await progressText().textContent()) ?? '';
    expect(text).toMatch(/^Failed: /);
    expect(text).toContain(job!.error!.message.trim().replace(/[.:]$/, ''));
    expect(text).toMatch(
      /\. Nothing was changed: GEM still has its current data\. Correct what the message says, then restore again\.$/,
    );
    await t.agent.catalog.delete(damaged);
  });

  it('failed while switching over (found running after a reload): no Cancel, and no claim that nothing changed', async () => {
    await restoreFailingAfterReload(
      { beforeSwapStep: 'fence-live-database' },
      'swap',
      'simulated failure at the first swap step',
    );
    await page.screenshot({ path: `${SHOTS}/64-restore-failed-in-swap.png` });
    const text = (await progressText().textContent()) ?? '';
    expect(text).toMatch(/^Failed while switching over: the restore failed while swapping/);
    expect(text).toMatch(/Reload the page to see which data GEM has now\.$/);
    expect(text).not.toContain('Nothing was changed');
  });
});

describe('a restore a step after the switch-over failed in is told as done', () => {
  it('found running after a reload: the data is restored, what did not finish, never "Nothing was changed"', async () => {
    setRestartCommand(['true']);
    // The safety prune, after the swap committed and GEM restarted, fails once the page has reloaded.
    const jobId = await restoreFailingAfterReload(
      { afterCommit: 'prune' },
      'restart',
      'simulated failure after the switch-over',
    );
    await page.screenshot({ path: `${SHOTS}/65-restore-failed-after-switch-over.png` });
    expect(t.agent.jobs.get(jobId)?.state).toBe('succeeded');
    const note = await expectDoneWithProblems(
      'Restore complete. GEM was restarted and uses the restored data. Close reloads the page.',
      [
        "The older safety backups could not all be pruned (simulated failure after the switch-over): the next backup's retention tries again.",
      ],
    );
    expect(await note.textContent()).toContain('The older safety backups could not all be pruned');
    expect(await note.textContent()).not.toContain('Nothing was changed');
  });
});

describe('a job dialog whose agent stops answering', () => {
  it('says "Lost contact with the agent; retrying…" while it does not answer, then that it answers again, and the end', async () => {
    const unlock = await lockUsers();
    await page.getByRole('button', { name: 'Create Backup' }).click();
    await progressText().getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    await server!.close();
    server = undefined;
    await showsMovingClock(progressText().getByText('Lost contact with the agent; retrying…'));
    expect(await page.locator('#progress-bytes').textContent()).toBe('');
    await page.screenshot({ path: `${SHOTS}/65-job-lost-contact.png` });

    await startServing();
    await showsMovingClock(
      page.locator('#progress-contact').getByText(/^The agent answers again, after \d+ s without contact\.$/),
    );
    await progressText().getByText('Exporting the database…').waitFor();
    await unlock();
    await showsMovingClock(progressText().getByText(/^Backup created: gem-backup-/), 60_000);
    await page.screenshot({ path: `${SHOTS}/66-job-contact-back.png` });
    await dialog().getByRole('button', { name: 'Close' }).click();
  });
});
