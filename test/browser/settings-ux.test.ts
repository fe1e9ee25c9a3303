// Settings on the page never delete or mislead silently: a lower "Backups to keep" asks first naming what goes, Cloud DR unavailable reads so, "saved" never stands over edits, empty and bad numbers are refused in plain words.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { drModule } from '../../agent/http/routes/dr';
import { maintenanceModule } from '../../agent/http/routes/maintenance';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { retentionModule, settingsModule } from '../../agent/http/routes/settings';
import type { SettingsView } from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;
/** The body of every settings PUT the page sent. */
const puts: SettingsView[] = [];
/** Errors the page's scripts threw: none expected. */
const pageErrors: string[] = [];
/** The local backups made in beforeAll, oldest first. */
const made: string[] = [];

const saved = async () => (await (await t.request('/api/v1/settings')).json()) as SettingsView;
const keepField = () => page.locator('#f-autoBackup-maxBackups');
const status = () => page.locator('#settings-status');
const dialog = () => page.locator('#confirm-dialog');
const saveButton = () => page.getByRole('button', { name: 'Save All Settings' });
const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename).sort();

/** A backup made through the agent's job, on the given day (its name and time follow it). */
async function backup(day: number) {
  const job = await startBackup(t.agent, { kind: 'manual', now: new Date(Date.UTC(2026, 0, day, 2)) });
  const done = await t.agent.jobs.waitFor(job.id);
  expect(done.state, done.error?.message).toBe('succeeded');
  return done.result as {
    backup: { filename: string };
    followUps: { retention?: { ok: boolean; details?: { deleted: string[] } } };
  };
}

/** Saves `maxBackups` through the API (as a script would), nothing else changed. */
async function putMaxBackups(maxBackups: number): Promise<void> {
  const answer = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ autoBackup: { ...(await saved()).autoBackup, maxBackups } }),
  });
  expect(answer.status).toBe(200);
}

/** Opens the page afresh, signed in, with the saved settings in the form. */
async function openPage(): Promise<void> {
  await openSignedIn(page, served.url);
  const keep = (await saved()).autoBackup.maxBackups;
  await expect.poll(() => keepField().inputValue()).toBe(String(keep));
  await expect.poll(() => page.locator('#dr-next').textContent()).not.toBe('–');
}

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg, {
    modules: [settingsModule, retentionModule, maintenanceModule, drModule, offsiteModule],
  });
  for (let day = 1; day <= 4; day++) made.push((await backup(day)).backup.filename);
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('request', (request) => {
    if (request.method() === 'PUT' && request.url().endsWith('/api/v1/settings'))
      puts.push(JSON.parse(request.postData() ?? 'null'));
  });
}, 180_000);
afterEach(async (context) => {
  expect(pageErrors).toEqual([]);
  if (context.task.result?.state === 'fail')
    await page.screenshot({ path: `${SHOTS}/failed-settings-ux-${context.task.id}.png`, fullPage: true });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

describe('GET /retention/preview?maxBackups=N', () => {
  it('plans with N (now and at the next backup), deletes nothing; N outside 1-100 or not a whole number is 422 naming the field', async () => {
    expect((await saved()).autoBackup.maxBackups).toBe(10);
    const preview = async (query: string) => {
      const answer = await t.request(`/api/v1/retention/preview${query}`);
      return { status: answer.status, body: await answer.json() };
    };
    const names = (list: Array<{ filename: string }>) => list.map((b) => b.filename);

    const plain = await preview('');
    expect(plain.status).toBe(200);
    expect(plain.body.maxBackups).toBe(10);
    expect(plain.body.delete).toEqual([]);
    expect(plain.body.nextBackup.delete).toEqual([]);

    const two = await preview('?maxBackups=2');
    expect(two.status).toBe(200);
    expect(two.body.maxBackups).toBe(2);
    // Now: the 2 oldest of 4; at the next backup (it takes a place): the 3 oldest.
    expect(names(two.body.delete)).toEqual(made.slice(0, 2));
    expect(names(two.body.nextBackup.delete)).toEqual(made.slice(0, 3));
    expect(names(two.body.keep).sort()).toEqual(made.slice(2).sort());

    for (const [query, message] of [
      ['?maxBackups=0', 'maxBackups: must be at least 1'],
      ['?maxBackups=101', 'maxBackups: must be at most 100'],
      ['?maxBackups=2.5', 'maxBackups: must be a whole number'],
      ['?maxBackups=abc', 'maxBackups: must be a number'],
      ['?maxBackups=', 'maxBackups: must be at least 1'],
    ] as const) {
      const bad = await preview(query);
      expect(bad.status, query).toBe(422);
      expect(bad.body.error.code).toBe('unprocessable');
      expect(bad.body.error.message, query).toBe(message);
      expect(bad.body.error.details.field).toBe('maxBackups');
    }
    expect(await localNames()).toEqual([...made].sort());
    expect((await saved()).autoBackup.maxBackups).toBe(10);
  });
});

describe('the settings form in a real browser', () => {
  it('a lower "Backups to keep" asks first, naming the backups the next backup deletes; Cancel saves nothing', async () => {
    await openPage();
    puts.length = 0;
    await keepField().fill('2');
    await saveButton().click();
    await dialog().getByRole('heading', { name: 'Keep only 2 backups?' }).waitFor();
    await page.screenshot({ path: `${SHOTS}/50-settings-fewer-backups-confirm.png` });
    const listed = await dialog()
      .locator('li[data-filename]')
      .evaluateAll((items) => items.map((item) => item.getAttribute('data-filename')));
    expect(listed).toEqual(made.slice(0, 3));
    const text = (await dialog().textContent()) ?? '';
    expect(text).toContain('goes down from 10 to 2');
    expect(text).toContain('It deletes 3 local backups:');
    expect(text).not.toContain('Copies at'); // no offsite destination is on
    await dialog().getByRole('button', { name: 'Cancel' }).click();
    await status()
      .getByText(/^Not saved/)
      .waitFor();
    expect(await status().textContent()).toBe(
      'Not saved: “Backups to keep” is still 10, and no backup is deleted. Your changes are still in the form.',
    );
    expect(puts).toEqual([]);
    expect((await saved()).autoBackup.maxBackups).toBe(10);
    expect(await keepField().inputValue()).toBe('2');
  });

  it('confirmed, it saves, deletes nothing yet, and the next backup deletes exactly the backups it listed', async () => {
    await openPage();
    await keepField().fill('2');
    await saveButton().click();
    const confirm = dialog().getByRole('button', { name: 'Save and Delete 3 Backups', exact: true });
    await confirm.click();
    await status().getByText('Settings saved.').waitFor();
    expect((await saved()).autoBackup.maxBackups).toBe(2);
    expect(await localNames()).toEqual([...made].sort());

    const next = await backup(5);
    expect(next.followUps.retention?.details?.deleted).toEqual(made.slice(0, 3));
    expect(await localNames()).toEqual([made[3]!, next.backup.filename].sort());
    made.splice(0, 3);
    made.push(next.backup.filename);
    await putMaxBackups(10);
  });

  it('asks nothing when nothing would be deleted anywhere (fewer backups than the new number, no offsite destination)', async () => {
    await openPage();
    puts.length = 0;
    await keepField().fill('5');
    await saveButton().click();
    await status().getByText('Settings saved.').waitFor();
    expect(await dialog().isVisible()).toBe(false);
    expect(puts).toHaveLength(1);
    expect((await saved()).autoBackup.maxBackups).toBe(5);
    await putMaxBackups(10);
  });

  it('when the plan cannot be read, does not save and says why', async () => {
    await openPage();
    puts.length = 0;
    await page.route('**/api/v1/retention/preview*', (route) =>
      route.fulfill({
        status: 503,
        contentType: 'application/json',
        body: JSON.stringify({ error: { code: 'dependency_down', message: 'the agent is busy' } }),
      }),
    );
    try {
      await keepField().fill('1');
      await saveButton().click();
      await status()
        .getByText(/^Not saved/)
        .waitFor();
    } finally {
      await page.unroute('**/api/v1/retention/preview*');
    }
    expect(await status().getAttribute('class')).toBe('result bad');
    expect(await status().textContent()).toBe(
      'Not saved: which backups a lower “Backups to keep” deletes could not be checked (the agent is busy). Nothing was changed.',
    );
    expect(puts).toEqual([]);
    expect((await saved()).autoBackup.maxBackups).toBe(10);
  });

  it('Cloud DR without an endpoint: the switch is off and disabled, says it is not available; the variable only in a hint; a save keeps the setting', async () => {
    await openPage();
    const drSwitch = page.locator('#f-cloudDr-enabled');
    await page.locator('#dr-unavailable').waitFor();
    expect(await drSwitch.isDisabled()).toBe(true);
    expect(await drSwitch.isChecked()).toBe(false);
    // It looks unavailable too, not like a switch that is merely off.
    expect(await drSwitch.evaluate((e) => getComputedStyle(e).opacity)).toBe('0.45');
    expect(await drSwitch.evaluate((e) => getComputedStyle(e).cursor)).toBe('not-allowed');
    expect(await page.locator('#dr-unavailable-text').textContent()).toBe(
      'Cloud DR is not available on this controller (it was not set up at installation).',
    );
    expect(await drSwitch.getAttribute('aria-describedby')).toContain('dr-unavailable-text');
    const hint = page.locator('#dr-unavailable .hint');
    expect(await hint.textContent()).toContain('GEM_DR_URL is not set');
    expect(await page.locator('#dr-next').textContent()).toBe('Not available on this controller');
    // The variable's name appears only in the hint, and the "turning this off deletes" warning not at all.
    const card = ((await page.locator('#dr-title').locator('..').textContent()) ?? '').replace(
      (await hint.textContent()) ?? '',
      '',
    );
    expect(card).not.toContain('GEM_DR_URL');
    expect(await page.locator('#dr-off-warning').isVisible()).toBe(false);
    await page.locator('#dr-title').scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${SHOTS}/51-settings-dr-unavailable.png` });

    // The saved setting is the agent's (on by default): a save of another field neither turns it off nor asks.
    expect((await saved()).cloudDr.enabled).toBe(true);
    puts.length = 0;
    await keepField().fill('12');
    await saveButton().click();
    await status().getByText('Settings saved.').waitFor();
    expect(await dialog().isVisible()).toBe(false);
    expect(puts[0]?.cloudDr?.enabled).toBe(true);
    expect((await saved()).cloudDr.enabled).toBe(true);
    expect(await drSwitch.isChecked()).toBe(false);
    await putMaxBackups(10);
  });

  it('"Settings saved." goes as soon as the form is edited again', async () => {
    await openPage();
    await keepField().fill('11');
    await saveButton().click();
    await status().getByText('Settings saved.').waitFor();
    await page.locator('#f-maintenance-retentionDays').fill('60');
    expect(await status().textContent()).toBe('');
    await saveButton().click();
    await status().getByText('Settings saved.').waitFor();
    await page.locator('#f-autoBackup-enabled').click();
    expect(await status().textContent()).toBe('');
    await putMaxBackups(10);
  });

  it('an empty "Backups to keep" is refused at Save with a field error; nothing is sent', async () => {
    await openPage();
    puts.length = 0;
    await keepField().fill('');
    await saveButton().click();
    const fieldError = page.locator('#err-f-autoBackup-maxBackups');
    await fieldError.waitFor();
    expect(await fieldError.textContent()).toBe('Enter a number: this setting cannot be left empty.');
    expect(await keepField().getAttribute('aria-invalid')).toBe('true');
    expect(await status().textContent()).toBe('Not saved: correct the field marked below.');
    expect(puts).toEqual([]);
    expect((await saved()).autoBackup.maxBackups).toBe(10);
  });

  it("the agent's field errors read in plain words, not zod's", async () => {
    await openPage();
    const fieldError = page.locator('#err-f-autoBackup-maxBackups');
    for (const [value, words] of [
      ['0', 'Backups to keep must be at least 1.'],
      ['101', 'Backups to keep must be at most 100.'],
      ['2.5', 'Backups to keep must be a whole number.'],
    ] as const) {
      await keepField().fill(value);
      await saveButton().click();
      await fieldError.waitFor();
      expect(await fieldError.textContent(), value).toBe(words);
      expect(await status().textContent()).toBe('Not saved: correct the field marked below.');
    }
    expect((await saved()).autoBackup.maxBackups).toBe(10);
  });
});
