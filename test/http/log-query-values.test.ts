// A failed query's values never reach the log. Drizzle's error says "Failed query: <sql>\nparams:
// <values>", and a settings save's values are the settings document: its webhook URLs are credentials.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { settingsModule } from '../../agent/http/routes/settings';
import { createLogger, withoutQueryParams } from '../../agent/log';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

const SECRET_PATH = 'T0LOGSECRET/B0LOGSECRET/xyzLogSecretValue';
const lines: string[] = [];
let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, {
    modules: [settingsModule],
    log: createLogger({ level: 'debug', write: (line) => lines.push(line) }),
  });
});
afterAll(async () => {
  await t?.close().catch(() => {});
  await pg?.stop();
});

describe("a failed query's values in the log", () => {
  it('a settings save that meets a stopped database logs the failure without the webhook URL', async () => {
    const url = `https://hooks.slack.com/services/${SECRET_PATH}`;
    await pg.stop();
    const res = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ alerts: { webhooks: [{ url, secret: 'log-test-signing-secret' }] } }),
    });
    const text = await res.text();
    expect(res.status, text).toBe(503);
    expect(text).not.toContain('LOGSECRET');
    // The failure was logged, with what the database said.
    const failure = lines.filter((line) => /unreachable|failed/i.test(line));
    expect(failure.length).toBeGreaterThan(0);
    for (const line of lines) expect(line).not.toContain('LOGSECRET');
  });

  it('cuts the values out of a message and a stack, and keeps the rest', () => {
    const message = `Failed query: insert into "s" ("v") values ($1)\nparams: {"url":"${SECRET_PATH}"}`;
    expect(withoutQueryParams(message)).toBe(
      'Failed query: insert into "s" ("v") values ($1)\nparams: [not logged]',
    );
    const stack = `Error: ${message}\n    at PgSession.queryWithCache (session.js:1:1)\n    at main (x.js:2:2)`;
    expect(withoutQueryParams(stack)).toBe(
      'Error: Failed query: insert into "s" ("v") values ($1)\nparams: [not logged]\n    at PgSession.queryWithCache (session.js:1:1)\n    at main (x.js:2:2)',
    );
    expect(withoutQueryParams('connect ECONNREFUSED 127.0.0.1:5432')).toBe(
      'connect ECONNREFUSED 127.0.0.1:5432',
    );
  });
});
