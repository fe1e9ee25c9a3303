// The progress dialog says about how long the current step has left, in a real browser against a real
// agent uploading a real backup to the test sshd: through a gate that passes the agent's bytes only as far
// as the test allows, while the page's clock (Playwright's) moves only when the test moves it. Nothing in
// the first seconds, "about … left" at a steady pace, nothing once the upload stalls, none at the end.
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { backupNow, filenameOf } from '../offsite/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';

const SHOTS = 'test-artifacts/screenshots';
const MIB = 1024 * 1024;

interface Gate {
  port: number;
  /** Lets `bytes` more of the clients' bytes through to the server (Infinity: all from now on). */
  allow(bytes: number): void;
  close(): Promise<void>;
}

/**
 * A TCP relay to `target` on 127.0.0.1 that passes what the clients send only as far as `allow()` let it
 * (beginning with `initial` bytes, enough to sign in and list), and all the server sends back.
 */
async function startGate(target: number, initial: number): Promise<Gate> {
  let budget = initial;
  const pumps = new Set<() => void>();
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(target, '127.0.0.1');
    const queue: Buffer[] = [];
    let queued = 0;
    let ended = false;
    const pump = () => {
      while (budget > 0 && queue.length > 0) {
        const chunk = queue[0]!;
        const part = chunk.subarray(0, budget);
        if (part.length === chunk.length) queue.shift();
        else queue[0] = chunk.subarray(part.length);
        budget -= part.length;
        queued -= part.length;
        upstream.write(part);
      }
      if (ended && queue.length === 0) upstream.end();
      // Held bytes wait in the kernel's buffers, then in the agent's: its upload waits as for a slow link.
      if (queued > MIB) client.pause();
      else client.resume();
    };
    client.on('data', (data: Buffer) => {
      queue.push(data);
      queued += data.length;
      pump();
    });
    client.on('end', () => {
      ended = true;
      pump();
    });
    upstream.pipe(client);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        sockets.delete(socket);
        pumps.delete(pump);
        client.destroy();
        upstream.destroy();
      });
    }
    pumps.add(pump);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    allow(bytes) {
      budget += bytes;
      for (const pump of pumps) pump();
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

let pg: TestPostgres;
let sshd: SshdService;
let browser: Browser;
/** Between the agent and sshd. */
let gate: Gate;
let t: TestAgent;
/** The backup the sync uploads. */
let backupName: string;
let served: ServedApp;
let page: Page;

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  ({ pg, sshd, browser } = await startAll({ pg: startPostgres, sshd: startSshd, browser: launchBrowser }));
  gate = await startGate(sshd.port, 256 * 1024);
  t = await startTestAgent(pg, { modules: [offsiteModule, settingsModule] });
  // The upload waits on the gate between the test's steps: the stall watchdog must outlast the test.
  offsiteServiceFor(t.agent, { stallTimeoutMs: 120_000 });
  // Random bytes do not compress: a backup of 40 MiB that the gate lets through a little at a time.
  await writeFile(join(t.agent.sources.scriptsDir, 'noise.bin'), randomBytes(40 * MIB));
  backupName = filenameOf(await backupNow(t));
  await t.agent.settings.update({
    offsite: {
      sftp: {
        enabled: true,
        host: sshd.host,
        port: gate.port,
        username: sshd.passwordUser.username,
        remotePath: 'time-left',
        auth: { password: sshd.passwordUser.password },
        autoUpload: false,
      },
    },
  });
  served = await serveApp(t.app);
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
  // The page's clock moves only when the test moves it: the pace it sees is the test's, not the machine's.
  await page.clock.install();
  await page.clock.pauseAt(Date.now() + 1000);
  await openSignedIn(page, served.url);
  await page.getByRole('heading', { name: 'Local backups' }).waitFor();
}, 120_000);
afterEach(async (context) => {
  if (context.task.result?.state === 'fail') await page.screenshot({ path: `${SHOTS}/failed-time-left.png` });
});
afterAll(async () => {
  gate?.allow(Number.POSITIVE_INFINITY);
  await browser?.close();
  await served?.close();
  await t?.close();
  await gate?.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

const amount = () =>
  page
    .locator('#progress-bytes')
    .textContent()
    .then((text) => text ?? '');
/** The amount's "12 MB of 40 MB", without what follows it. */
const bytesPart = (text: string) => text.split(' · ')[0]!;

/**
 * Lets the next 2 MiB of the upload through and waits until the dialog shows the count it reached. More
 * goes through now and then until it does: the agent reads ahead of what the server took by its write
 * window, and reports progress at most five times a second (a report too soon after the last is not sent).
 * Asked from here: Playwright's waits run on the page's timers, which its held clock holds too.
 */
async function uploadMore(): Promise<string> {
  const before = bytesPart(await amount());
  gate.allow(2 * MIB);
  for (let tries = 1; ; tries++) {
    const now = await amount();
    if (bytesPart(now) !== before) return now;
    expect(tries, `the upload did not move past ${before}`).toBeLessThan(200);
    if (tries % 2 === 0) gate.allow(512 * 1024);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('the time left in the progress dialog', () => {
  it('says about how long the upload has left at a steady pace, nothing at its start, on a stall, or at the end', async () => {
    await page.locator('#offsite-sftp').getByRole('button', { name: 'Sync Now' }).click();
    const dialog = page.locator('#progress-dialog');
    await dialog.getByText(`Uploading ${backupName}`).waitFor();

    // Two seconds of the page’s time, then the next 2 MiB or so: about 1.5 MB/s as the page sees it.
    const shown: string[] = [];
    for (let step = 0; step < 5; step++) {
      await page.clock.runFor(2000);
      shown.push(await uploadMore());
    }
    // Measured from 2 s into the step (what it sent at once does not count), over 5 s at least: nothing
    // at 2, 4 and 6 s, a figure at 8 and 10 s.
    expect(
      shown.slice(0, 3).filter((text) => text.includes('left')),
      shown.join(' | '),
    ).toEqual([]);
    for (const text of shown.slice(3))
      expect(text, shown.join(' | ')).toMatch(/^\d+(\.\d)? MB of 40 MB · about \d+ (s|min) left$/);
    await page.screenshot({ path: `${SHOTS}/time-left-upload.png` });

    // Held: after 10 s of no progress (the stall limit; a last report may still come in the first seconds)
    // the figure goes rather than grow, and before the pace's 30 s window is over; the bytes stay.
    let stalled = await amount();
    for (let waited = 0; stalled.includes('left') && waited < 20_000; waited += 2000) {
      await page.clock.runFor(2000);
      stalled = await amount();
    }
    expect(stalled).toMatch(/^\d+(\.\d)? MB of 40 MB$/);

    // Let the rest through: the job ends, and nothing says time left any more.
    gate.allow(Number.POSITIVE_INFINITY);
    await dialog.getByRole('button', { name: 'Close' }).waitFor({ timeout: 60_000 });
    expect(await page.locator('#progress-state').getAttribute('data-state')).toBe('succeeded');
    // Also once the page's second ticks on: nothing redraws the ended job's amount.
    await page.clock.runFor(2000);
    expect(await amount()).toBe('');
    expect(await dialog.textContent()).not.toMatch(/about \d+ (s|min) left/);
    await dialog.getByRole('button', { name: 'Close' }).click();
  });
});
