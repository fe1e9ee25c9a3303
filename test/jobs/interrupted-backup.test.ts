/**
 * A backup job records its file's name as soon as it is chosen, before the file is written, so a crash
 * after the rename (its record still at `verify`: the next phase had not been written yet) is told at
 * the next start as kept, and one before it as nothing kept. Seen in a failure drill: a kill as the
 * prune began said "nothing was kept" of a backup that was listed and verified.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import type { Job } from '../../agent/jobs/runner';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let dataDir: string;

beforeAll(async () => {
  pg = await startPostgres();
  // Its own data dir: the agent is closed and opened again over it.
  dataDir = await mkdtemp(join(tmpdir(), 'gem-interrupted-backup-'));
  t = await startTestAgent(pg, { dataDir });
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

/** The pid of a process that has ended. */
async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((resolve) => child.once('exit', resolve));
  if (child.pid === undefined) throw new Error('could not start `true`');
  return child.pid;
}

describe('a backup interrupted around its rename', () => {
  it('records its file name during the job, and is told after a restart as kept only when that file is there', async () => {
    const started = await startBackup(t.agent);
    const done = await t.agent.jobs.waitFor(started.id);
    expect(done.state).toBe('succeeded');
    const kept = (done.result as { backup: { filename: string } }).backup.filename;
    // The name is on the job (and so in jobs.json), not only in its result.
    expect(done.target).toBe(kept);

    const databaseUrl = t.agent.config.databaseUrl;
    await t.close();

    // Two backups whose process died with their records at `verify`: one after its rename (its file is
    // there), one before it (no such file).
    const path = join(dataDir, 'jobs.json');
    const file = JSON.parse(await readFile(path, 'utf8')) as { jobs: Array<Record<string, unknown>> };
    const pid = await deadPid();
    const record = (id: string, target: string) => ({
      pid,
      runner: 'killed-runner',
      job: {
        id,
        kind: 'backup',
        state: 'running',
        phase: 'verify',
        bytesDone: 10,
        bytesTotal: 100,
        unit: 'bytes',
        startedAt: new Date().toISOString(),
        target,
      },
    });
    file.jobs.push(
      record('after-rename', kept),
      record('before-rename', 'gem-backup-2001-01-01-000000.tar.gz'),
    );
    await writeFile(path, JSON.stringify(file));

    t = await startTestAgent(pg, { dataDir, databaseUrl });
    const jobs = (await (await t.request('/api/v1/jobs')).json()) as Job[];
    const after = jobs.find((j) => j.id === 'after-rename');
    const before = jobs.find((j) => j.id === 'before-rename');
    expect(after).toMatchObject({ state: 'failed', error: { code: 'interrupted' } });
    expect(after?.error?.message).toContain('the backup is kept');
    expect(after?.error?.message).not.toContain('nothing was kept');
    expect(before).toMatchObject({ state: 'failed', error: { code: 'interrupted' } });
    expect(before?.error?.message).toContain('nothing was kept');
  });
});
