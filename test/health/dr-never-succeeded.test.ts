// Cloud DR that has never succeeded: its age counts from when DR was turned on, so it turns failing and is reminded.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertNotifier } from '../../agent/alerts/notifier';
import { drServiceFor } from '../../agent/dr/service';
import { healthFor } from '../../agent/health/service';
import { DR_AGE_DAYS } from '../../agent/health/sources';
import { alertsModule } from '../../agent/http/routes/alerts';
import { drModule } from '../../agent/http/routes/dr';
import { healthModule } from '../../agent/http/routes/health';
import { settingsModule } from '../../agent/http/routes/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { DR_ENROLLMENT_TOKEN } from '../services/dr-cloud';
import { freePort } from '../services/ports';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { call, startWebhookReceiver } from './helpers';

const DAY = 86_400_000;
let pg: TestPostgres;
let t: TestAgent;
let hooks: Awaited<ReturnType<typeof startWebhookReceiver>>;
/** The agent's clock for health and alerts: moved forward by the test, never waited for. */
let clock = new Date();
const now = () => clock;
const advance = (ms: number) => {
  clock = new Date(clock.getTime() + ms);
};

beforeAll(async () => {
  ({ pg, hooks } = await startAll({ pg: startPostgres, hooks: startWebhookReceiver }));
  // Nothing listens on this port: every push is refused, as with a cloud that is down for good.
  const drUrl = `http://127.0.0.1:${await freePort()}`;
  t = await startTestAgent(pg, {
    modules: [settingsModule, healthModule, alertsModule, drModule],
    env: { GEM_DR_URL: drUrl, GEM_DR_ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN },
  });
  drServiceFor(t.agent, { timeoutMs: 5000, now });
  healthFor(t.agent, { now, offsiteProbeIntervalMs: 0 });
  const saved = await call(t, 'PUT', '/settings', {
    cloudDr: { enabled: true },
    alerts: { webhooks: [{ url: hooks.url, secret: 'webhook-secret-for-the-test-0123' }] },
  });
  expect(saved.status, JSON.stringify(saved.body)).toBe(200);
}, 60_000);

afterAll(async () => {
  if (t) healthFor(t.agent).stop();
  await t?.close();
  await Promise.all([pg?.stop(), hooks?.close()]);
});

async function drHealth(): Promise<{ status: string; reason: string; armedAt: string | null }> {
  const res = await call(t, 'GET', '/health');
  expect(res.status).toBe(200);
  return res.body.areas.dr;
}

async function failedPush(): Promise<void> {
  const job = await t.agent.jobs.waitFor((await drServiceFor(t.agent).startPush('nightly')).id);
  expect(job.state).toBe('failed');
}

describe('Cloud DR that never succeeded', () => {
  it('turns failing once DR has been on longer than DR_AGE_DAYS.failing without a success, and is reminded', async () => {
    const armed = await drHealth();
    expect(armed.status).toBe('ok');
    const notifier = new AlertNotifier(t.agent, healthFor(t.agent), { now, webhookTimeoutMs: 5000 });
    expect((await notifier.check()).filter((a) => a.area === 'dr')).toEqual([]);

    // Every nightly push fails; none ever succeeds.
    for (let day = 1; day <= DR_AGE_DAYS.failing + 1; day++) {
      advance(DAY);
      await failedPush();
    }
    const dr = await drHealth();
    expect((await drServiceFor(t.agent).status()).lastSuccess).toBeNull();
    expect(dr.status, dr.reason).toBe('failing');
    expect(dr.reason).toMatch(/No Cloud DR push has succeeded yet/);

    const sent = (await notifier.check()).filter((a) => a.area === 'dr');
    expect(sent.map((a) => a.event)).toEqual(['failing']);
    expect(hooks.received.some((h) => h.json.area === 'dr' && h.json.event === 'failing')).toBe(true);
    advance(DAY);
    await failedPush();
    const reminded = (await notifier.check()).filter((a) => a.area === 'dr');
    expect(reminded.map((a) => a.event)).toEqual(['reminder']);
  });

  it('starts the clock afresh when DR is turned off and on again', async () => {
    expect((await call(t, 'PUT', '/settings', { cloudDr: { enabled: false } })).status).toBe(200);
    await drServiceFor(t.agent).settled();
    const off = await drHealth();
    expect(off.armedAt).toBeNull();
    expect(off.status).not.toBe('failing');

    advance(DAY);
    expect((await call(t, 'PUT', '/settings', { cloudDr: { enabled: true } })).status).toBe(200);
    const on = await drHealth();
    expect(on.armedAt).toBe(clock.toISOString());
    // The last push (before the opt-out) failed: a warning, not failing, as DR has just been turned on.
    expect(on.status).toBe('warning');
    advance((DR_AGE_DAYS.failing + 1) * DAY);
    expect((await drHealth()).status).toBe('failing');
  });
});
