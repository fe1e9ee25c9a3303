// A damaged backup-records.json (its pins unknown) is set aside and holds every prune until the owner resumes it.
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupCatalog } from '../../agent/backup/catalog';
import type { Job } from '../../agent/jobs/runner';
import { createLogger } from '../../agent/log';
import { call } from '../health/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent | undefined;
let dataDir: string;

beforeAll(async () => {
  pg = await startPostgres();
  dataDir = await mkdtemp(join(tmpdir(), 'gem-retention-hold-'));
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await rm(dataDir, { recursive: true, force: true });
});

/** A backup through the API; its job once ended (succeeded). */
async function backup(agent: TestAgent): Promise<Job> {
  const res = await call(agent, 'POST', '/backups');
  expect(res.status).toBe(202);
  const job = await agent.agent.jobs.waitFor(res.body.jobId);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return job;
}
const filenameOf = (job: Job) => (job.result as { backup: { filename: string } }).backup.filename;
const retentionOf = (job: Job) =>
  (job.result as { followUps?: { retention?: { details?: { deleted: string[]; held?: string } } } }).followUps
    ?.retention?.details;
const localNames = async (agent: TestAgent) =>
  (await agent.agent.catalog.list()).map((b) => b.filename).sort();
const asideFiles = async () =>
  (await readdir(dataDir)).filter((n) => n.startsWith('backup-records.json.damaged-'));

describe('a damaged backup records file', () => {
  it('is set aside byte for byte; pruning is held (preview, health, restart) until POST /retention/resume', async () => {
    const lines: Array<{ level: string; msg: string; setAside?: string }> = [];
    const log = createLogger({ level: 'warn', write: (line) => lines.push(JSON.parse(line)) });
    t = await startTestAgent(pg, { dataDir, log });
    const databaseUrl = t.agent.databaseUrl;
    const put = await call(t, 'PUT', '/settings', {
      autoBackup: { enabled: true, schedule: 'daily', maxBackups: 3 },
    });
    expect(put.status).toBe(200);
    const made: string[] = [];
    for (let i = 0; i < 3; i++) made.push(filenameOf(await backup(t)));
    const [oldest, second] = made as [string, string, string];
    expect((await call(t, 'POST', `/backups/${oldest}/pin`)).status).toBeLessThan(300);
    const listed = (await call(t, 'GET', '/backups')).body as Array<{ filename: string; pinned?: boolean }>;
    expect(listed.find((b) => b.filename === oldest)?.pinned).toBe(true);

    // Torn by something outside the agent: `head -c 37` over itself.
    const recordsPath = join(dataDir, 'backup-records.json');
    const damaged = (await readFile(recordsPath)).subarray(0, 37);
    await writeFile(recordsPath, damaged);

    // The next backup's prune deletes nothing: the pinned backup is still there, and the job says why.
    const fourth = await backup(t);
    expect(await localNames(t)).toEqual([...made, filenameOf(fourth)].sort());
    const [aside] = await asideFiles();
    expect(aside).toBeDefined();
    expect(await asideFiles()).toHaveLength(1);
    expect(retentionOf(fourth)).toEqual({ deleted: [], held: expect.stringContaining(aside!) });
    // Set aside byte for byte, never written over; the records start afresh beside it.
    expect(Buffer.compare(await readFile(join(dataDir, aside!)), damaged)).toBe(0);
    expect(JSON.parse(await readFile(recordsPath, 'utf8'))).toBeTypeOf('object');
    // Logged once, at error, naming the file set aside.
    const told = lines.filter((l) => l.msg.startsWith('the backup records file was damaged'));
    expect(told).toEqual([expect.objectContaining({ level: 'error', setAside: join(dataDir, aside!) })]);

    const sentence = `Pruning is paused: the backup records were damaged and set aside as ${aside}; pins may be lost. Check the pins, then resume pruning.`;
    const heldNow = async (agent: TestAgent) => {
      const preview = await call(agent, 'GET', '/retention/preview');
      expect(preview.status).toBe(200);
      expect(preview.body.held).toMatchObject({ setAside: [aside], message: sentence });
      expect(preview.body.delete).toEqual([]);
      expect(preview.body.nextBackup.delete).toEqual([]);
      const health = await call(agent, 'GET', '/health');
      expect(health.body.areas.backups.status).toBe('warning');
      expect(health.body.areas.backups.reason).toContain(sentence);
      expect((await call(agent, 'GET', '/retention/hold')).body.held.message).toBe(sentence);
    };
    await heldNow(t);

    // The hold survives a restart.
    await t.close();
    t = await startTestAgent(pg, { dataDir, databaseUrl });
    await heldNow(t);
    const fifth = await backup(t);
    expect(retentionOf(fifth)?.deleted).toEqual([]);
    expect((await localNames(t)).length).toBe(5);

    // A damaged hold file holds pruning too.
    const holdPath = join(dataDir, 'retention-hold.json');
    const holdText = await readFile(holdPath, 'utf8');
    await writeFile(holdPath, '{"since": "2026');
    const preview = await call(t, 'GET', '/retention/preview');
    expect(preview.body.held.message).toContain('retention-hold.json is damaged');
    expect(preview.body.nextBackup.delete).toEqual([]);
    await writeFile(holdPath, holdText);

    // The owner pins the oldest again, then resumes: the next backup prunes as configured (3 kept + the pin).
    expect((await call(t, 'POST', `/backups/${oldest}/pin`)).status).toBeLessThan(300);
    const resumed = await call(t, 'POST', '/retention/resume');
    expect(resumed.status).toBe(200);
    expect(resumed.body.resumed.setAside).toEqual([aside]);
    expect((await call(t, 'GET', '/retention/hold')).body.held).toBeNull();
    const health = await call(t, 'GET', '/health');
    expect(health.body.areas.backups.reason).not.toContain('Pruning is paused');
    const after = await call(t, 'GET', '/retention/preview');
    expect(after.body.held).toBeNull();
    const sixth = await backup(t);
    const kept = [oldest, filenameOf(fourth), filenameOf(fifth), filenameOf(sixth)].sort();
    expect(await localNames(t)).toEqual(kept);
    expect(retentionOf(sixth)?.deleted).toEqual([second, made[2]]);
    // The resume is audited like the other routes.
    await t.agent.audit.flush();
    const audit = await readFile(t.agent.paths.audit, 'utf8');
    expect(audit).toMatch(/"method":"POST","route":"\/api\/v1\/retention\/resume","status":200/);
  });
});

describe('the records file at the catalog', () => {
  it('one that is JSON but not an object of records is damaged too: set aside, pruning held', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gem-records-'));
    try {
      const catalog = new BackupCatalog(join(dir, 'backups'), join(dir, 'backup-records.json'));
      await catalog.init();
      await writeFile(join(dir, 'backup-records.json'), '{"gem-backup-2026-01-01-000000.tar.gz": true}\n');
      await catalog.updateRecord('gem-backup-2026-01-02-000000.tar.gz', { pinned: true });
      const names = await readdir(dir);
      expect(names.filter((n) => n.startsWith('backup-records.json.damaged-'))).toHaveLength(1);
      expect((await catalog.hold.get())?.setAside).toHaveLength(1);
      expect(JSON.parse(await readFile(join(dir, 'backup-records.json'), 'utf8'))).toEqual({
        'gem-backup-2026-01-02-000000.tar.gz': { pinned: true },
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('one that cannot be read stays an error: never taken as empty, nothing set aside, no hold', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gem-records-'));
    try {
      const catalog = new BackupCatalog(join(dir, 'backups'), join(dir, 'backup-records.json'));
      await catalog.init();
      // A directory in its place: the read fails (EISDIR) as an unreadable file's does.
      await mkdir(join(dir, 'backup-records.json'));
      await expect(
        catalog.updateRecord('gem-backup-2026-01-02-000000.tar.gz', { pinned: true }),
      ).rejects.toThrow(/EISDIR/);
      expect((await readdir(dir)).filter((n) => n.includes('damaged'))).toEqual([]);
      expect(await catalog.hold.get()).toBeUndefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
