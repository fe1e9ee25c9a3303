/**
 * The page against the agent as `npm start` runs it (its own process, so the test can hold its pg_dump
 * and kill and restart it): a running job survives a reload, an agent restart mid-job reads as
 * interrupted, and turning Cloud DR off asks first.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { seedGemDatabase, writeSampleFolders } from '../../agent/db/seed';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { startTestAgent, TEST_TOKEN } from '../services/agent';
import { launchBrowser } from '../services/browser';
import { holdTableLock, startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
/** agent/main.ts bundled as `npm start` builds it: it starts in ~0.5 s instead of ~2 s through tsx. */
let built: BuiltChildren<'main'>;
let dataDir: string;
let databaseUrl: string;
let port: number;
let url: string;
let agentProcess: ChildProcess | undefined;
let browser: Browser;
let page: Page;
/** pg_dump processes stopped by the test, continued or killed before it ends. */
const held = new Set<number>();
/** Table locks the test holds, let go before it ends (a failed step must not leave the next test waiting). */
const locks = new Set<() => Promise<void>>();

/** Holds GEM's `users` table (see holdTableLock) until the returned function, or the test's end, lets go. */
async function lockUsers(): Promise<() => Promise<void>> {
  const unblock = await holdTableLock(databaseUrl, 'users');
  const once = async () => {
    if (locks.delete(once)) await unblock();
  };
  locks.add(once);
  return once;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A port free right now: the agent comes back on the same one, so the page's address stays. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port: free } = server.address() as { port: number };
      server.close(() => resolve(free));
    });
  });
}

/** Starts the bundled agent/main.ts on the test's data dir and database; resolves once it listens. */
async function startAgent(): Promise<void> {
  const child = spawn(process.execPath, [built.paths.main], {
    cwd: process.cwd(),
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      GEM_DATA_DIR: dataDir,
      GEM_SCRIPTS_DIR: join(dataDir, 'gem', 'scripts'),
      GEM_CONFIG_DIR: join(dataDir, 'gem', 'config'),
      GEM_PG_BIN: pg.binDir,
      GEM_AGENT_TOKEN: TEST_TOKEN,
      // An endpoint, so Cloud DR can be turned off in the page (nothing listens: no push is made here).
      GEM_DR_URL: 'http://127.0.0.1:9',
      GEM_LOG_LEVEL: 'warn',
      PORT: String(port),
      HOST: '127.0.0.1',
      NODE_ENV: 'test',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  agentProcess = child;
  let output = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString('utf8');
      if (output.includes('is running at')) resolve();
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code, signal) =>
      reject(new Error(`the agent exited (${code ?? signal}) before listening:\n${output}`)),
    );
  });
}

/** SIGKILLs the agent (a crash or power cut) and waits until it is gone. */
async function killAgent(): Promise<void> {
  const child = agentProcess;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await gone;
}

/** Every process below the agent's, with its state (ps STAT: R, S, T, Z...) and command line. */
function agentDescendants(): { pid: number; stat: string; comm: string; args: string }[] {
  const rows = execFileSync('ps', ['-eo', 'pid=,ppid=,stat=,comm=,args='], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .map(([pid, ppid, stat, comm, ...args]) => ({
      pid: Number(pid),
      ppid: Number(ppid),
      stat: stat ?? '',
      comm: comm ?? '',
      args: args.join(' '),
    }));
  const below = new Set([agentProcess!.pid!]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const row of rows)
      if (below.has(row.ppid) && !below.has(row.pid)) {
        below.add(row.pid);
        grew = true;
      }
  }
  return rows.filter((row) => below.has(row.pid) && row.pid !== agentProcess!.pid);
}

/**
 * Waits for the agent's pg_dump of the database and stops it (SIGSTOP): the backup stays in its dump
 * phase. Only the dump itself counts (it runs on the exported snapshot), never the `pg_dump --version`
 * of the tools check that comes just before it: that one ends at once, and under load the agent reaps
 * it late, so ps shows it as a zombie ("[pg_dump] <defunct>", no arguments) that a SIGSTOP "stops"
 * without an error. Stopping that zombie held nothing, and the real dump then ran to its end before
 * the test looked (1 of 5 full runs).
 */
async function holdDump(): Promise<number[]> {
  for (let i = 0; i < 2000; i++) {
    const dumps = agentDescendants()
      .filter((p) => p.comm === 'pg_dump' && p.args.includes('--snapshot=') && !p.stat.startsWith('Z'))
      .map((p) => p.pid);
    const stopped = dumps.filter((pid) => {
      try {
        process.kill(pid, 'SIGSTOP');
        held.add(pid);
        return true;
      } catch {
        return false; // it ended meanwhile
      }
    });
    if (stopped.length) {
      // Stopped for sure (T), not ended meanwhile: a process that is gone or a zombie holds no backup.
      for (let j = 0; j < 500; j++) {
        const states = agentDescendants().filter((p) => stopped.includes(p.pid));
        if (states.length === stopped.length && states.every((p) => p.stat.startsWith('T'))) return stopped;
        if (states.length < stopped.length || states.some((p) => p.stat.startsWith('Z')))
          throw new Error(`the backup's pg_dump ended before it could be held: ${JSON.stringify(states)}`);
        await sleep(10);
      }
      throw new Error("the backup's pg_dump did not stop on SIGSTOP");
    }
    await sleep(10);
  }
  throw new Error('the backup never started pg_dump');
}

function release(pids: number[], signal: NodeJS.Signals = 'SIGCONT'): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
    held.delete(pid);
  }
}

const api = async (path: string, init: RequestInit = {}) => {
  const response = await fetch(`${url}/api/v1${path}`, {
    ...init,
    headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
  });
  expect(response.ok, `${path}: ${response.status}`).toBe(true);
  return response.json();
};
const runningJobs = async () =>
  ((await api('/jobs')) as { kind: string; endedAt?: string }[]).filter((job) => !job.endedAt);

async function waitNoJobs(): Promise<void> {
  await expect.poll(async () => (await runningJobs()).length, { timeout: 60_000 }).toBe(0);
}

async function signIn(): Promise<void> {
  await page.goto(url);
  await page.getByLabel('Admin token').fill(TEST_TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Local backups' }).waitFor();
}

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, built, browser } = await startAll({
    pg: () => startPostgres(),
    built: () => buildChildren({ main: 'agent/main.ts' }),
    browser: launchBrowser,
  }));
  dataDir = await mkdtemp(join(tmpdir(), 'gem-ui-jobs-'));
  databaseUrl = await pg.createDatabase();
  // Create the keyring and seed the sample GEM data with it, then hand the data dir to the real agent.
  const first = await startTestAgent(pg, { dataDir, databaseUrl });
  await withSql(databaseUrl, (sql) => seedGemDatabase(sql, first.agent.keyring.activeKey));
  await writeSampleFolders(join(dataDir, 'gem', 'scripts'), join(dataDir, 'gem', 'config'));
  await first.close();
  port = await freePort();
  url = `http://127.0.0.1:${port}`;
  await startAgent();
  page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.setDefaultTimeout(20_000);
  await signIn();
}, 120_000);
afterEach(async (context) => {
  if (context.task.result?.state === 'fail')
    await page.screenshot({
      path: `${SHOTS}/failed-jobs-${context.task.name.slice(0, 40).replace(/\W+/g, '-')}.png`,
    });
  for (const unblock of [...locks]) await unblock();
  release([...held], 'SIGCONT');
  // A dialog left open by a failed step would block the next test's clicks.
  await page.evaluate(() => {
    for (const dialog of document.querySelectorAll('dialog[open]')) (dialog as HTMLDialogElement).close();
  });
});
afterAll(async () => {
  await browser?.close();
  release([...held], 'SIGKILL');
  const child = agentProcess;
  if (child && child.exitCode === null && child.signalCode === null) {
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGINT');
    await Promise.race([gone, sleep(15_000)]);
    if (child.exitCode === null && child.signalCode === null) await killAgent();
  }
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
}, 60_000);

describe('running jobs, agent restarts and Cloud DR opt-out in the page', () => {
  it('shows a running backup again after a reload, and how it ended', async () => {
    // The sample database dumps in ~50 ms: held by a lock, the dump is surely alive when ps finds it.
    // The lock stays until the page has found the job again (pg_dump and the row counts both wait for
    // it), and the dump is stopped besides: the backup cannot end before the reload is checked.
    const unblock = await lockUsers();
    await page.getByRole('button', { name: 'Create Backup' }).click();
    const dumps = await holdDump();
    const dialog = page.locator('#progress-dialog');
    await dialog.getByRole('heading', { name: 'Creating a backup' }).waitFor();
    await page.reload();
    await page.getByRole('heading', { name: 'Local backups' }).waitFor();
    // The job still runs on the agent: the page asks which jobs run and follows this one again.
    expect((await runningJobs()).map((job) => job.kind)).toEqual(['backup']);
    await dialog.getByRole('heading', { name: 'Creating a backup' }).waitFor();
    await page
      .locator('#progress-text')
      .getByText(/exporting the database/i)
      .waitFor();
    await page.screenshot({ path: `${SHOTS}/20-backup-after-reload.png` });
    await unblock();
    release(dumps);
    await dialog.getByText(/Backup created: gem-backup-/).waitFor({ timeout: 60_000 });
    await dialog.getByRole('button', { name: 'Close' }).click();
    const [backup] = (await api('/backups')) as { filename: string }[];
    await page.locator(`tr[data-filename="${backup!.filename}"]`).waitFor();
  });

  it('says a job was interrupted, not "Finished", when the agent restarts while it runs', async () => {
    await waitNoJobs();
    const unblock = await lockUsers();
    await page.getByRole('button', { name: 'Create Backup' }).click();
    const dumps = await holdDump();
    await unblock();
    const dialog = page.locator('#progress-dialog');
    await dialog.getByRole('heading', { name: 'Creating a backup' }).waitFor();
    await page
      .locator('#progress-text')
      .getByText(/exporting the database/i)
      .waitFor();
    await killAgent();
    release(dumps, 'SIGKILL');
    await startAgent();
    const text = page.locator('#progress-text');
    // The agent, started again, says what happened to the job (agent/jobs/history.ts).
    await dialog.getByText(/agent stopped/i).waitFor({ timeout: 60_000 });
    await page.screenshot({ path: `${SHOTS}/21-backup-interrupted.png` });
    expect(await text.textContent()).toMatch(/during this backup: nothing was kept/);
    expect(await text.textContent()).not.toMatch(/Finished/);
    expect(await page.locator('#progress-state').getAttribute('data-state')).toBe('interrupted');
    await dialog.getByRole('button', { name: 'Close' }).click();
  });

  it('asks before turning Cloud DR off; Cancel keeps it on, confirming turns it off', async () => {
    await waitNoJobs();
    expect(((await api('/settings')) as { cloudDr: { enabled: boolean } }).cloudDr.enabled).toBe(true);
    const puts: string[] = [];
    page.on('request', (request) => {
      if (request.method() === 'PUT' && request.url().endsWith('/api/v1/settings')) puts.push(request.url());
    });
    const confirm = page.locator('#confirm-dialog');
    await page.locator('#f-cloudDr-enabled').uncheck();
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await confirm.getByRole('heading', { name: 'Turn off Cloud Disaster Recovery?' }).waitFor();
    await page.screenshot({ path: `${SHOTS}/22-cloud-dr-confirm.png` });
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    await expect.poll(() => confirm.evaluate((d: HTMLDialogElement) => d.open)).toBe(false);
    expect(puts).toEqual([]);
    expect(((await api('/settings')) as { cloudDr: { enabled: boolean } }).cloudDr.enabled).toBe(true);

    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await confirm.getByRole('button', { name: 'Turn Off and Delete Cloud Copy' }).click();
    await page
      .locator('#settings-status')
      .getByText(/Settings saved/)
      .waitFor();
    expect(await page.locator('#settings-status').textContent()).toMatch(/was turned off/);
    expect(puts).toHaveLength(1);
    expect(((await api('/settings')) as { cloudDr: { enabled: boolean } }).cloudDr.enabled).toBe(false);
  });
});
