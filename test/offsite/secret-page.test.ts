// The page asks for a saved password again when its destination's host or port is edited, and never sends it elsewhere.
import { createServer, type Server } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { drModule } from '../../agent/http/routes/dr';
import { maintenanceModule } from '../../agent/http/routes/maintenance';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { call, FAST } from './helpers';

let pg: TestPostgres;
let sshd: SshdService;
let t: TestAgent;
let served: ServedApp;
let browser: Browser;
let page: Page;
/** A listener on another loopback host that counts the connections made to it. */
let elsewhere: Server;
let elsewherePort = 0;
let connections = 0;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  t = await startTestAgent(pg, { modules: [settingsModule, maintenanceModule, drModule, offsiteModule] });
  offsiteServiceFor(t.agent, FAST);
  elsewhere = createServer((socket) => {
    connections += 1;
    socket.destroy();
  });
  await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.2', resolve));
  elsewherePort = (elsewhere.address() as { port: number }).port;
  served = await serveApp(t.app);
  browser = await launchBrowser();
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.setDefaultTimeout(20_000);
});
afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await new Promise((resolve) => elsewhere?.close(resolve));
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

describe('a saved SFTP password on the page', () => {
  it('asks for it again when the host or port changes; Test Connection and Save send it nowhere', async () => {
    const saved = await call(t, 'PUT', '/settings', {
      offsite: {
        sftp: {
          enabled: true,
          host: sshd.host,
          port: sshd.port,
          username: sshd.passwordUser.username,
          remotePath: 'secret-page/gem',
          auth: { password: sshd.passwordUser.password },
        },
      },
    });
    expect(saved.status, JSON.stringify(saved.body)).toBe(200);

    await openSignedIn(page, served.url);
    const password = page.locator('#f-offsite-sftp-auth-password');
    const host = page.locator('#f-offsite-sftp-host');
    const port = page.locator('#f-offsite-sftp-port');
    await expect.poll(() => password.getAttribute('placeholder')).toBe('Saved. Leave empty to keep it.');

    await host.fill('127.0.0.2');
    expect(await password.getAttribute('placeholder')).toBe('Enter the password again: the host changed');
    await host.fill(sshd.host);
    expect(await password.getAttribute('placeholder')).toBe('Saved. Leave empty to keep it.');
    await port.fill(String(elsewherePort));
    expect(await password.getAttribute('placeholder')).toBe('Enter the password again: the port changed');

    // Pointed at the other server with the password left empty: the test is refused, nothing connects.
    await host.fill('127.0.0.2');
    await page.locator('#sftp-test').click();
    const result = page.locator('#sftp-test-result');
    await expect.poll(() => result.textContent()).toMatch(/enter the password again: the host changed/);
    expect(connections).toBe(0);

    // Save says which field to fill in and saves nothing.
    await page.getByRole('button', { name: 'Save All Settings' }).click();
    await expect
      .poll(() => page.locator('#settings-status').textContent())
      .toBe('Not saved: correct the field marked below.');
    expect(await page.locator('#err-f-offsite-sftp-auth-password').textContent()).toBe(
      'Enter the password again: the host changed.',
    );
    expect((await call(t, 'GET', '/settings')).body.offsite.sftp).toMatchObject({
      host: sshd.host,
      port: sshd.port,
    });
    expect(connections).toBe(0);

    // Back to the saved server: the saved password is kept and signs in.
    await host.fill(sshd.host);
    await port.fill(String(sshd.port));
    expect(await password.getAttribute('placeholder')).toBe('Saved. Leave empty to keep it.');
    await page.locator('#sftp-test').click();
    await expect.poll(() => result.textContent(), { timeout: 20_000 }).toMatch(/^Connected to /);
    expect(connections).toBe(0);
  });
});
