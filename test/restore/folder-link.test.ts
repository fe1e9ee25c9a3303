// A scripts folder configured through a symlink (/opt/gem/scripts -> /data/scripts) is restored into
// the folder the link points to: the link stays, the real folder gets the backup's content.
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup } from '../../agent/backup/create';
import { restoreFromFile } from '../../agent/restore/restore';
import { dropStagingLeftovers, restoreSettled, STAGING_FOLDER_MARK } from '../../agent/restore/swap';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let scratch: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  scratch = await mkdtemp(join(tmpdir(), 'gem-folder-link-'));
});

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

async function run<T>(kind: 'backup' | 'restore', work: Parameters<TestAgent['agent']['jobs']['start']>[1]) {
  const job = await t.agent.jobs.start(kind, work, { mutating: true });
  const done = await t.agent.jobs.waitFor(job.id);
  expect(done.error).toBeUndefined();
  return done.result as T;
}

describe('restoring a folder configured through a symlink', () => {
  it('keeps the link and puts the content back into the folder it points to', async () => {
    const real = join(scratch, 'data', 'scripts');
    await mkdir(join(real, 'drivers'), { recursive: true });
    await writeFile(join(real, 'drivers', 'hue.js'), 'connect()\n');
    await writeFile(join(real, 'lights.js'), 'turnOn()\n');
    const opt = join(scratch, 'opt-gem');
    await mkdir(opt);
    const link = join(opt, 'scripts');
    await symlink(real, link);
    t.agent.sources.scriptsDir = link;

    const { filename } = await run<{ filename: string }>('backup', (ctx) =>
      createBackup(
        {
          keyring: t.agent.keyring,
          catalog: t.agent.catalog,
          sources: t.agent.sources,
          workDir: t.agent.paths.work,
        },
        ctx,
        { kind: 'manual', label: 'linked' },
      ),
    );
    await writeFile(join(real, 'lights.js'), 'changed after the backup\n');
    await writeFile(join(real, 'new-after-backup.js'), 'x\n');

    await run('restore', (ctx) =>
      restoreFromFile(t.agent, ctx, t.agent.catalog.pathOf(filename), { skipSafetyBackup: true }),
    );

    expect((await lstat(link)).isSymbolicLink()).toBe(true);
    expect(await readlink(link)).toBe(real);
    expect(await readFile(join(real, 'lights.js'), 'utf8')).toBe('turnOn()\n');
    expect(await readFile(join(real, 'drivers', 'hue.js'), 'utf8')).toBe('connect()\n');
    expect((await readdir(real)).sort()).toEqual(['drivers', 'lights.js']);
    // Nothing left beside the link or the folder once the restore settled.
    await restoreSettled(t.agent.config.dataDir);
    expect(await readdir(opt)).toEqual(['scripts']);
    expect(await readdir(join(scratch, 'data'))).toEqual(['scripts']);
  });

  it("finds a crashed restore's staging leftover beside the folder the link points to", async () => {
    const real = join(scratch, 'data', 'scripts');
    const leftover = `${real}${STAGING_FOLDER_MARK}deadbeef`;
    await mkdir(join(leftover, 'drivers'), { recursive: true });
    const removed = await dropStagingLeftovers(t.agent.sources);
    expect(removed).toContain(leftover);
    expect(await readdir(join(scratch, 'data'))).toEqual(['scripts']);
  });
});
