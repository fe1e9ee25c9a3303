// A webhook URL is a credential: GET shows only its display form, and sending that form back keeps the saved address.
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyAlertSignature } from '../../agent/alerts/signature';
import { alertsModule } from '../../agent/http/routes/alerts';
import { settingsModule } from '../../agent/http/routes/settings';
import { createLogger } from '../../agent/log';
import { type SettingsView, WebhookInput, webhookUrlForDisplay } from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';

// The parts of each address that are the credential: none may ever come back from the agent.
const SLACK_TOKEN = 'xoxSlackTokenPart9f3kQ2mZ7wXyZ';
const DISCORD_TOKEN = 'DiscordTokenPart-Lp0Rt5Vb8nA1';
const QUERY_TOKEN = 'QueryTokenPart_7Hs2Jd9Kc4Vx';
const TOKENS = [SLACK_TOKEN, DISCORD_TOKEN, QUERY_TOKEN, 'T0SLACKTEAM', 'B0SLACKBOT', '1122334455'];

let pg: TestPostgres;
let t: TestAgent;
let port: number;
let server: ReturnType<typeof createServer>;
const received: { path: string; headers: IncomingHttpHeaders; body: string }[] = [];
const logLines: string[] = [];

/** Three webhooks on the local receiver, shaped like Slack, Discord and a `?token=` one, each with its own secret. */
const hooks = () => [
  {
    url: `http://127.0.0.1:${port}/services/T0SLACKTEAM/B0SLACKBOT/${SLACK_TOKEN}`,
    secret: 'secret-slack-01',
  },
  { url: `http://127.0.0.1:${port}/api/webhooks/1122334455/${DISCORD_TOKEN}`, secret: 'secret-discord-02' },
  { url: `http://127.0.0.1:${port}/notify?token=${QUERY_TOKEN}`, secret: 'secret-query-03' },
];

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule, alertsModule] });
  t.agent.log = createLogger({ write: (line) => logLines.push(line) });
  server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      received.push({
        path: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(parts).toString('utf8'),
      });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
}, 60_000);

afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), new Promise((resolve) => server?.close(resolve))]);
});

async function call(
  method: string,
  body?: unknown,
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers, checked by each test's expectations
): Promise<{ status: number; text: string; json: any }> {
  const res = await t.request('/api/v1/settings', {
    method,
    ...(body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  });
  const text = await res.text();
  return { status: res.status, text, json: JSON.parse(text) };
}

const storedRow = () =>
  withSql(t.agent.databaseUrl, async (sql) => {
    const rows = await sql`select doc::text as doc, updated_at from gem_backup.settings`;
    return rows[0] as { doc: string; updated_at: Date };
  });

async function save(webhooks: { url: string; secret?: unknown }[]): Promise<void> {
  const res = await call('PUT', { alerts: { webhooks } });
  expect(res.status, res.text).toBe(200);
}

/** A 422 naming `field`; the stored settings (row and memory) exactly as before. */
async function refused(body: unknown, field: string, message: RegExp): Promise<void> {
  const before = await storedRow();
  const inMemory = t.agent.settings.get();
  const res = await call('PUT', body);
  expect(res.status, res.text).toBe(422);
  expect(res.json.error.message.startsWith(`${field}: `), res.json.error.message).toBe(true);
  expect(res.json.error.message).toMatch(message);
  const after = await storedRow();
  expect(after.doc).toBe(before.doc);
  expect(after.updated_at.getTime()).toBe(before.updated_at.getTime());
  expect(t.agent.settings.get()).toEqual(inMemory);
}

describe('the display form of a webhook URL', () => {
  it('keeps scheme, host, port, a short first segment and the last 4 characters; never userinfo or query', () => {
    expect(webhookUrlForDisplay(`https://hooks.slack.com/services/T0/B0/${SLACK_TOKEN}`)).toBe(
      'https://hooks.slack.com/services/…wXyZ',
    );
    expect(
      webhookUrlForDisplay(
        'https://contoso.webhook.office.com/webhookb2/0f8c@72f9/IncomingWebhook/a1b2c3d4e5/9e7d-41c5',
      ),
    ).toBe('https://contoso.webhook.office.com/webhookb2/…41c5');
    expect(webhookUrlForDisplay(`https://discord.com/api/webhooks/1122334455/${DISCORD_TOKEN}`)).toBe(
      'https://discord.com/api/…8nA1',
    );
    expect(webhookUrlForDisplay(`https://user:pa55word@hooks.example:8443/in?token=${QUERY_TOKEN}`)).toBe(
      'https://hooks.example:8443/…c4Vx',
    );
    // A long first segment may be the key (Telegram's bot<token>): not shown.
    expect(
      webhookUrlForDisplay(
        'https://api.telegram.org/bot123456:AAHfiqksKZ8WmR2zSjiQ7_v4TMAKdiHm9T0/sendMessage',
      ),
    ).toBe('https://api.telegram.org/…sage');
    // A rest of 8 characters or fewer shows nothing of the path.
    expect(webhookUrlForDisplay('https://ntfy.example/alerts/abc12345')).toBe('https://ntfy.example/…');
    expect(webhookUrlForDisplay('https://ntfy.example/')).toBe('https://ntfy.example/…');
    expect(webhookUrlForDisplay('http://[fd00::10]:9000/hooks/gem/0123456789')).toBe(
      'http://[fd00::10]:9000/hooks/…6789',
    );
  });

  it('is accepted by the PUT schema as it is (z.url), so a GET body can be sent back', () => {
    for (const url of ['https://hooks.slack.com/services/…wXyZ', 'https://ntfy.example/…']) {
      const parsed = WebhookInput.safeParse({ url, urlMasked: true, secret: { set: true } });
      expect(parsed.success).toBe(true);
      expect(parsed.data?.url).toBe(url);
    }
  });
});

describe('GET /api/v1/settings and a webhook URL', () => {
  it('never returns the token part of an address: only the display form, marked urlMasked (GET and PUT answers, log, audit)', async () => {
    logLines.length = 0;
    const put = await call('PUT', { alerts: { webhooks: hooks() } });
    expect(put.status, put.text).toBe(200);
    const got = await call('GET');
    expect(got.status).toBe(200);
    const expected = [
      { url: `http://127.0.0.1:${port}/services/…wXyZ`, urlMasked: true, secret: { set: true } },
      { url: `http://127.0.0.1:${port}/api/…8nA1`, urlMasked: true, secret: { set: true } },
      { url: `http://127.0.0.1:${port}/…c4Vx`, urlMasked: true, secret: { set: true } },
    ];
    expect((got.json as SettingsView).alerts.webhooks).toEqual(expected);
    expect(put.json.alerts.webhooks).toEqual(expected);
    const audit = await readFile(t.agent.paths.audit, 'utf8').catch(() => '');
    for (const token of TOKENS) {
      expect(got.text).not.toContain(token);
      expect(put.text).not.toContain(token);
      expect(audit).not.toContain(token);
      for (const line of logLines) expect(line).not.toContain(token);
    }
    // The agent itself still has the full addresses.
    expect(t.agent.settings.get().alerts.webhooks).toEqual(hooks());
  });

  it('a GET body sent back with another change (even reordered) keeps every address and secret: alerts arrive, signed with the kept secret', async () => {
    await save(hooks());
    const view = (await call('GET')).json as SettingsView & { status?: unknown };
    const { status: _readOnly, ...body } = view;
    // What is sent back are the display forms, not the addresses.
    for (const w of body.alerts.webhooks)
      expect(w).toMatchObject({ url: expect.stringContaining('…'), urlMasked: true });
    const back = {
      ...body,
      autoBackup: { ...body.autoBackup, maxBackups: 5 },
      alerts: { ...body.alerts, webhooks: [...body.alerts.webhooks].reverse() },
    };
    const put = await call('PUT', back);
    expect(put.status, put.text).toBe(200);
    expect(t.agent.settings.get().autoBackup.maxBackups).toBe(5);
    expect(t.agent.settings.get().alerts.webhooks).toEqual([...hooks()].reverse());

    received.length = 0;
    const test = await t.request('/api/v1/alerts/test', { method: 'POST' });
    const answer = await test.text();
    expect(test.status).toBe(200);
    for (const token of TOKENS) expect(answer).not.toContain(token);
    expect(JSON.parse(answer).deliveries).toEqual(
      hooks().map(() => ({ channel: `webhook http://127.0.0.1:${port}`, ok: true })),
    );
    expect(received).toHaveLength(3);
    for (const hook of hooks()) {
      const path = hook.url.slice(`http://127.0.0.1:${port}`.length);
      const got = received.find((r) => r.path === path);
      expect(got, path).toBeDefined();
      const signature = got!.headers['x-gem-signature'] as string;
      expect(verifyAlertSignature(signature, got!.body, hook.secret)).toBe(true);
      for (const other of hooks().filter((h) => h.secret !== hook.secret)) {
        expect(verifyAlertSignature(signature, got!.body, other.secret)).toBe(false);
      }
    }
  });

  it('a display form that fits no saved webhook is a 422 naming the field; nothing saved', async () => {
    await save(hooks());
    const [slack] = (await call('GET')).json.alerts.webhooks as SettingsView['alerts']['webhooks'];
    await refused(
      {
        alerts: {
          webhooks: [slack, { url: `http://127.0.0.1:${port}/services/…none`, secret: { set: true } }],
        },
      },
      'alerts.webhooks.1.url',
      /fits no saved webhook: enter the full URL again/,
    );
    // Another host with the same path is not the saved webhook either.
    await refused(
      { alerts: { webhooks: [{ ...slack!, url: slack!.url.replace('127.0.0.1', 'localhost') }] } },
      'alerts.webhooks.0.url',
      /enter the full URL again/,
    );
  });

  it('a display form that fits two saved webhooks is a 422 unless the one at its index fits; nothing saved', async () => {
    const twin = (token: string, secret: string) => ({
      url: `http://127.0.0.1:${port}/notify?token=${token}-same-end-c4Vx`,
      secret,
    });
    const other = { url: `http://127.0.0.1:${port}/other/place/0123456789`, secret: 'secret-other-04' };
    await save([other, twin('first', 'secret-twin-A'), twin('second', 'secret-twin-B')]);
    const view = (await call('GET')).json.alerts.webhooks as SettingsView['alerts']['webhooks'];
    expect(view[1]!.url).toBe(view[2]!.url);
    // At index 0 the saved webhook is another one: the two that fit cannot be told apart.
    await refused(
      { alerts: { webhooks: [view[1]] } },
      'alerts.webhooks.0.url',
      /fits several saved webhooks: enter the full URL again/,
    );
    // At their own indexes each keeps its own address and secret.
    await call('PUT', { alerts: { webhooks: view } });
    expect(t.agent.settings.get().alerts.webhooks).toEqual([
      other,
      twin('first', 'secret-twin-A'),
      twin('second', 'secret-twin-B'),
    ]);
  });

  it('a new full URL is saved; a new webhook never gets the signing secret of another one', async () => {
    await save(hooks());
    const view = (await call('GET')).json.alerts.webhooks as SettingsView['alerts']['webhooks'];
    const fresh = `http://127.0.0.1:${port}/fresh/receiver/9f8e7d6c5b`;
    // Added after the ones sent back, without a secret: 422, not signed with a neighbour's key.
    await refused(
      { alerts: { webhooks: [...view, { url: fresh }] } },
      'alerts.webhooks.3.secret',
      /required when enabled/,
    );
    // In place of the first one, which is still in the list (moved): no secret is inherited either.
    await refused(
      { alerts: { webhooks: [{ url: fresh }, view[0], view[1], view[2]] } },
      'alerts.webhooks.0.secret',
      /required when enabled/,
    );
    const put = await call('PUT', {
      alerts: { webhooks: [...view, { url: fresh, secret: 'secret-fresh-05' }] },
    });
    expect(put.status, put.text).toBe(200);
    expect(t.agent.settings.get().alerts.webhooks).toEqual([
      ...hooks(),
      { url: fresh, secret: 'secret-fresh-05' },
    ]);
    expect(put.json.alerts.webhooks[3]).toEqual({
      url: `http://127.0.0.1:${port}/fresh/…6c5b`,
      urlMasked: true,
      secret: { set: true },
    });
  });
});
