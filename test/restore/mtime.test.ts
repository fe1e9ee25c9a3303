// A restore puts back each script's and folder's own modification time, as the backup recorded it.
import { stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup } from '../../agent/backup/create';
import { restoreFromFile } from '../../agent/restore/restore';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
});

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('restore keeps modification times', () => {
  it('gives restored files and folders the times they had when the backup was made', async () => {
    const scripts = t.agent.sources.scriptsDir;
    const file = join(scripts, 'macros', 'good-night.js');
    const folder = join(scripts, 'drivers');
    const fileTime = new Date('2020-01-02T03:04:05Z');
    const folderTime = new Date('2021-06-07T08:09:10Z');
    await utimes(file, fileTime, fileTime);
    await utimes(folder, folderTime, folderTime);
    const job = await t.agent.jobs.start(
      'backup',
      (ctx) =>
        createBackup(
          {
            keyring: t.agent.keyring,
            catalog: t.agent.catalog,
            sources: t.agent.sources,
            workDir: t.agent.paths.work,
          },
          ctx,
          { kind: 'manual', label: 'mtime' },
        ),
      { mutating: true },
    );
    const made = await t.agent.jobs.waitFor(job.id);
    expect(made.error).toBeUndefined();
    const name = (made.result as { filename: string }).filename;

    // Changed after the backup: the restore must bring the old content and times back.
    await writeFile(file, 'changed\n');
    const restore = await t.agent.jobs.start(
      'restore',
      (ctx) => restoreFromFile(t.agent, ctx, t.agent.catalog.pathOf(name), { skipSafetyBackup: true }),
      { mutating: true },
    );
    const restored = await t.agent.jobs.waitFor(restore.id);
    expect(restored.error).toBeUndefined();
    expect(Math.floor((await stat(file)).mtimeMs / 1000)).toBe(fileTime.getTime() / 1000);
    expect(Math.floor((await stat(folder)).mtimeMs / 1000)).toBe(folderTime.getTime() / 1000);
  });
});
