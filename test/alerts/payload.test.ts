// Alert contents: a webhook body and an e-mail never carry the installation id (it recovers the keys from the DR cloud).
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertNotifier, installationTag } from '../../agent/alerts/notifier';
import { healthFor } from '../../agent/health/service';
import { alertsModule } from '../../agent/http/routes/alerts';
import { settingsModule } from '../../agent/http/routes/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
const hooks: string[] = [];
const mails: string[] = [];
let hookServer: ReturnType<typeof createServer>;
let smtpServer: net.Server;

/** A plain SMTP receiver on loopback (no STARTTLS offered, no AUTH): records each message's DATA. */
function serveSmtp(socket: net.Socket): void {
  let buffer = '';
  let data: string | undefined;
  const send = (line: string) => socket.write(`${line}\r\n`);
  socket.on('error', () => {});
  socket.on('data', (chunk: Buffer) => {
    buffer += chunk.toString('utf8');
    for (let i = buffer.indexOf('\r\n'); i >= 0; i = buffer.indexOf('\r\n')) {
      const line = buffer.slice(0, i);
      buffer = buffer.slice(i + 2);
      if (data !== undefined) {
        if (line === '.') {
          mails.push(data);
          data = undefined;
          send('250 queued');
        } else data += `${line}\n`;
        continue;
      }
      const verb = line.split(' ')[0]!.toUpperCase();
      if (verb === 'EHLO') socket.write('250-test.local\r\n250 8BITMIME\r\n');
      else if (verb === 'DATA') {
        data = '';
        send('354 end with .');
      } else if (verb === 'QUIT') {
        send('221 bye');
        socket.end();
      } else send('250 ok');
    }
  });
  send('220 test.local ESMTP');
}

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
  smtpServer = net.createServer(serveSmtp);
  const [hookPort, smtpPort] = await Promise.all([listen(hookServer), listen(smtpServer)]);
  const res = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      alerts: {
        webhooks: [{ url: `http://127.0.0.1:${hookPort}/hook`, secret: 'webhook-secret-for-the-test-0123' }],
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
  await Promise.all([
    pg?.stop(),
    new Promise((resolve) => hookServer?.close(resolve)),
    new Promise((resolve) => smtpServer?.close(resolve)),
  ]);
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
    expect(mails).toHaveLength(1);
    expect(hooks[0]).not.toContain(id);
    expect(JSON.parse(hooks[0]!)).toMatchObject({ event: 'test', installationTag: tag });
    expect(JSON.parse(hooks[0]!)).not.toHaveProperty('installationId');
    expect(mails[0]).not.toContain(id);
    expect(mails[0]).toContain(`Installation: ${tag}`);
  });

  it('a health alert (webhook and e-mail) does not carry it either', async () => {
    const id = t.agent.keyring.installationId;
    // A fresh agent has no backup and undownloaded keys: the first check has areas to report.
    const sent = await new AlertNotifier(t.agent, healthFor(t.agent), { webhookTimeoutMs: 5000 }).check();
    expect(sent.length).toBeGreaterThan(0);
    expect(hooks.length).toBeGreaterThan(1);
    expect(mails.length).toBeGreaterThan(1);
    for (const text of [...hooks, ...mails]) expect(text).not.toContain(id);
    for (const hook of hooks) expect(JSON.parse(hook).installationTag).toBe(installationTag(id));
  });
});
