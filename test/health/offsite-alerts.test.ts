import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertNotifier, installationTag } from '../../agent/alerts/notifier';
import { SIGNATURE_HEADER, verifyAlertSignature } from '../../agent/alerts/signature';
import { healthFor } from '../../agent/health/service';
import { alertsModule } from '../../agent/http/routes/alerts';
import { healthModule } from '../../agent/http/routes/health';
import { settingsModule } from '../../agent/http/routes/settings';
import { offsiteServiceFor } from '../../agent/offsite/service';
import { webhookUrlForDisplay } from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import {
  backupNow,
  call,
  downloadKeys,
  type ReceivedHook,
  sftpSection,
  startWebhookReceiver,
} from './helpers';

const SECRET = 'webhook-secret-for-the-test-0123';
let pg: TestPostgres;
let sshd: SshdService;
let t: TestAgent;
let hooks: Awaited<ReturnType<typeof startWebhookReceiver>>;

beforeAll(async () => {
  ({ pg, sshd, hooks } = await startAll({ pg: startPostgres, sshd: startSshd, hooks: startWebhookReceiver }));
  t = await startTestAgent(pg, { modules: [settingsModule, healthModule, alertsModule] });
  // A frozen server fails in 2 s instead of 20; every health evaluation contacts the destination.
  answerWithin(2000);
  healthFor(t.agent, { offsiteProbeIntervalMs: 0 });
  const saved = await call(t, 'PUT', '/settings', {
    offsite: { sftp: sftpSection(sshd) },
    alerts: { webhooks: [{ url: hooks.url, secret: SECRET }] },
  });
  expect(saved.status, JSON.stringify(saved.body)).toBe(200);
  // The answer shows the address only in its display form; the agent keeps the full one.
  expect(saved.body.alerts.webhooks).toEqual([
    { url: webhookUrlForDisplay(hooks.url), urlMasked: true, secret: { set: true } },
  ]);
  expect(t.agent.settings.get().alerts.webhooks).toEqual([{ url: hooks.url, secret: SECRET }]);
  await downloadKeys(t);
  await backupNow(t);
}, 60_000);

afterAll(async () => {
  sshd?.resume();
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop(), hooks?.close()]);
});

/**
 * How long the SFTP provider waits for the server's answer (its handshake). While the server is frozen
 * every probe fails whatever the wait (a frozen sshd never answers): those tests wait a moment, not 2 s.
 */
function answerWithin(timeoutMs: number): void {
  offsiteServiceFor(t.agent, { providerOverrides: { sftp: { timeoutMs } } });
}

const notifier = (now?: () => Date) =>
  new AlertNotifier(t.agent, healthFor(t.agent), { ...(now ? { now } : {}), webhookTimeoutMs: 5000 });

function checkSigned(hook: ReceivedHook): void {
  const header = hook.headers[SIGNATURE_HEADER.toLowerCase()] as string;
  expect(header).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
  expect(verifyAlertSignature(header, hook.body, SECRET)).toBe(true);
  expect(verifyAlertSignature(header, hook.body, 'another-secret')).toBe(false);
  expect(verifyAlertSignature(header, hook.body.replace('offsite', 'offsitX'), SECRET)).toBe(false);
}

describe('offsite health and alerts against a real SFTP server', () => {
  it('is all ok at first and sends nothing', async () => {
    const health = await call(t, 'GET', '/health');
    expect(health.status).toBe(200);
    expect(health.body.status, JSON.stringify(health.body.areas)).toBe('ok');
    expect(health.body.areas.offsite.destinations.sftp.status).toBe('ok');
    expect(Object.keys(health.body.areas).sort()).toEqual(
      ['alerts', 'backups', 'disk', 'dr', 'jobs', 'keys', 'offsite', 'verification'].sort(),
    );
    expect(await notifier().check()).toEqual([]);
    expect(hooks.received).toHaveLength(0);
  });

  it('turns the offsite area to failing when the SFTP server stops, and sends exactly one signed webhook', async () => {
    sshd.pause();
    answerWithin(250);
    const n = notifier();
    const sent = await n.check();
    expect(sent.map((s) => [s.area, s.event])).toEqual([['offsite', 'failing']]);
    expect(hooks.received).toHaveLength(1);
    const hook = hooks.received[0]!;
    checkSigned(hook);
    expect(hook.json).toMatchObject({
      type: 'gem-backup.alert',
      event: 'failing',
      area: 'offsite',
      status: 'failing',
      previousStatus: 'ok',
      installationTag: installationTag(t.agent.keyring.installationId),
    });
    expect(hook.json.reason).toMatch(/SFTP server cannot be reached/);

    const health = await call(t, 'GET', '/health');
    expect(health.body.status).toBe('failing');
    expect(health.body.areas.offsite.status).toBe('failing');

    // Still failing: nothing more, neither from this notifier nor from one started after a restart.
    expect(await n.check()).toEqual([]);
    expect(await notifier().check()).toEqual([]);
    expect(hooks.received).toHaveLength(1);
  }, 60_000);

  it('reminds once a day while it stays failing', async () => {
    const tomorrow = () => new Date(Date.now() + 25 * 3_600_000);
    const sent = await notifier(tomorrow).check();
    expect(sent.map((s) => [s.area, s.event])).toEqual([['offsite', 'reminder']]);
    expect(hooks.received).toHaveLength(2);
    checkSigned(hooks.received[1]!);
    expect(hooks.received[1]!.json.event).toBe('reminder');
    expect(await notifier(tomorrow).check()).toEqual([]);
  }, 60_000);

  it('sends one recovery alert when the server is back', async () => {
    answerWithin(2000);
    sshd.resume();
    const n = notifier();
    const sent = await n.check();
    expect(sent.map((s) => [s.area, s.event])).toEqual([['offsite', 'recovered']]);
    expect(hooks.received).toHaveLength(3);
    checkSigned(hooks.received[2]!);
    expect(hooks.received[2]!.json).toMatchObject({
      event: 'recovered',
      status: 'ok',
      previousStatus: 'failing',
    });
    expect(await n.check()).toEqual([]);
    expect(hooks.received).toHaveLength(3);
    expect((await call(t, 'GET', '/health')).body.status).toBe('ok');
  }, 60_000);

  it('sends a test alert on request', async () => {
    const res = await call(t, 'POST', '/alerts/test');
    expect(res.status).toBe(200);
    expect(res.body.sent).toBe(true);
    expect(res.body.deliveries).toEqual([{ channel: `webhook ${new URL(hooks.url).origin}`, ok: true }]);
    const hook = hooks.received.at(-1)!;
    expect(hook.json).toMatchObject({ event: 'test', area: 'test' });
    expect(verifyAlertSignature(hook.headers['x-gem-signature'] as string, hook.body, SECRET)).toBe(true);
  });
});
