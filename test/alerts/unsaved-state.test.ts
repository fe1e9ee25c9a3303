// An alert out while its state cannot be saved (a full disk, the file's lock held by a hung process)
// is not sent again at every check, the check goes on, and the state is saved once it can be.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertNotifier } from '../../agent/alerts/notifier';
import { healthFor } from '../../agent/health/service';
import { settingsModule } from '../../agent/http/routes/settings';
import { createLogger } from '../../agent/log';
import { call, downloadKeys } from '../health/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startWebhook, type WebhookReceiver } from './receivers';

let pg: TestPostgres;
let t: TestAgent;
let hook: WebhookReceiver;
/** A live process named as the holder of alerts-state.json's lock: every update of the file fails. */
let holder: ChildProcess | undefined;
const lines: Array<{ level: string; msg: string }> = [];

const notifier = () => new AlertNotifier(t.agent, healthFor(t.agent), { webhookTimeoutMs: 5000 });
const stateFile = () => join(t.agent.config.dataDir, 'alerts-state.json');
const keysRecovered = () => hook.received.filter((b) => b.area === 'keys' && b.event === 'recovered');

beforeAll(async () => {
  pg = await startPostgres();
  [t, hook] = await Promise.all([startTestAgent(pg, { modules: [settingsModule] }), startWebhook()]);
  t.agent.log = createLogger({ level: 'debug', write: (line) => lines.push(JSON.parse(line)) });
  const res = await call(t, 'PUT', '/settings', {
    autoBackup: { enabled: false },
    verification: { enabled: false },
    alerts: { webhooks: [{ url: hook.url, secret: 'webhook-secret-for-the-test-0123' }] },
  });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
}, 60_000);

afterAll(async () => {
  if (holder?.pid) process.kill(holder.pid);
  await t?.close();
  await Promise.all([pg?.stop(), hook?.close()]);
});

describe('the alert state cannot be saved', () => {
  it('an alert that went out is not sent again at each check, and is saved once the file can be written', async () => {
    const n = notifier();
    // A fresh agent: the keys were never downloaded (warning), saved as alerted.
    expect((await n.check()).find((s) => s.area === 'keys')).toMatchObject({ event: 'warning' });
    await downloadKeys(t);

    holder = spawn('sleep', ['600'], { stdio: 'ignore' });
    await writeFile(
      `${stateFile()}.lock`,
      JSON.stringify({ pid: holder.pid, nonce: randomUUID(), what: 'a hung update', since: new Date() }),
    );
    const first = await n.check().catch((error: Error) => error.message);
    const second = await n.check().catch((error: Error) => error.message);
    // The recovery went out once; the checks did not fail.
    expect(keysRecovered()).toHaveLength(1);
    expect(first).toEqual([expect.objectContaining({ area: 'keys', event: 'recovered' })]);
    expect(second).toEqual([]);
    const told = lines.filter((l) => l.msg.startsWith('the alert state could not be saved'));
    expect(told).toHaveLength(1);
    expect(JSON.parse(await readFile(stateFile(), 'utf8')).keys.status).toBe('warning');

    // The holder gone, the next check saves it: a restart does not send it again.
    process.kill(holder.pid!);
    await new Promise((resolve) => holder!.once('exit', resolve));
    holder = undefined;
    expect(await n.check()).toEqual([]);
    expect(JSON.parse(await readFile(stateFile(), 'utf8')).keys.status).toBe('ok');
    expect(await notifier().check()).toEqual([]);
    expect(keysRecovered()).toHaveLength(1);
  });
});
