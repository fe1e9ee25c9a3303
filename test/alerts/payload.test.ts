// Alert contents: a webhook body and an e-mail never carry the installation id (it recovers the keys from the DR cloud).
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import type net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertNotifier, installationTag } from '../../agent/alerts/notifier';
import { healthFor } from '../../agent/health/service';
import { alertsModule } from '../../agent/http/routes/alerts';
import { settingsModule } from '../../agent/http/routes/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SmtpReceiver, startSmtp } from './receivers';

let pg: TestPostgres;
let t: TestAgent;
const hooks: string[] = [];
let hookServer: ReturnType<typeof createServer>;
let smtp: SmtpReceiver;

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule, alertsModule] });
  hookServer = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      hooks.push(Buffer.concat(parts).toString('utf8'));
      res.writeHead(204).end();
    });
  });
  const [hookPort, receiver] = await Promise.all([listen(hookServer), startSmtp()]);
  smtp = receiver;
  const res = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      alerts: {
        webhooks: [{ url: `http://127.0.0.1:${hookPort}/hook`, secret: 'webhook-secret-for-the-test-0123' }],
        email: {
          enabled: true,
          host: '127.0.0.1',
          port: smtp.port,
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
  await Promise.all([pg?.stop(), new Promise((resolve) => hookServer?.close(resolve)), smtp?.close()]);
});

describe('what an alert says about the installation', () => {
  it('the test alert carries a non-reversible installation tag, never the installation id', async () => {
    const id = t.agent.keyring.installationId;
    const tag = createHash('sha256').update(`gem-installation-tag:${id}`).digest('hex').slice(0, 12);
    expect(installationTag(id)).toBe(tag);

    const res = await t.request('/api/v1/alerts/test', { method: 'POST' });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { deliveries: { ok: boolean }[] }).deliveries).toEqual([
      expect.objectContaining({ ok: true }),
      expect.objectContaining({ ok: true }),
    ]);
    expect(hooks).toHaveLength(1);
    expect(smtp.messages).toHaveLength(1);
    expect(hooks[0]).not.toContain(id);
    expect(JSON.parse(hooks[0]!)).toMatchObject({ event: 'test', installationTag: tag });
    expect(JSON.parse(hooks[0]!)).not.toHaveProperty('installationId');
    expect(smtp.messages[0]).not.toContain(id);
    expect(smtp.messages[0]).toContain(`Installation: ${tag}`);
  });

  it('a health alert (webhook and e-mail) does not carry it either', async () => {
    const id = t.agent.keyring.installationId;
    // A fresh agent has no backup and undownloaded keys: the first check has areas to report.
    const sent = await new AlertNotifier(t.agent, healthFor(t.agent), { webhookTimeoutMs: 5000 }).check();
    expect(sent.length).toBeGreaterThan(0);
    expect(hooks.length).toBeGreaterThan(1);
    expect(smtp.messages.length).toBeGreaterThan(1);
    for (const text of [...hooks, ...smtp.messages]) expect(text).not.toContain(id);
    for (const hook of hooks) expect(JSON.parse(hook).installationTag).toBe(installationTag(id));
  });

  it('reaches the SMTP server saved as the settings accept it: spaces around its host', async () => {
    const res = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        alerts: {
          email: {
            enabled: true,
            host: ' 127.0.0.1 ',
            port: smtp.port,
            from: 'gem@example.com',
            to: ['ops@example.com'],
          },
        },
      }),
    });
    expect(res.status, await res.clone().text()).toBe(200);
    const before = smtp.messages.length;
    const sent = await t.request('/api/v1/alerts/test', { method: 'POST' });
    expect(sent.status).toBe(200);
    expect(((await sent.json()) as { deliveries: { ok: boolean }[] }).deliveries).toEqual([
      expect.objectContaining({ ok: true }),
    ]);
    expect(smtp.messages.length).toBe(before + 1);
  });
});
