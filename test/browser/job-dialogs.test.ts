// The page's job dialogs in the owner's words, in a real browser against a real agent and PostgreSQL:
// steps named plainly, the keep-limit prune told, a restore's undo named after the reload, a browser's
// "(1)" copy uploaded, and a Cancel that comes too late leaving the job's own end on screen.
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { restoreModule } from '../../agent/http/routes/restore';
import { settingsModule } from '../../agent/http/routes/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { holdTableLock, startPostgres, type TestPostgres } from '../services/postgres';
import { tempDirForTest } from '../services/temp-dir';

const SHOTS = 'test-artifacts/screenshots';
const AGENT_SOURCES = new URL('../../agent/', import.meta.url);

let pg: TestPostgres;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;

const dialog = () => page.locator('#progress-dialog');
const progressText = () => page.locator('#progress-text');

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [restoreModule, settingsModule] });
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
  await openSignedIn(page, served.url);
  await page.getByRole('heading', { name: 'Local backups' }).waitFor();
}, 120_000);
// A failing step leaves a picture of what the page showed, and no dialog over the next test's clicks.
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({
      path: `${SHOTS}/failed-job-dialogs-${context.task.name.slice(0, 40).replace(/\W+/g, '-')}.png`,
    });
  await page.unrouteAll({ behavior: 'ignoreErrors' });
  await page.evaluate(() => {
    for (const open of document.querySelectorAll('dialog[open]')) (open as HTMLDialogElement).close();
  });
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await pg?.stop();
});

/** Every .ts file under agent/ (the page's own files are not the agent's steps). */
async function agentSources(): Promise<{ path: string; text: string }[]> {
  const entries = await readdir(AGENT_SOURCES, { recursive: true });
  const files = entries.filter((path) => path.endsWith('.ts') && !path.startsWith('ui/'));
  return Promise.all(
    files.map(async (path) => ({ path, text: await readFile(new URL(path, AGENT_SOURCES), 'utf8') })),
  );
}

/** Values a step name built from a template may hold, by the expression in it. */
const SAMPLES: Record<string, string[]> = {
  kind: ['local', 'cloud', 'sftp', 's3', 'smb'],
  name: ['gem-backup-2026-11-29-101500.tar.gz'],
  "kinds.join(', ')": ['sftp', 'sftp, s3, smb'],
};

/** Each step name the agent reports: every ctx.phase(...) in agent/, and the job runner's own. */
async function agentStepNames(): Promise<string[]> {
  const names = new Set<string>();
  for (const { path, text } of await agentSources()) {
    for (const [, plain, template] of text.matchAll(/ctx\.phase\(\s*(?:'([^']*)'|`([^`]*)`)/g)) {
      if (plain !== undefined) {
        names.add(plain);
        continue;
      }
      let variants = [template!];
      for (const [, expression] of template!.matchAll(/\$\{([^}]*)\}/g)) {
        const samples = SAMPLES[expression!];
        if (!samples) throw new Error(`${path}: add a sample value for \${${expression}} in this test`);
        variants = variants.flatMap((v) => samples.map((s) => v.replace(`\${${expression}}`, s)));
      }
      for (const v of variants) names.add(v);
    }
    if (path.endsWith('jobs/runner.ts'))
      for (const [, name] of text.matchAll(/phase(?: =|:) '([^']+)'/g)) names.add(name!);
  }
  return [...names].sort();
}

/** The progress dialog's text each time it changed, from now on (read by `shownTexts`). */
async function recordTexts(): Promise<void> {
  await page.evaluate(() => {
    const node = document.getElementById('progress-text')!;
    const seen: string[] = [];
    (window as unknown as { shownTexts: string[] }).shownTexts = seen;
    new MutationObserver(() => seen.push(node.textContent ?? '')).observe(node, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
}
const shownTexts = () => page.evaluate(() => (window as unknown as { shownTexts: string[] }).shownTexts);

/**
 * Evaluates `expression` in the page with its format.js module as `format`. A string, so that the test
 * runner does not rewrite the import() meant for the browser.
 */
const inPage = (expression: string) =>
  page.evaluate(`import('/ui/format.js').then((format) => ${expression})`);

async function backupNow(): Promise<string> {
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent)).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return (job.result as { backup: { filename: string } }).backup.filename;
}

describe('job dialogs in the owner’s words', () => {
  it('has plain words for every step name the agent reports (read from agent/ sources)', async () => {
    const names = await agentStepNames();
    // The known ones, so that a broken grep cannot pass with nothing found.
    for (const name of ['dump', 'folders', 'pack', 'verify', 'check', 'safety', 'stage', 'swap', 'starting'])
      expect(names).toContain(name);
    expect(names.length).toBeGreaterThan(25);
    const words = (await inPage(
      `Object.fromEntries(${JSON.stringify(names)}.map((name) => [name, [format.phaseWords(name), format.phase(name)]]))`,
    )) as Record<string, [string | undefined, string]>;
    const missing = names.filter((name) => !words[name]![0]);
    expect(missing, 'step names without words in agent/ui/format.js').toEqual([]);
    expect(words.dump![1]).toBe('Exporting the database');
    expect(words.safety![1]).toBe('Taking a safety backup of the current data');
    expect(words.stage![1]).toBe('Loading the backup (current data untouched)');
    expect(words.check![1]).toBe('Checking the backup file');
    expect(words.swap![1]).toBe('Switching over');
    expect(words['uploading gem-backup-2026-11-29-101500.tar.gz']![1]).toBe(
      'Uploading gem-backup-2026-11-29-101500.tar.gz',
    );
    expect(words['uploading to sftp, s3, smb']![1]).toBe(
      'Uploading to the SFTP server and S3-compatible storage and the Windows share (SMB)',
    );
    expect(words['verify sftp']![1]).toBe('Checking the newest copy on the SFTP server');
    // A step of a newer agent still reads as before.
    const unknown = await inPage("format.phase('new-step')");
    expect(unknown).toBe('New step');
  });

  it('shows a backup’s steps in words and says which older backups the keep limit removed', async () => {
    const older: string[] = [];
    for (let i = 0; i < 5; i++) older.push(await backupNow());
    await t.agent.settings.update({ autoBackup: { enabled: false, maxBackups: 1 } });
    await page.reload();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
    await recordTexts();

    // pg_dump waits for the lock: the dialog surely shows the dump step before the backup moves on.
    const unblock = await holdTableLock(t.agent.databaseUrl, 'users');
    try {
      await page.getByRole('button', { name: 'Create Backup' }).click();
      await progressText().getByText('Exporting the database…').waitFor({ timeout: 30_000 });
    } finally {
      await unblock();
    }
    await dialog().getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
    const text = (await progressText().textContent()) ?? '';
    await page.screenshot({ path: `${SHOTS}/30-backup-pruned-note.png` });

    const job = (
      (await (await t.request('/api/v1/jobs')).json()) as {
        kind: string;
        startedAt: string;
        result: {
          backup: { filename: string };
          followUps: { retention: { details: { deleted: string[] } } };
        };
      }[]
    )
      .filter((j) => j.kind === 'backup')
      .sort((a, b) => b.startedAt.localeCompare(a.startedAt))[0];
    const deleted = job!.result.followUps.retention.details.deleted;
    expect(deleted.length).toBeGreaterThanOrEqual(4);
    expect(older).toEqual(expect.arrayContaining(deleted));
    expect(text).toBe(
      `Backup created: ${job!.result.backup.filename}. Removed ${deleted.length} older backups (keep limit: 1): ` +
        `${deleted.slice(0, 3).join(', ')} and ${deleted.length - 3} more.`,
    );
    expect(await page.locator('#progress-state').getAttribute('data-state')).toBe('succeeded');
    // Each step in words; none by the agent's internal name.
    const shown = await shownTexts();
    expect(shown).toEqual(
      expect.arrayContaining(['Exporting the database…', 'Removing old backups beyond the keep limit…']),
    );
    for (const internal of ['Dump…', 'Folders…', 'Pack…', 'Verify…', 'Pruning old backups…'])
      expect(shown).not.toContain(internal);
    await dialog().getByRole('button', { name: 'Close' }).click();
  });

  it('keeps the job’s own end when Cancel reaches the agent after the job ended (409 ignored)', async () => {
    const unblock = await holdTableLock(t.agent.databaseUrl, 'users');
    let cancelAnswered: Promise<number> | undefined;
    try {
      await page.getByRole('button', { name: 'Create Backup' }).click();
      await progressText().getByText('Exporting the database…').waitFor({ timeout: 30_000 });
      // The click's request reaches the real agent only once the job is over: the race, made certain.
      await page.route('**/api/v1/jobs/*/cancel', async (route) => {
        const id = decodeURIComponent(new URL(route.request().url()).pathname.split('/').at(-2)!);
        await t.agent.jobs.waitFor(id);
        await route.continue();
      });
      cancelAnswered = page
        .waitForResponse((response) => response.url().endsWith('/cancel'))
        .then((response) => response.status());
      await dialog().getByRole('button', { name: 'Cancel' }).click();
      await page.locator('#confirm-dialog').getByRole('button', { name: 'Yes, Cancel It' }).click();
      await progressText().getByText('Cancelling…').waitFor();
    } finally {
      await unblock();
    }
    expect(await cancelAnswered).toBe(409);
    await dialog().getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
    // The late answer came after the end was shown; give the page a moment to (wrongly) act on it.
    await page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 300)));
    expect(await progressText().textContent()).toMatch(/^Backup created: gem-backup-/);
    expect(await page.locator('#progress-state').getAttribute('data-state')).toBe('succeeded');
    await page.screenshot({ path: `${SHOTS}/31-cancel-too-late.png` });
    await dialog().getByRole('button', { name: 'Close' }).click();
  });

  it('keeps saying "Cancelling…" while the Cancel is on its way, whatever steps the job reports meanwhile', async () => {
    await recordTexts();
    const unblock = await holdTableLock(t.agent.databaseUrl, 'users');
    let jobId: string | undefined;
    try {
      await page.getByRole('button', { name: 'Create Backup' }).click();
      await progressText().getByText('Exporting the database…').waitFor({ timeout: 30_000 });
      // The Cancel reaches the agent only once the job has moved on to another step (or ended): the
      // page meanwhile hears of that step.
      await page.route('**/api/v1/jobs/*/cancel', async (route) => {
        const id = decodeURIComponent(new URL(route.request().url()).pathname.split('/').at(-2)!);
        jobId = id;
        await expect
          .poll(() => t.agent.jobs.get(id)?.phase ?? 'gone', { timeout: 60_000, interval: 20 })
          .not.toBe('dump');
        await route.continue();
      });
      await page.evaluate(() => {
        (window as unknown as { shownTexts: string[] }).shownTexts.length = 0;
      });
      await dialog().getByRole('button', { name: 'Cancel' }).click();
      await page.locator('#confirm-dialog').getByRole('button', { name: 'Yes, Cancel It' }).click();
      await progressText().getByText('Cancelling…').waitFor();
    } finally {
      await unblock();
    }
    await dialog().getByRole('button', { name: 'Close' }).waitFor({ timeout: 90_000 });
    const job = await t.agent.jobs.waitFor(jobId!);
    // Every text before the job's end said "Cancelling…": never a step's words while the Cancel was on its way.
    const shown = await shownTexts();
    const end = (await progressText().textContent()) ?? '';
    const running = shown.filter((text) => text !== end);
    expect(running.length).toBeGreaterThan(0);
    expect(running).toEqual(running.map(() => 'Cancelling…'));
    expect(['cancelled', 'succeeded']).toContain(job.state);
    await dialog().getByRole('button', { name: 'Close' }).click();
  });

  it('after a restore’s reload says what was restored and which safety backup undoes it, once', async () => {
    const [target] = (await t.agent.catalog.list()).filter((b) => b.kind !== 'safety');
    const name = target!.filename;
    const row = page.locator(`tr[data-filename="${name}"]`);
    await row.getByRole('button', { name: `Restore ${name}` }).click();
    const reloaded = page.waitForEvent('load', { timeout: 90_000 });
    await page.locator('#confirm-dialog').getByRole('button', { name: 'Yes, Restore' }).click();
    // No restart command is set up here: the dialog waits for Close, which reloads the page.
    await dialog().getByText('The data is restored').waitFor({ timeout: 90_000 });
    await dialog().getByRole('button', { name: 'Close' }).click();
    await reloaded;
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();

    const jobs = (await (await t.request('/api/v1/jobs')).json()) as {
      kind: string;
      result?: { safetyBackup?: string };
    }[];
    const safety = jobs.find((job) => job.kind === 'restore')?.result?.safetyBackup;
    expect(safety).toMatch(/^gem-backup-/);
    const note = page.locator('#restore-note');
    await note.waitFor();
    expect(await note.textContent()).toBe(
      `Restored ${name}. To undo, restore the safety backup ${safety}. Restart GEM now so it uses the restored data.`,
    );
    const undoRow = page.locator(`tr[data-filename="${safety}"]`);
    expect(await undoRow.getAttribute('data-highlight')).toBe('undo-restore');
    await undoRow.getByText('Undo point').waitFor();
    expect(await page.locator('tr[data-highlight]').count()).toBe(1);
    await page.screenshot({ path: `${SHOTS}/32-restore-note.png` });

    // Once: the next visit of the page shows the list as usual.
    await page.reload();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
    await undoRow.waitFor();
    expect(await note.count()).toBe(0);
    expect(await page.locator('tr[data-highlight]').count()).toBe(0);
  });

  it('uploads a backup the browser renamed "… (1).tar.gz" under its name, and says how to fix any other name', async () => {
    const [backup] = (await t.agent.catalog.list()).filter((b) => b.kind !== 'safety');
    const name = backup!.filename;
    const folder = await tempDirForTest('gem-ui-upload-');
    const secondDownload = join(folder, name.replace(/\.tar\.gz$/, ' (1).tar.gz'));
    await copyFile(t.agent.catalog.pathOf(name), secondDownload);
    await t.agent.catalog.delete(name);
    await page.reload();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();

    const message = page.locator('#upload-error');
    await page.getByLabel('Upload a backup file').setInputFiles(secondDownload);
    await page.getByRole('button', { name: 'Upload', exact: true }).click();
    await message.getByText(`Uploaded ${name.replace(/\.tar\.gz$/, ' (1).tar.gz')} as ${name}.`).waitFor();
    await page.locator(`tr[data-filename="${name}"]`).waitFor();
    expect((await t.agent.catalog.list()).some((b) => b.filename === name)).toBe(true);

    const renamed = join(folder, 'holiday backup.tar.gz');
    await writeFile(renamed, 'not looked at: the name is refused first');
    await page.getByLabel('Upload a backup file').setInputFiles(renamed);
    await page.getByRole('button', { name: 'Upload', exact: true }).click();
    await message
      .getByText(
        'holiday backup.tar.gz is not named like a backup. Rename the file to gem-backup-YYYY-MM-DD-HHMMSS.tar.gz and upload it again.',
      )
      .waitFor();
    expect(await page.getByLabel('Upload a backup file').getAttribute('aria-invalid')).toBe('true');
    await message.scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${SHOTS}/33-upload-rename-advice.png` });
  });
});
