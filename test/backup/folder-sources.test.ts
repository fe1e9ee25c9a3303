// Real backups of the scripts and config folders as they are found: behind a symlink, missing, changing while read.
import { appendFile, mkdir, mkdtemp, rename, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { BackupSources, CreateBackupOptions } from '../../agent/backup/create';
import { createBackup } from '../../agent/backup/create';
import { readBackup } from '../../agent/backup/reader';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let original: BackupSources;
let scratch: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  original = { ...t.agent.sources };
  scratch = await mkdtemp(join(tmpdir(), 'gem-folder-sources-'));
});
afterEach(() => {
  Object.assign(t.agent.sources, original);
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

function backup(options: CreateBackupOptions = {}, onPhase?: (phase: string) => void) {
  return createBackup(
    {
      keyring: t.agent.keyring,
      catalog: t.agent.catalog,
      sources: t.agent.sources,
      workDir: t.agent.paths.work,
    },
    standaloneContext(silentLogger, onPhase ? (phase, done) => done === 0 && onPhase(phase) : undefined),
    options,
  );
}

/** The members a backup file holds, read and checked end to end. */
async function membersOf(filename: string): Promise<string[]> {
  const { manifest } = await readBackup(t.agent.catalog.pathOf(filename), {
    keys: t.agent.keyring.masterKeys,
  });
  return manifest.members.map((m) => m.path);
}

describe('the folders a backup holds', () => {
  it('a scripts folder configured through a symlink is backed up with its files', async () => {
    const real = join(scratch, 'data-scripts');
    await mkdir(join(real, 'drivers'), { recursive: true });
    await writeFile(join(real, 'drivers', 'hue.js'), 'connect()');
    await writeFile(join(real, 'lights.js'), 'turnOn()');
    const link = join(scratch, 'opt-gem-scripts');
    await symlink(real, link);
    t.agent.sources.scriptsDir = link;

    const made = await backup();
    expect(made.verifyResult).toBe('ok');
    const members = await membersOf(made.filename);
    expect(members).toEqual(
      expect.arrayContaining(['scripts', 'scripts/drivers', 'scripts/drivers/hue.js', 'scripts/lights.js']),
    );
  });

  it('a configured folder that does not exist fails the backup, naming the folder and its setting', async () => {
    const before = (await t.agent.catalog.list()).length;
    t.agent.sources.scriptsDir = join(scratch, 'not-mounted', 'scripts');
    await expect(backup()).rejects.toMatchObject({
      code: 'unprocessable',
      message: expect.stringContaining(
        `scripts folder ${t.agent.sources.scriptsDir} (GEM_SCRIPTS_DIR) does not exist`,
      ),
    });
    expect(await t.agent.catalog.list()).toHaveLength(before);
    // A safety backup (before a restore) records it as empty rather than stopping the restore.
    const safety = await backup({ kind: 'safety' });
    expect((await membersOf(safety.filename)).filter((m) => m.startsWith('scripts'))).toEqual(['scripts']);
  });

  it("the agent's own default folder, never created, is backed up as empty", async () => {
    // The test agent's config folder is at the agent's default place (<data dir>/gem/config).
    const aside = `${original.configDir}-aside`;
    await rename(original.configDir, aside);
    try {
      const made = await backup();
      expect((await membersOf(made.filename)).filter((m) => m.startsWith('config'))).toEqual(['config']);
    } finally {
      await rename(aside, original.configDir);
    }
  });

  it('scripts deleted (and one growing) while the backup runs are skipped: every round succeeds and verifies', async () => {
    const scripts = join(scratch, 'busy-scripts');
    await mkdir(scripts);
    t.agent.sources.scriptsDir = scripts;
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 300; i++) await writeFile(join(scripts, `s${i}.js`), 'x'.repeat(100));
      await writeFile(join(scripts, 'log.js'), 'y'.repeat(100_000));
      let changing: Promise<unknown> = Promise.resolve();
      const made = await backup({}, (phase) => {
        if (phase !== 'folders') return;
        // GEM removes scripts and appends to one while the folders are copied.
        changing = Promise.all([
          (async () => {
            for (let i = 299; i >= 0; i--) await unlink(join(scripts, `s${i}.js`)).catch(() => {});
          })(),
          (async () => {
            for (let i = 0; i < 50; i++) await appendFile(join(scripts, 'log.js'), 'z'.repeat(10_000));
          })(),
        ]);
      });
      await changing;
      expect(made.verifyResult).toBe('ok');
      // Read and checked again end to end: every member in the manifest, each size and sha256.
      const members = await membersOf(made.filename);
      expect(members).toContain('scripts/log.js');
      await t.agent.catalog.delete(made.filename);
    }
  });
});
