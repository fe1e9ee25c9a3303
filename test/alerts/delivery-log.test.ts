// Alert channels that stay unreachable: the log says which alert could not go out once, reminds at most
// hourly, says once when a channel works again, and does not repeat itself after a restart.
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertNotifier } from '../../agent/alerts/notifier';
import { healthFor } from '../../agent/health/service';
import { settingsModule } from '../../agent/http/routes/settings';
import { createLogger } from '../../agent/log';
import { startTestAgent, type TestAgent } from '../services/agent';
import { freePort } from '../services/ports';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SmtpReceiver, startSmtp } from './receivers';

const SECRET = 'webhook-secret-for-the-test-0123';
const PATH_TOKEN = 'T0KEN-in-the-path-never-logged-5d1e';
const HOUR = 3_600_000;

interface Line {
  level: string;
  msg: string;
  [field: string]: unknown;
}

let pg: TestPostgres;
let t: TestAgent;
let hookPort: number;
let smtpPort: number;
let hookServer: Server | undefined;
let smtp: SmtpReceiver | undefined;
const raw: string[] = [];
const all: string[] = [];
let offset = 0;
const now = () => new Date(Date.now() + offset);

/** The lines logged since the last call (the agent's logger at debug level, all parsed). */
function taken(): Line[] {
  const lines = raw.splice(0);
  all.push(...lines);
  return lines.map((l) => JSON.parse(l) as Line);
}
const warnings = (lines: Line[]) => lines.filter((l) => l.level === 'warn');

/** A webhook answering every request with `status`. */
async function serveWebhook(status: number): Promise<void> {
  await closeWebhook();
  hookServer = createServer((req, res) => req.resume().on('end', () => res.writeHead(status).end()));
  await new Promise<void>((resolve) => hookServer!.listen(hookPort, '127.0.0.1', resolve));
}
async function closeWebhook(): Promise<void> {
  hookServer?.closeAllConnections();
  await new Promise((resolve) => (hookServer ? hookServer.close(resolve) : resolve(undefined)));
  hookServer = undefined;
}

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule] });
  t.agent.log = createLogger({ level: 'debug', write: (line) => raw.push(line) });
  // Nothing listens on either port yet: both channels are refused.
  [hookPort, smtpPort] = await Promise.all([freePort(), freePort()]);
  const res = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      alerts: {
        webhooks: [{ url: `http://127.0.0.1:${hookPort}/hook/${PATH_TOKEN}`, secret: SECRET }],
        email: {
          enabled: true,
          host: '127.0.0.1',
          port: smtpPort,
          from: 'gem@example.com',
          to: ['ops@example.com'],
        },
      },
    }),
  });
  expect(res.status, await res.clone().text()).toBe(200);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await closeWebhook();
  await Promise.all([pg?.stop(), smtp?.close()]);
});

const notifier = () => new AlertNotifier(t.agent, healthFor(t.agent), { now, webhookTimeoutMs: 5000 });

describe('alert channels that keep failing', () => {
  let first: AlertNotifier;
  /** The areas whose alert is waiting for a channel (a fresh agent: no backup, keys not downloaded). */
  let areas: string[];

  it('the first failure of each channel is one warning naming the alert; retries add none', async () => {
    first = notifier();
    taken();
    for (let i = 0; i < 5; i++) expect(await first.check()).toEqual([]);
    const lines = taken();
    const warned = warnings(lines);
    const undelivered = warned.filter(
      (l) => l.msg === 'an alert could not be delivered; retrying at the next check',
    );
    areas = undelivered.map((l) => l.area as string);
    expect(areas.length).toBeGreaterThan(0);
    // From the second check on, health says that no alert channel works: that is an alert too.
    expect(areas).toContain('alerts');
    expect(new Set(areas).size).toBe(areas.length);
    for (const l of undelivered) {
      expect(l.alert).toMatch(new RegExp(`^\\[(WARNING|FAILING)\\] GEM Backup: ${l.area} `));
      expect(l.detail).toEqual(expect.any(String));
    }
    const failed = warned.filter((l) => l.msg === 'an alert channel failed');
    expect(failed.map((l) => l.channel)).toEqual([
      `webhook http://127.0.0.1:${hookPort}`,
      'e-mail via 127.0.0.1',
    ]);
    // The very first line says which alert could not go out, and why the channel failed.
    expect(warned[0]).toBe(failed[0]);
    expect(warned[0]!.alert).toMatch(/^\[(WARNING|FAILING)\] GEM Backup: \w+ /);
    expect(warned[0]!.error).toMatch(/ECONNREFUSED/);
    expect(failed[1]!.error).toMatch(/cannot reach the SMTP server/);
    // Five checks, two channels, every alert: the warnings are the first failures, nothing more.
    expect(warned).toHaveLength(2 + areas.length);
    expect(lines.filter((l) => l.msg === 'an alert channel failed again').length).toBeGreaterThan(0);
  });

  it('a restart does not announce the same failures again', async () => {
    expect(await notifier().check()).toEqual([]);
    expect(warnings(taken())).toEqual([]);
  });

  it('an hour later, one reminder per channel with since when and how many attempts', async () => {
    offset += HOUR + 60_000;
    const n = notifier();
    expect(await n.check()).toEqual([]);
    const warned = warnings(taken());
    expect(warned).toHaveLength(2);
    for (const l of warned) {
      expect(l.msg).toBe('an alert channel is still failing');
      // Six checks of every alert before (the alerts area's own, that no channel works, from the
      // second on), and this one's first.
      expect(l.attempts).toBe(6 * areas.length);
      expect(Date.parse(l.failingSince as string)).toBeLessThan(now().getTime() - HOUR);
      expect(l.alert).toMatch(/^\[(WARNING|FAILING)\] GEM Backup: /);
    }
    offset += 30 * 60_000;
    await n.check();
    expect(warnings(taken())).toEqual([]);
  });

  it('a new error of a channel is told once', async () => {
    await serveWebhook(500);
    const n = notifier();
    await n.check();
    await n.check();
    const warned = warnings(taken());
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({
      msg: 'an alert channel failed',
      channel: `webhook http://127.0.0.1:${hookPort}`,
      error: 'the webhook answered 500',
      previousError: expect.stringMatching(/ECONNREFUSED/),
    });
  });

  it('a channel that works again is told once at info, and the alerts go out', async () => {
    await serveWebhook(204);
    const n = notifier();
    const sent = await n.check();
    expect(sent.map((s) => s.area).sort()).toEqual([...areas].sort());
    await n.check();
    await notifier().check();
    const lines = taken();
    expect(warnings(lines)).toEqual([]);
    const back = lines.filter((l) => l.msg === 'an alert channel works again');
    expect(back).toHaveLength(1);
    expect(back[0]).toMatchObject({
      level: 'info',
      channel: `webhook http://127.0.0.1:${hookPort}`,
      // Ten checks of every alert, the alerts area's own from the second on.
      failedAttempts: 10 * areas.length - 1,
    });
    const out = lines.filter((l) => l.msg === 'alert sent');
    expect(out).toHaveLength(areas.length);
    for (const l of out)
      expect(l).toMatchObject({ alert: expect.stringContaining(`GEM Backup: ${l.area} `) });
  });

  it('e-mail back: told once, at the next alert (here the Test alert)', async () => {
    smtp = await startSmtp(smtpPort);
    const n = notifier();
    expect((await n.sendTest()).deliveries.every((d) => d.ok)).toBe(true);
    expect((await n.sendTest()).deliveries.every((d) => d.ok)).toBe(true);
    const lines = taken();
    expect(warnings(lines)).toEqual([]);
    expect(lines.filter((l) => l.msg === 'an alert channel works again')).toEqual([
      expect.objectContaining({ level: 'info', channel: 'e-mail via 127.0.0.1' }),
    ]);
  });

  it('never logs the webhook path token or secret', () => {
    all.push(...raw);
    expect(all.length).toBeGreaterThan(0);
    for (const line of all) {
      expect(line).not.toContain(PATH_TOKEN);
      expect(line).not.toContain(SECRET);
    }
  });
});
