/** API.md: "503 a dependency is down": with the database stopped under a running agent, routes answer 503 dependency_down. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { settingsModule } from '../../agent/http/routes/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule] });
});
afterAll(async () => {
  await t?.close().catch(() => {});
  await pg?.stop();
});

describe('a dependency down', () => {
  it('GET /api/v1/settings answers 503 dependency_down once PostgreSQL is stopped', async () => {
    expect((await t.request('/api/v1/settings')).status).toBe(200);
    await pg.stop();
    // The first request may meet the pool's connection as the server closes it, later ones a refused connect.
    for (let i = 0; i < 3; i++) {
      const res = await t.request('/api/v1/settings');
      const body = (await res.json()) as { error: { code: string; message: string } };
      expect(res.status, JSON.stringify(body)).toBe(503);
      expect(body.error.code).toBe('dependency_down');
      expect(body.error.message).toMatch(/unreachable: (ECONN\w+ at 127\.0\.0\.1:\d+|CONNECTION_\w+|57P0\d)/);
    }
  });
});
