// A broken alert channel shows in health: the alerts area names the channel and its last error (never
// its address's token, its secret or the SMTP password) until a delivery gets through again.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertNotifier } from '../../agent/alerts/notifier';
import { healthFor } from '../../agent/health/service';
import { alertsModule } from '../../agent/http/routes/alerts';
import { healthModule } from '../../agent/http/routes/health';
import { settingsModule } from '../../agent/http/routes/settings';
import { call } from '../health/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SmtpReceiver, startSmtp, startWebhook, type WebhookReceiver } from './receivers';

const SECRET = 'webhook-secret-for-the-test-0123';
const PATH_TOKEN = 'T0KEN-in-the-path-never-shown-77c1';
const SMTP_PASSWORD = 'smtp-password-never-shown-4b9e';

let pg: TestPostgres;
let t: TestAgent;
let hook: WebhookReceiver;
let smtp: SmtpReceiver;
let webhookChannel: string;
const emailChannel = 'e-mail via 127.0.0.1';
/** Every health answer and alert body seen, to look for secrets at the end. */
const seen: string[] = [];

interface AlertsArea {
  status: string;
  reason: string;
  channels: Array<{ channel: string; ok: boolean; error?: string; failingSince?: string; attempts?: number }>;
}

async function alertsArea(): Promise<AlertsArea> {
  const health = await call(t, 'GET', '/health');
  expect(health.status).toBe(200);
  seen.push(JSON.stringify(health.body));
  return health.body.areas.alerts;
}

async function testAlert(): Promise<Array<{ channel: string; ok: boolean; error?: string }>> {
  const res = await call(t, 'POST', '/alerts/test');
  expect(res.status).toBe(200);
  return res.body.deliveries;
}

const email = (extra: Record<string, unknown> = {}) => ({
  enabled: true,
  host: '127.0.0.1',
  port: smtp.port,
  from: 'gem@example.com',
  to: ['ops@example.com'],
  ...extra,
});

async function putAlerts(alerts: unknown): Promise<void> {
  const res = await call(t, 'PUT', '/settings', { alerts });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
}

beforeAll(async () => {
  pg = await startPostgres();
  [t, hook, smtp] = await Promise.all([
    startTestAgent(pg, { modules: [settingsModule, healthModule, alertsModule] }),
    startWebhook(`/hooks/${PATH_TOKEN}`),
    startSmtp(),
  ]);
  webhookChannel = `webhook ${new URL(hook.url).origin}`;
}, 60_000);

afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), hook?.close(), smtp?.close()]);
});

describe('the alerts area of health', () => {
  it('is ok with no channel, and says that health changes are then only logged', async () => {
    const area = await alertsArea();
    expect(area).toMatchObject({ status: 'ok', channels: [] });
    expect(area.reason).toMatch(/^No alert channel is set up \(a webhook or e-mail\): /);
  });

  it('warns naming each broken channel and its error when no alert gets through', async () => {
    hook.answer = 500;
    smtp.refuseRecipients = '550 5.7.1 relaying denied';
    await putAlerts({ webhooks: [{ url: hook.url, secret: SECRET }], email: email() });
    // Set up, never used: nothing is known against them yet.
    expect((await alertsArea()).status).toBe('ok');

    expect(await testAlert()).toEqual([
      { channel: webhookChannel, ok: false, error: 'the webhook answered 500' },
      {
        channel: emailChannel,
        ok: false,
        error: 'the SMTP server refused the recipient ops@example.com: 550 5.7.1 relaying denied',
      },
    ]);
    const area = await alertsArea();
    expect(area.status).toBe('warning');
    expect(area.reason).toMatch(
      new RegExp(
        `^The alert channel ${webhookChannel} failed: the webhook answered 500 \\(failing for \\d+ min\\); ` +
          `the alert channel ${emailChannel} failed: the SMTP server refused the recipient ops@example.com: ` +
          `550 5.7.1 relaying denied \\(failing for \\d+ min\\)\\. No alert reaches you: fix them, then send a Test alert$`,
      ),
    );
    expect(area.channels).toEqual([
      expect.objectContaining({
        channel: webhookChannel,
        ok: false,
        error: 'the webhook answered 500',
        attempts: 1,
      }),
      expect.objectContaining({ channel: emailChannel, ok: false, attempts: 1 }),
    ]);
    expect((await call(t, 'GET', '/health')).body.status).not.toBe('ok');
  });

  it('says which channels still work, and its warning reaches them as an alert', async () => {
    hook.answer = 204;
    expect((await testAlert()).map((d) => d.ok)).toEqual([true, false]);
    const area = await alertsArea();
    expect(area.status).toBe('warning');
    expect(area.reason).toMatch(
      new RegExp(
        `^The alert channel ${emailChannel} failed: .+\\. Alerts still go to ${webhookChannel}: fix it`,
      ),
    );
    expect(area.reason).not.toContain('answered 500');
    // The next check alerts every channel about it: the webhook tells that e-mail is broken.
    const sent = await new AlertNotifier(t.agent, healthFor(t.agent), { webhookTimeoutMs: 5000 }).check();
    expect(sent.find((s) => s.area === 'alerts')).toMatchObject({ event: 'warning' });
    const told = hook.received.find((body) => body.area === 'alerts');
    expect(told).toMatchObject({ event: 'warning', status: 'warning', reason: area.reason });
    seen.push(...hook.received.map((body) => JSON.stringify(body)));
  });

  it('names a refusal to send the SMTP password in the clear, never the password', async () => {
    smtp.refuseRecipients = undefined;
    await putAlerts({
      webhooks: [{ url: hook.url, secret: SECRET }],
      email: email({ username: 'gem', password: SMTP_PASSWORD }),
    });
    expect((await testAlert())[1]).toMatchObject({ ok: false });
    const area = await alertsArea();
    expect(area.reason).toContain(
      `${emailChannel} failed: the SMTP server offers no TLS: the password is not sent in the clear`,
    );
  });

  it('is ok again once every channel delivers, and forgets a channel that is no longer set up', async () => {
    hook.answer = 503;
    await putAlerts({ webhooks: [{ url: hook.url, secret: SECRET }], email: email() });
    expect((await testAlert()).map((d) => d.ok)).toEqual([false, true]);
    expect((await alertsArea()).reason).toMatch(
      new RegExp(
        `^The alert channel ${webhookChannel} failed: the webhook answered 503 .+ Alerts still go to ${emailChannel}:`,
      ),
    );
    // The broken webhook removed: nothing is said of it any more, though nothing was sent since.
    await putAlerts({ webhooks: [], email: email() });
    const area = await alertsArea();
    expect(area).toMatchObject({ status: 'ok', reason: `Alerts go to ${emailChannel}` });
    expect(area.channels).toEqual([{ channel: emailChannel, ok: true }]);
  });

  it('never shows the webhook path token, its secret or the SMTP password', async () => {
    const saved = await readFile(join(t.agent.config.dataDir, 'alerts-delivery.json'), 'utf8');
    expect(seen.length).toBeGreaterThan(5);
    for (const text of [...seen, saved]) {
      expect(text).not.toContain(PATH_TOKEN);
      expect(text).not.toContain(SECRET);
      expect(text).not.toContain(SMTP_PASSWORD);
    }
  });
});
