// The page's status panel in a real Chromium names a broken alert channel: "Alerts" with the agent's
// reason (the channel and its last error), so a webhook that stopped working is not silent.
import { mkdir } from 'node:fs/promises';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HealthReport } from '../../agent/health/model';
import { startWebhook, type WebhookReceiver } from '../alerts/receivers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { launchBrowser, openSignedIn, type ServedApp, serveApp } from '../services/browser';
import { startPostgres, type TestPostgres } from '../services/postgres';

const SHOTS = 'test-artifacts/screenshots';

let pg: TestPostgres;
let t: TestAgent;
let hook: WebhookReceiver;
let served: ServedApp;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  [t, hook, browser] = await Promise.all([startTestAgent(pg), startWebhook(), launchBrowser()]);
  served = await serveApp(t.app);
  page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.setDefaultTimeout(20_000);
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await served?.close();
  await t?.close();
  await Promise.all([pg?.stop(), hook?.close()]);
});

describe('the status panel and the alert channels', () => {
  it('shows a webhook whose Test alert failed as a warning of the Alerts area', async () => {
    hook.answer = 500;
    const put = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ alerts: { webhooks: [{ url: hook.url, secret: 'webhook-secret-0123' }] } }),
    });
    expect(put.status, await put.clone().text()).toBe(200);
    expect((await t.request('/api/v1/alerts/test', { method: 'POST' })).status).toBe(200);
    const report = (await (await t.request('/api/v1/health')).json()) as HealthReport;
    expect(report.areas.alerts.status).toBe('warning');

    await openSignedIn(page, served.url);
    await expect
      .poll(() => page.locator('#status-areas li').allTextContents())
      .toContainEqual(`Warning Alerts: ${report.areas.alerts.reason}`);
    await page.screenshot({ path: `${SHOTS}/status-alerts-channel-broken.png` });
  });
});
