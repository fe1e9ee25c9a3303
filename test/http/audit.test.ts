/** The audit log: every access to a backup or key route, turned away or not, is exactly one line. */
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let seen = 0;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

/** The audit lines written since the previous call. */
async function newAuditLines(): Promise<Record<string, unknown>[]> {
  await t.agent.audit.flush();
  const text = await readFile(t.agent.paths.audit, 'utf8').catch(() => '');
  const lines = text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  const fresh = lines.slice(seen);
  seen = lines.length;
  return fresh;
}

/** The lines of the refused log (requests turned away for their token) written since the previous call. */
let seenRefused = 0;
async function newRefusedLines(): Promise<Record<string, unknown>[]> {
  await t.agent.audit.flush();
  const text = await readFile(t.agent.audit.refusedPath, 'utf8').catch(() => '');
  const lines = text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  const fresh = lines.slice(seenRefused);
  seenRefused = lines.length;
  return fresh;
}

describe('audit log', () => {
  it('records a rejected token on a key or backup route, once, with status 401, in audit-refused.log', async () => {
    await newAuditLines();
    await newRefusedLines();
    const bad = await t.request('/api/v1/keys/export', { headers: { authorization: 'Bearer wrong-token' } });
    expect(bad.status).toBe(401);
    expect(await newRefusedLines()).toEqual([
      expect.objectContaining({ method: 'GET', route: '/api/v1/keys/export', status: 401, outcome: 'error' }),
    ]);
    const missing = await t.app.request('/api/v1/backups');
    expect(missing.status).toBe(401);
    expect(await newRefusedLines()).toEqual([
      expect.objectContaining({ method: 'GET', route: '/api/v1/backups', status: 401, outcome: 'error' }),
    ]);
    // Not in audit.log: only authorized accesses (and their errors) rotate there.
    expect(await newAuditLines()).toEqual([]);
    expect(t.agent.audit.refusedPath).toBe(t.agent.paths.audit.replace(/audit\.log$/, 'audit-refused.log'));
  });

  it('records a list of backups, or one backup, exactly once', async () => {
    await newAuditLines();
    expect((await t.request('/api/v1/backups')).status).toBe(200);
    expect(await newAuditLines()).toEqual([
      expect.objectContaining({ method: 'GET', route: '/api/v1/backups', status: 200, outcome: 'ok' }),
    ]);
    await t.request('/api/v1/backups/not-a-backup-name');
    const one = await newAuditLines();
    expect(one).toHaveLength(1);
    expect(one[0]).toMatchObject({ route: '/api/v1/backups/not-a-backup-name', outcome: 'error' });
    expect((await t.request('/api/v1/keys/status')).status).toBe(200);
    expect(await newAuditLines()).toHaveLength(1);
  });
});
