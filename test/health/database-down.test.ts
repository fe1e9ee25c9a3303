/**
 * Health with GEM's database stopped under a running agent: an area that could not read its state
 * says "GEM's database is unreachable (<cause>)", never the query it ran, its parameters or the
 * database password.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { call } from './helpers';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
});
afterAll(async () => {
  await t?.close().catch(() => {});
  await pg?.stop();
});

describe('GET /api/v1/health with the database stopped', () => {
  it('says the database is unreachable, with a short cause and no query text', async () => {
    const up = await call(t, 'GET', '/health');
    expect(up.status).toBe(200);
    expect(up.body.areas.backups.reason ?? '').not.toMatch(/unreachable/);
    const password = new URL(t.agent.databaseUrl).password;
    expect(password.length).toBeGreaterThan(0);
    await pg.stop();
    // The first evaluation may meet the pool's connection as the server closes it, later ones a refused connect.
    for (let i = 0; i < 3; i++) {
      const { status, body } = await call(t, 'GET', '/health');
      expect(status).toBe(200);
      const text = JSON.stringify(body);
      expect(text).not.toMatch(/Failed query|select |params:/i);
      expect(text).not.toContain(password);
      expect(body.areas.backups.status).toBe('failing');
      expect(body.areas.backups.reason).toMatch(
        /^GEM's database is unreachable \((connection refused on 127\.0\.0\.1:\d+|connection closed( on \S+)?|the server is shutting down)\)$/,
      );
      for (const area of Object.values(body.areas) as Array<{ reason?: string }>) {
        if (area.reason?.includes('check failed')) expect(area.reason).not.toMatch(/query|select/i);
      }
    }
    const last = await call(t, 'GET', '/health');
    expect(last.body.areas.backups.reason).toMatch(/connection refused on 127\.0\.0\.1:\d+\)$/);
  });
});
