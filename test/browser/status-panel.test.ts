// The page's status panel in a real Chromium: the agent's health in words, refreshed on load, when a
// job the page follows ends, and every minute (a failure nobody watched, e.g. a scheduled backup's upload).
import { chown, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import type { HealthReport } from '../../agent/health/model';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { FAST } from '../offsite/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { freePort } from '../services/ports';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd, unixIds } from '../services/sshd';

const SHOTS = 'test-artifacts/screenshots';
const MINUTE = 60_000;

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let sshd: SshdService;
let browser: Browser;
let page: Page;

const shot = (name: string) => page.screenshot({ path: `${SHOTS}/${name}.png` });

async function health(): Promise<HealthReport> {
  return (await (await t.request('/api/v1/health')).json()) as HealthReport;
}

async function putSettings(body: unknown): Promise<void> {
  const response = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(response.status, await response.clone().text()).toBe(200);
}

/** A backup the page did not start (as the 02:00 schedule runs it): nobody watches it end. */
async function scheduledBackup(): Promise<void> {
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent, { kind: 'scheduled' })).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
}

const panel = () => page.locator('#status-panel');
const headline = () => page.locator('#status-headline').textContent();
const areaLines = () => page.locator('#status-areas li').allTextContents();

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg);
  // A destination that is down fails in seconds, not after minutes of retries.
  offsiteServiceFor(t.agent, FAST);
  served = await serveApp(t.app);
  sshd = await startSshd();
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.setDefaultTimeout(20_000);
  // The page's own timers run on a clock the test moves: "every minute" without waiting a minute.
  await page.clock.install();
  await page.clock.pauseAt(Date.now() + 1000);
});
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await shot(`failed-status-${context.task.name.slice(0, 40).replace(/\W+/g, '-')}`);
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await sshd?.stop();
  await t?.close();
  await pg?.stop();
});

describe('the status panel at the top of the page', () => {
  it('says on load, in words, what is failing and what needs attention, each with the agent’s reason', async () => {
    // No backup and automatic backups off: the backups area fails; the keys were never downloaded.
    await putSettings({ autoBackup: { enabled: false } });
    await openSignedIn(page, served.url);
    await expect.poll(headline).toBe('Not protected: something is failing');

    const report = await health();
    expect(report.status).toBe('failing');
    expect(report.areas.backups.reason).toBe('There is no backup and automatic backups are off');
    // Failing first; only the areas that are not ok; the reason exactly as the agent gives it.
    expect(await areaLines()).toEqual([
      `Failing Backups: ${report.areas.backups.reason}`,
      `Warning Encryption keys: ${report.areas.keys.reason}`,
    ]);
    expect(await panel().getAttribute('data-status')).toBe('failing');
    // Announced politely, and above everything else on the page.
    const live = page.getByRole('status').filter({ has: page.locator('#status-headline') });
    expect(await live.getAttribute('aria-live')).toBe('polite');
    const top = await panel().boundingBox();
    const backups = await page.getByRole('heading', { name: 'Local backups' }).boundingBox();
    expect(top!.y).toBeLessThan(backups!.y);
    await shot('status-01-failing');
  });

  it('is asked again as soon as a job the page follows ends, before its dialog is closed', async () => {
    await page.getByRole('button', { name: 'Create Backup' }).click();
    const dialog = page.locator('#progress-dialog');
    await dialog.getByText(/Backup created: gem-backup-/).waitFor({ timeout: 60_000 });
    // The clock is held: no minute passed, so the job's end alone asked for the new status.
    await expect
      .poll(areaLines)
      .toEqual([
        'Warning Backups: Automatic backups are off: only backups you start are made',
        `Warning Encryption keys: ${(await health()).areas.keys.reason}`,
      ]);
    expect(await headline()).toBe('Needs attention');
    expect(await dialog.getAttribute('open')).not.toBeNull();
    await dialog.getByRole('button', { name: 'Close' }).click();
  });

  it('shows within a minute a scheduled backup whose offsite upload failed while nobody watched', async () => {
    // SFTP on a port where nothing listens, auto-upload on: the 02:00 backup's upload fails.
    await putSettings({
      autoBackup: { enabled: true },
      offsite: {
        sftp: {
          enabled: true,
          host: '127.0.0.1',
          port: await freePort(),
          username: 'gem',
          remotePath: 'gem-offsite',
          auth: { password: 'not-used' },
          autoUpload: true,
        },
      },
    });
    await scheduledBackup();
    const report = await health();
    expect(report.areas.offsite.status).toBe('failing');
    // Nothing on the page changed by itself: the panel still says what it last heard.
    expect(await areaLines()).not.toContainEqual(expect.stringContaining('Offsite copies'));

    await page.clock.runFor(MINUTE);
    await expect.poll(headline).toBe('Not protected: something is failing');
    expect(await areaLines()).toContainEqual(`Failing Offsite copies: ${report.areas.offsite.reason}`);
    expect(report.areas.offsite.reason).toMatch(/^SFTP server cannot be reached: /);
    await shot('status-02-upload-failed');
  });

  it('says in one calm line when everything is protected: the last backup and the last offsite copy', async () => {
    // A working destination (the test sshd), the keys downloaded, a backup that reached it.
    const remote = join(sshd.root, 'gem-offsite');
    await mkdir(remote, { recursive: true });
    const { uid, gid } = await unixIds(sshd.passwordUser.username);
    await chown(remote, uid, gid);
    await putSettings({
      offsite: {
        sftp: {
          enabled: true,
          host: sshd.host,
          port: sshd.port,
          username: sshd.passwordUser.username,
          remotePath: 'gem-offsite',
          auth: { password: sshd.passwordUser.password },
          autoUpload: true,
        },
      },
    });
    expect((await t.request('/api/v1/keys/export')).status).toBe(200);
    await scheduledBackup();
    const report = await health();
    expect(report.status, JSON.stringify(report.areas)).toBe('ok');

    await page.clock.runFor(MINUTE);
    await expect.poll(() => panel().getAttribute('data-status')).toBe('ok');
    expect(await headline()).toMatch(/^All protected: last backup .+, offsite SFTP server .+$/);
    expect(await headline()).not.toContain('nothing uploaded');
    expect(await areaLines()).toEqual([]);
    expect(await page.locator('#status-icon').textContent()).toBe('✓');
    await shot('status-03-all-ok');
  });

  it('is not asked while the page is hidden, and is asked again on coming back after a minute', async () => {
    const asked: string[] = [];
    page.on('request', (request) => {
      if (new URL(request.url()).pathname === '/api/v1/health') asked.push(request.url());
    });
    await page.evaluate(() => {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await page.clock.runFor(2 * MINUTE);
    expect(asked).toEqual([]);
    await page.evaluate(() => {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await expect.poll(() => asked.length).toBe(1);
  });
});
