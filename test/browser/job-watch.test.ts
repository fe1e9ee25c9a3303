// A job that starts while the page is open (the schedule, the CLI, the API) shows in the job panel
// without a reload, and the list shows what it made once it ends: the signed-in page looks for running
// jobs every few seconds while in view, not while hidden, and at once when it comes back into view.
import type { Browser, Page, Request } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { launchBrowser, type ServedApp, serveApp } from '../services/browser';
import { holdTableLock, startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  ({ pg, browser } = await startAll({ pg: () => startPostgres({ fsync: false }), browser: launchBrowser }));
  t = await startTestAgent(pg);
  served = await serveApp(t.app);
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
  // The page's timers run on Playwright's clock: in real time, unless a test pauses or moves it.
  await page.clock.install();
  await page.goto(served.url);
  await page.getByLabel('Admin token').fill(TEST_TOKEN);
  await page.keyboard.press('Enter');
  await page.locator('#backups-empty').waitFor();
}, 120_000);

/** Lets go of the table held by hold(). */
let unblock: (() => Promise<void>) | undefined;
/** Holds `table` locked, so a job that needs it waits (a backup's dump: users) until letGo(). */
async function hold(table: string): Promise<void> {
  unblock = await holdTableLock(t.agent.databaseUrl, table);
}
async function letGo(): Promise<void> {
  await unblock?.();
  unblock = undefined;
}
afterEach(async () => {
  await letGo();
  // A test cut short leaves its job to end before the next one starts its own.
  for (const job of t.agent.jobs.active()) await t.agent.jobs.waitFor(job.id);
});
afterAll(async () => {
  await letGo();
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

/** A backup started through the API (as the schedule or the CLI would: not by the page), held in its dump step; its id. */
async function backupStartedElsewhere(): Promise<string> {
  await hold('users');
  const answer = await t.request('/api/v1/backups', { method: 'POST' });
  return ((await answer.json()) as { jobId: string }).jobId;
}

/** Lets the held backup finish; the file it made. */
async function finish(id: string): Promise<string> {
  await letGo();
  const job = await t.agent.jobs.waitFor(id);
  expect(job.state).toBe('succeeded');
  return (job.result as { backup: { filename: string } }).backup.filename;
}

const panel = () => page.locator('#job-panel');
/** How often the page looks for running jobs (JOBS_LOOK_MS in agent/ui/app.js). */
const LOOK_MS = 4000;

/** Counts the page's requests whose path `matches`, once sent and once answered (or failed). */
function countRequests(matches: (path: string) => boolean) {
  const count = { sent: 0, answered: 0 };
  const ours = (request: Request) => matches(new URL(request.url()).pathname);
  page.on('request', (request) => {
    if (ours(request)) count.sent++;
  });
  const onAnswer = (request: Request) => {
    if (ours(request)) count.answered++;
  };
  page.on('requestfinished', onAnswer);
  page.on('requestfailed', onAnswer);
  return count;
}

describe('a job that starts while the page is open', () => {
  it('shows in the panel without a reload, and the list shows its backup once it ends', async () => {
    // Marks this document: a reload would lose it.
    await page.evaluate(() => Object.assign(window, { notReloaded: true }));
    expect(await panel().isVisible()).toBe(false);

    const id = await backupStartedElsewhere();
    // The next look, without waiting for it.
    await page.clock.fastForward(LOOK_MS);
    await panel().getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    expect(await panel().getByRole('heading').textContent()).toBe('Creating a backup');
    expect(await panel().evaluate((node) => node.matches(':modal'))).toBe(false);

    const filename = await finish(id);
    await panel().getByText(`Backup created: ${filename}`).waitFor({ timeout: 30_000 });
    await page.locator('#backups-body').getByText(filename).waitFor();
    expect(await page.evaluate(() => (window as { notReloaded?: boolean }).notReloaded)).toBe(true);
    await panel().getByRole('button', { name: 'Close' }).click();
    await panel().waitFor({ state: 'hidden' });
  }, 120_000);

  it('is not looked for while the page is hidden, and at once when it comes back into view', async () => {
    const looks = countRequests((path) => path === '/api/v1/jobs');
    const setVisibility = (state: 'hidden' | 'visible') =>
      page.evaluate((value) => {
        Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => value });
        document.dispatchEvent(new Event('visibilitychange'));
      }, state);
    await setVisibility('hidden');
    // Time stands still but for what the test moves; a look made before it was hidden is answered first.
    // (The page's clock may be ahead of this process's: the first test moved it on.)
    await page.clock.pauseAt((await page.evaluate(() => Date.now())) + 1000);
    await expect.poll(() => looks.answered).toBe(looks.sent);
    const before = looks.sent;
    const id = await backupStartedElsewhere();
    // Three looks' worth of time while hidden: none is made.
    await page.clock.runFor(15_000);
    expect(looks.sent).toBe(before);
    expect(await panel().isVisible()).toBe(false);

    // Back into view: it looks at once, the clock still standing.
    await setVisibility('visible');
    await expect.poll(() => looks.sent).toBe(before + 1);
    await panel().getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    await page.clock.resume();
    const filename = await finish(id);
    await panel().getByText(`Backup created: ${filename}`).waitFor({ timeout: 30_000 });
    await panel().getByRole('button', { name: 'Close' }).click();
  }, 120_000);

  it('started by the page itself is followed once, in the dialog; one whose answer waits for it is not shown', async () => {
    const looks = countRequests((path) => path === '/api/v1/jobs');
    const followed = countRequests((path) => /^\/api\/v1\/jobs\/[^/]+\/events$/.test(path));
    /** Lets the page look twice more, one look after the other. */
    const twoLooks = async () => {
      for (let i = 0; i < 2; i++) {
        const before = looks.answered;
        await page.clock.fastForward(LOOK_MS);
        await expect.poll(() => looks.answered).toBeGreaterThan(before);
      }
    };

    // A backup from Create Backup: the page finds it running at every look; the dialog alone follows it.
    await hold('users');
    const dialog = page.locator('#progress-dialog');
    await page.getByRole('button', { name: 'Create Backup' }).click();
    await dialog.getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    const [backup] = t.agent.jobs.active();
    await twoLooks();
    const filename = await finish(backup!.id);
    await dialog.getByText(`Backup created: ${filename}`).waitFor({ timeout: 30_000 });
    await dialog.getByRole('button', { name: 'Close' }).click();
    expect(followed.sent).toBe(1);
    expect(await panel().isVisible()).toBe(false);

    // Maintenance: its POST answers once the job is done, so until then the page does not know the
    // job's id; it finds the job running at every look meanwhile and leaves it be.
    await hold('attribute_history');
    await page.getByRole('button', { name: 'Run Maintenance Now' }).click();
    await page
      .locator('#confirm-dialog')
      .getByRole('button', { name: /^Delete History Older Than/ })
      .click();
    await expect.poll(() => t.agent.jobs.active().map((job) => job.kind)).toEqual(['maintenance']);
    await twoLooks();
    await letGo();
    await page
      .locator('#maintenance-result')
      .getByText(/Deleted [\d,]+ old rows/)
      .waitFor({ timeout: 30_000 });
    expect(followed.sent).toBe(1);
    expect(await panel().isVisible()).toBe(false);
  }, 120_000);
});

describe('signing out and in again in the same tab', () => {
  it('follows a running job once, and signing out leaves no events stream open and no look running', async () => {
    const looks = countRequests((path) => path === '/api/v1/jobs');
    const streams = countRequests((path) => /^\/api\/v1\/jobs\/[^/]+\/events$/.test(path));
    const open = () => streams.sent - streams.answered;
    // Each follow of a job that ends says so once (showJobProgress): a second follow says it twice.
    await page.evaluate(() => {
      const counted = window as { jobsEnded?: number };
      counted.jobsEnded = 0;
      document.addEventListener('gem-job-ended', () => {
        counted.jobsEnded = (counted.jobsEnded ?? 0) + 1;
      });
    });
    const jobsEnded = () => page.evaluate(() => (window as { jobsEnded?: number }).jobsEnded);
    const signOut = async () => {
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    };
    const signIn = async () => {
      await page.getByLabel('Admin token').fill(TEST_TOKEN);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('heading', { name: 'Local backups' }).waitFor();
    };
    // Signed out and in again with nothing running, then a backup starts elsewhere: one follow.
    await signOut();
    await signIn();
    const first = await backupStartedElsewhere();
    await page.clock.fastForward(LOOK_MS);
    await panel().getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    // Looks' worth of time while it is shown (the watch looks again once it ended).
    await page.clock.fastForward(LOOK_MS);
    await page.clock.fastForward(LOOK_MS);
    expect(streams.sent).toBe(1);
    expect(open()).toBe(1);

    // Signed out while it runs: its stream ends with the sign-in; signed in again, it is followed once.
    await signOut();
    await signIn();
    await panel().getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    await expect.poll(() => streams.sent).toBe(2);
    await page.clock.fastForward(LOOK_MS);
    expect(open()).toBe(1);
    const filename = await finish(first);
    await panel().getByText(`Backup created: ${filename}`).waitFor({ timeout: 30_000 });
    await page.locator('#backups-body').getByText(filename).waitFor();
    await expect.poll(open).toBe(0);
    expect(await jobsEnded()).toBe(1);
    expect(await page.locator('#job-panel').count()).toBe(1);
    await panel().getByRole('button', { name: 'Close' }).click();

    // One look at a time: a look's worth of time makes one request, coming back into view one more.
    await expect.poll(() => looks.answered).toBe(looks.sent);
    const before = looks.sent;
    await page.clock.fastForward(LOOK_MS);
    await expect.poll(() => looks.answered).toBe(before + 1);
    await page.evaluate(() => document.dispatchEvent(new Event('visibilitychange')));
    await expect.poll(() => looks.answered).toBe(before + 2);
    expect(looks.sent).toBe(before + 2);

    // A second backup elsewhere, and signed out while it runs: no stream stays open, no look is made.
    const second = await backupStartedElsewhere();
    await page.clock.fastForward(LOOK_MS);
    await panel().getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    expect(open()).toBe(1);
    await signOut();
    await expect.poll(open).toBe(0);
    await expect.poll(() => looks.answered).toBe(looks.sent);
    const signedOut = looks.sent;
    for (let i = 0; i < 3; i++) await page.clock.fastForward(LOOK_MS);
    await page.evaluate(() => document.dispatchEvent(new Event('visibilitychange')));
    await finish(second);
    await page.clock.fastForward(LOOK_MS);
    expect(looks.sent).toBe(signedOut);
    expect(streams.sent).toBe(3);
    expect(await jobsEnded()).toBe(1);
    // Nothing of that sign-in answered 401 meanwhile, which would say "You are signed out".
    expect(await page.locator('#sign-in-error').textContent()).toBe('');

    // Signed in again, the page looks once and shows nothing: the job ended meanwhile.
    await signIn();
    await expect.poll(() => looks.answered).toBe(signedOut + 1);
    expect(await panel().isVisible()).toBe(false);
  }, 180_000);

  it('a token refused while the Create Backup dialog follows its backup: sign-in in words, no failure shown, then followed again once', async () => {
    const polls = countRequests((path) => /^\/api\/v1\/jobs\/[^/]+$/.test(path));
    await hold('users');
    // The events stream cannot be had (a proxy that drops it): the dialog follows the job by polling it.
    await page.route('**/api/v1/jobs/*/events', (route) => route.abort('connectionreset'));
    try {
      const dialog = page.locator('#progress-dialog');
      await page.getByRole('button', { name: 'Create Backup' }).click();
      await expect.poll(() => polls.answered).toBeGreaterThan(0);
      await dialog.getByText('Exporting the database…').waitFor({ timeout: 30_000 });
      const [backup] = t.agent.jobs.active();
      expect(backup?.kind).toBe('backup');

      // The admin token changes on the agent (this tab's no longer matches): the next poll answers 401.
      await page.evaluate(() => sessionStorage.setItem('gem-backup-token', 'a-token-the-agent-changed'));
      await page.clock.fastForward(1000);
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();
      expect(await page.locator('#sign-in-error').textContent()).toBe(
        'Invalid admin token. Please sign in again.',
      );
      expect(await dialog.evaluate((node: HTMLDialogElement) => node.open)).toBe(false);
      // Not the job's end: neither a failure nor lost contact was told, and the job runs on in the agent.
      expect(await page.locator('#progress-state').getAttribute('data-state')).not.toBe('failed');
      expect(await page.locator('#page-error').isHidden()).toBe(true);
      expect(t.agent.jobs.active().map((job) => job.id)).toEqual([backup!.id]);
      // Nothing polls for the sign-in that ended.
      await expect.poll(() => polls.answered).toBe(polls.sent);
      const pollsAtSignIn = polls.sent;
      for (let i = 0; i < 3; i++) await page.clock.fastForward(1000);
      expect(polls.sent).toBe(pollsAtSignIn);

      // Signed in again in this tab (a refused token is not a sign-out: the tab still knows it started the
      // backup): the running backup is followed once more, in the dialog as after a reload, to its end.
      await page.evaluate(() => {
        const counted = window as { endedAfterSignIn?: number };
        counted.endedAfterSignIn = 0;
        document.addEventListener('gem-job-ended', () => {
          counted.endedAfterSignIn = (counted.endedAfterSignIn ?? 0) + 1;
        });
      });
      await page.getByLabel('Admin token').fill(TEST_TOKEN);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('heading', { name: 'Local backups' }).waitFor();
      await page.clock.fastForward(LOOK_MS);
      await dialog.getByText('Exporting the database…').waitFor({ timeout: 30_000 });
      const filename = await finish(backup!.id);
      await page.clock.fastForward(1000);
      await dialog.getByText(`Backup created: ${filename}`).waitFor({ timeout: 30_000 });
      expect(await page.evaluate(() => (window as { endedAfterSignIn?: number }).endedAfterSignIn)).toBe(1);
      expect(await panel().isVisible()).toBe(false);
      await dialog.getByRole('button', { name: 'Close' }).click();
      await page.locator('#backups-body').getByText(filename).waitFor();
    } finally {
      await page.unroute('**/api/v1/jobs/*/events');
    }
  }, 120_000);
});
