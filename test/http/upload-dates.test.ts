// An uploaded backup is listed by its header's time but kept or pruned offsite by the date in its name:
// one whose name contradicts its header (a file renamed by hand) is refused with 422 naming both dates
// and the name it should have, and nothing is kept. A name a little after its time (a taken name bumped
// by a second, as the agent does) is accepted.
import { readdir, readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let good: string;
let bytes: Uint8Array;
/** The good backup's time as its header says, floored to the second (what its name is made of). */
let made: number;

const backupFiles = async () => (await readdir(t.agent.paths.backups)).sort();
const at = (ms: number) => backupNameFor(new Date(ms));
const upload = (name: string) =>
  t.request(`/api/v1/backups/upload?filename=${encodeURIComponent(name)}`, {
    method: 'POST',
    body: bytes,
    headers: { 'content-length': String(bytes.length) },
  } as RequestInit);

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  good = (job.result as { backup: { filename: string } }).backup.filename;
  bytes = new Uint8Array(await readFile(t.agent.catalog.pathOf(good)));
  made = Math.floor(Date.parse((await t.agent.catalog.info(good)).createdAt) / 1000) * 1000;
  // Uploaded again under other names below: not under its own.
  await t.agent.catalog.delete(good);
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('an upload whose name carries another date than its header', () => {
  it('is refused with 422 naming both dates and its own name, and nothing is kept', async () => {
    const utc = (ms: number) => `${new Date(ms).toISOString().slice(0, 19).replace('T', ' ')} UTC`;
    for (const wrong of [made - 365 * 86_400_000, made - 1000, made + 61_000, made + 86_400_000]) {
      const before = await backupFiles();
      const name = at(wrong);
      const res = await upload(name);
      const body = (await res.json()) as { error: { code: string; message: string } };
      expect(res.status, name).toBe(422);
      expect(body.error).toEqual({
        code: 'unprocessable',
        message: `${name} is dated ${utc(wrong)} by its name, but the backup in it was made ${utc(made)} (its header): a backup is kept or pruned by the date in its name, so it would be out of turn. Upload it under its own name, ${at(made)}; nothing was kept`,
      });
      expect(await backupFiles()).toEqual(before);
    }
  });

  it('accepts it under its own name, and a little after it (a taken name is bumped a second at a time)', async () => {
    for (const name of [at(made), at(made + 1000), at(made + 60_000)]) {
      const res = await upload(name);
      expect(res.status, JSON.stringify(await res.clone().json())).toBe(201);
      expect(await res.json()).toMatchObject({ filename: name, verified: true });
    }
    expect(await backupFiles()).toEqual([at(made), at(made + 1000), at(made + 60_000)]);
  });
});
