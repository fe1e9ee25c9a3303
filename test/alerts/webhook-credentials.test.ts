// A webhook address's password or token never reaches the agent log or the Test alert answer.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alertsModule } from '../../agent/http/routes/alerts';
import { settingsModule } from '../../agent/http/routes/settings';
import { createLogger } from '../../agent/log';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

const PASSWORD = 'hook-password-never-logged-7f3a';
const PATH_TOKEN = 'T0KEN-in-the-path-never-logged-91c2';

let pg: TestPostgres;
let t: TestAgent;
let hookServer: ReturnType<typeof createServer>;
let hookPort: number;
let closedPort: number;
const received: string[] = [];
const logLines: string[] = [];

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule, alertsModule] });
  t.agent.log = createLogger({ write: (line) => logLines.push(line) });
  hookServer = createServer((req, res) => {
    received.push(req.url ?? '');
    req.resume().on('end', () => res.writeHead(204).end());
  });
  await new Promise<void>((resolve) => hookServer.listen(0, '127.0.0.1', resolve));
  hookPort = (hookServer.address() as AddressInfo).port;
  // A port nothing listens on: the connection is refused.
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  closedPort = (probe.address() as AddressInfo).port;
  await new Promise((resolve) => probe.close(resolve));
}, 60_000);

afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), new Promise((resolve) => hookServer?.close(resolve))]);
});

async function saveWebhooks(urls: string[]): Promise<void> {
  const res = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      alerts: { webhooks: urls.map((url) => ({ url, secret: 'webhook-secret-for-the-test-0123' })) },
    }),
  });
  expect(res.status, await res.clone().text()).toBe(200);
}

async function testAlert(): Promise<{
  text: string;
  deliveries: { channel: string; ok: boolean; error?: string }[];
}> {
  const res = await t.request('/api/v1/alerts/test', { method: 'POST' });
  expect(res.status).toBe(200);
  const text = await res.text();
  return { text, deliveries: (JSON.parse(text) as { deliveries: never[] }).deliveries };
}

describe('a webhook address that holds a secret', () => {
  it('a user name and password in the address: a clear failure, never the password (log, answer)', async () => {
    await saveWebhooks([`http://hook-user:${PASSWORD}@127.0.0.1:${hookPort}/hook`]);
    logLines.length = 0;
    const { text, deliveries } = await testAlert();
    expect(deliveries).toEqual([
      {
        channel: `webhook http://127.0.0.1:${hookPort}`,
        ok: false,
        error: expect.stringMatching(/user name or password/),
      },
    ]);
    expect(text).not.toContain(PASSWORD);
    expect(logLines.some((l) => l.includes('an alert channel failed'))).toBe(true);
    for (const line of logLines) expect(line).not.toContain(PASSWORD);
    expect(received).toHaveLength(0);
  });

  it('a token in the path: never in the failure of an unreachable webhook', async () => {
    await saveWebhooks([`http://127.0.0.1:${closedPort}/services/${PATH_TOKEN}?key=${PATH_TOKEN}`]);
    logLines.length = 0;
    const { text, deliveries } = await testAlert();
    expect(deliveries).toEqual([
      { channel: `webhook http://127.0.0.1:${closedPort}`, ok: false, error: expect.any(String) },
    ]);
    expect(text).not.toContain(PATH_TOKEN);
    expect(logLines.some((l) => l.includes('an alert channel failed'))).toBe(true);
    for (const line of logLines) expect(line).not.toContain(PATH_TOKEN);
  });

  it('a webhook without credentials still receives the alert', async () => {
    await saveWebhooks([`http://127.0.0.1:${hookPort}/services/${PATH_TOKEN}`]);
    const { deliveries } = await testAlert();
    expect(deliveries).toEqual([{ channel: `webhook http://127.0.0.1:${hookPort}`, ok: true }]);
    expect(received).toEqual([`/services/${PATH_TOKEN}`]);
  });
});
