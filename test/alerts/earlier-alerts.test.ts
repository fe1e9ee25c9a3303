// Alerts raised while no channel was set up are not lost: a channel set up (or turned on) later is sent,
// once, the ones still current, marked as earlier; one that recovered meanwhile is not sent.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertNotifier } from '../../agent/alerts/notifier';
import type { HealthArea } from '../../agent/health/model';
import { healthFor } from '../../agent/health/service';
import { settingsModule } from '../../agent/http/routes/settings';
import { call, downloadKeys } from '../health/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { until } from '../services/wait';
import { type SmtpReceiver, startSmtp, startWebhook, type WebhookReceiver } from './receivers';

const SECRET = 'webhook-secret-for-the-test-0123';
const PATH_TOKEN = 'T0KEN-in-the-path-never-kept-91af';

let pg: TestPostgres;
let t: TestAgent;
let smtp: SmtpReceiver;
const hooks: WebhookReceiver[] = [];
/** The areas not ok once the keys are downloaded, and when they were first alerted (to nobody). */
let current: HealthArea[];
let firstCheckAt: string;
/** A webhook set up just after an upgrade. */
let found: WebhookReceiver;

const notifier = () => new AlertNotifier(t.agent, healthFor(t.agent), { webhookTimeoutMs: 5000 });
const deliveryFile = () => join(t.agent.config.dataDir, 'alerts-delivery.json');

async function webhook(): Promise<WebhookReceiver> {
  const hook = await startWebhook(`/hooks/${PATH_TOKEN}-${hooks.length}`);
  hooks.push(hook);
  return hook;
}

/** Sets up these channels (each webhook, and e-mail when `email`), replacing the alert settings. */
async function setUp(webhooks: WebhookReceiver[], email = false): Promise<void> {
  const alerts = {
    webhooks: webhooks.map((h) => ({ url: h.url, secret: SECRET })),
    email: {
      enabled: email,
      host: '127.0.0.1',
      port: smtp.port,
      from: 'gem@example.com',
      to: ['ops@example.com'],
    },
  };
  const res = await call(t, 'PUT', '/settings', { alerts });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
}

/** The areas of the earlier alerts `hook` was sent. */
const earlierTo = (hook: WebhookReceiver) =>
  hook.received
    .filter((body) => body.earlier)
    .map((body) => body.area)
    .sort();
const earlierMails = () => smtp.messages.filter((m) => /^Subject: .* \(earlier alert, /m.test(m));

beforeAll(async () => {
  pg = await startPostgres();
  [t, smtp] = await Promise.all([startTestAgent(pg, { modules: [settingsModule] }), startSmtp()]);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), smtp?.close(), ...hooks.map((h) => h.close())]);
});

describe('alerts raised before a channel was set up', () => {
  it('are recorded without a channel; the keys area recovers meanwhile', async () => {
    const settings = await call(t, 'PUT', '/settings', {
      autoBackup: { enabled: false },
      verification: { enabled: false },
    });
    expect(settings.status).toBe(200);
    const n = notifier();
    const first = await n.check();
    firstCheckAt = (await n.state.get()).backups!.sentAt;
    expect(first.find((s) => s.area === 'backups')).toMatchObject({ event: 'failing', deliveries: [] });
    expect(first.find((s) => s.area === 'keys')).toMatchObject({ event: 'warning', deliveries: [] });
    await downloadKeys(t);
    expect((await n.check()).map((s) => [s.area, s.event])).toEqual([['keys', 'recovered']]);
    const report = healthFor(t.agent).lastReport()!;
    current = (Object.keys(report.areas) as HealthArea[])
      .filter((a) => report.areas[a].status !== 'ok')
      .sort();
    // Two at least: a channel that fails is not sent the second.
    expect(current).toEqual(expect.arrayContaining(['backups', 'verification']));
    expect(current).not.toContain('keys');
  });

  it('the first webhook set up is sent the ones still current, once, marked as earlier', async () => {
    const hook = await webhook();
    await setUp([hook]);
    expect(await notifier().check()).toEqual([]);
    expect(earlierTo(hook)).toEqual(current);
    const backups = hook.received.find((body) => body.area === 'backups');
    expect(backups).toMatchObject({
      type: 'gem-backup.alert',
      event: 'failing',
      status: 'failing',
      previousStatus: null,
      reason: 'There is no backup and automatic backups are off',
      earlier: true,
      since: firstCheckAt,
    });
    expect(Date.parse(backups!.at as string)).toBeGreaterThan(Date.parse(firstCheckAt));
    // Once: neither the next check nor one after a restart sends them again.
    await notifier().check();
    await notifier().check();
    expect(hook.received).toHaveLength(current.length);
  });

  it('e-mail turned on later gets them too, and the webhook nothing more', async () => {
    await setUp([hooks[0]!], true);
    await notifier().check();
    expect(earlierMails()).toHaveLength(current.length);
    expect(smtp.messages).toHaveLength(current.length);
    const backups = smtp.messages.find((m) => m.includes('Subject: [FAILING] GEM Backup: backups '))!;
    expect(backups).toContain(
      'Subject: [FAILING] GEM Backup: backups is failing (earlier alert, raised before this channel was set up)',
    );
    expect(backups).toContain(`Earlier alert: raised ${firstCheckAt}, before this channel was set up`);
    expect(hooks[0]!.received).toHaveLength(current.length);
  });

  it('a new channel that fails is tried again at the next check, after one failed request', async () => {
    const broken = await webhook();
    broken.answer = 500;
    await setUp([hooks[0]!, broken], true);
    await notifier().check();
    expect(broken.requests).toBe(1);
    broken.answer = 204;
    // Meanwhile the alerts area warns of it (and then recovers): the other channels hear that, not the rest again.
    await notifier().check();
    await notifier().check();
    expect(earlierTo(broken)).toEqual(current);
    expect(earlierTo(hooks[0]!)).toEqual(current);
    expect(earlierMails()).toHaveLength(current.length);
    expect(hooks[0]!.received.filter((body) => body.area === 'alerts').map((body) => body.event)).toEqual([
      'warning',
      'recovered',
    ]);
  });

  it('a new channel that fails part-way is sent only the ones it missed, each once', async () => {
    const partial = await webhook();
    // The first earlier alert gets through, the second is refused once.
    partial.answers = [204, 500];
    await setUp([hooks[0]!, hooks[1]!, partial], true);
    const others = () => [hooks[0]!.received.length, hooks[1]!.received.length, smtp.messages.length];
    const before = others();
    await notifier().check();
    expect(partial.requests).toBe(2);
    expect(partial.received).toHaveLength(1);
    const first = partial.received[0]!;
    expect(first).toMatchObject({ earlier: true });
    // What it received is kept per alert, on disk (each check here is a new notifier, as after a restart).
    const saved = JSON.parse(await readFile(deliveryFile(), 'utf8'));
    const records = Object.values(saved.earlierSent) as Array<Record<string, unknown>>;
    expect(records).toHaveLength(1);
    expect(Object.keys(records[0]!)).toEqual([first.area]);
    // The next check sends it only the ones it missed (and the alerts area's warning about it, as to all).
    await notifier().check();
    const retried = partial.received.slice(1).filter((body) => body.earlier);
    expect(retried.map((body) => body.area).sort()).toEqual(current.filter((a) => a !== first.area));
    expect(earlierTo(partial)).toEqual(current);
    await notifier().check();
    await notifier().check();
    // Over the whole run, each alert once: the earlier ones, and the alerts area's warning and recovery.
    expect(earlierTo(partial)).toEqual(current);
    const rest = partial.received.filter((body) => !body.earlier).map((body) => `${body.area} ${body.event}`);
    expect(rest).toEqual(['alerts warning', 'alerts recovered']);
    // The channels already told heard only of the alerts area.
    const after = others();
    expect(after.map((n, i) => n - before[i]!)).toEqual([2, 2, 2]);
    expect(JSON.parse(await readFile(deliveryFile(), 'utf8')).earlierSent).toBeUndefined();
  });

  it('a delivery file of the previous version (toldChannels only) loads; its told channels are not sent them again', async () => {
    const saved = JSON.parse(await readFile(deliveryFile(), 'utf8'));
    expect(saved.toldChannels).toHaveLength(4);
    await writeFile(
      deliveryFile(),
      JSON.stringify({ channels: {}, undelivered: {}, toldChannels: saved.toldChannels }),
    );
    const n = notifier();
    expect(await n.delivery.current()).toEqual({
      channels: {},
      undelivered: {},
      toldChannels: saved.toldChannels,
    });
    const told = [...hooks];
    expect(told).toHaveLength(3);
    const counts = () => [...told.map((h) => h.requests), smtp.messages.length];
    const before = counts();
    // One more webhook beside them: it alone is sent the ones still current.
    const late = await webhook();
    await setUp([...told, late], true);
    expect(await n.check()).toEqual([]);
    expect(counts()).toEqual(before);
    expect(earlierTo(late)).toEqual(current);
    await notifier().check();
    expect(counts()).toEqual(before);
    expect(late.received).toHaveLength(current.length);
  });

  it('after an upgrade, the channels found at the first check count as told', async () => {
    const saved = JSON.parse(await readFile(deliveryFile(), 'utf8'));
    delete saved.toldChannels;
    await writeFile(deliveryFile(), JSON.stringify(saved));
    found = await webhook();
    await setUp([found]);
    await notifier().check();
    expect(found.requests).toBe(0);
    expect(JSON.parse(await readFile(deliveryFile(), 'utf8')).toldChannels).toHaveLength(1);
  });

  it('a channel set up while the agent runs is sent them at once, not at the next check', async () => {
    const n = new AlertNotifier(t.agent, healthFor(t.agent), {
      intervalMs: 3_600_000,
      webhookTimeoutMs: 5000,
    });
    n.start();
    try {
      const added = await webhook();
      await setUp([found, added]);
      await until(async () => added.received.length === current.length, 'the earlier alerts', 100);
      await n.settled();
      expect(earlierTo(added)).toEqual(current);
      expect(found.requests).toBe(0);
    } finally {
      n.stop();
    }
  });

  it('keeps no address, token or secret of a channel', async () => {
    const saved = await readFile(deliveryFile(), 'utf8');
    expect(saved).not.toContain(PATH_TOKEN);
    expect(saved).not.toContain(SECRET);
    expect(saved).not.toContain('127.0.0.1');
    for (const key of JSON.parse(saved).toldChannels) expect(key).toMatch(/^[0-9a-f]{16}$/);
  });
});
