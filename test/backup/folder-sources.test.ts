// Real backups of the scripts and config folders as they are found: behind a symlink, missing, changing while read.
import { execFileSync } from 'node:child_process';
import { constants } from 'node:fs';
import {
  appendFile,
  lstat,
  mkdir,
  mkdtemp,
  open,
  rename,
  rm,
  symlink,
  unlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { BackupSources, CreateBackupOptions } from '../../agent/backup/create';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { openBackupFile } from '../../agent/backup/file-plaintext';
import { readBackup } from '../../agent/backup/reader';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { unwrapWithMasterKeys } from '../../shared/envelope';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let original: BackupSources;
let scratch: string;
/** A FIFO a test made: opened for writing after it, so a reader still blocked on it (the bug) lets go. */
let fifo: string | undefined;

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
  original = { ...t.agent.sources };
  scratch = await mkdtemp(join(tmpdir(), 'gem-folder-sources-'));
});
afterEach(async () => {
  Object.assign(t.agent.sources, original);
  if (fifo) {
    // ENXIO when no reader waits on it: nothing to let go.
    const writer = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK).catch(() => undefined);
    await writer?.close();
    fifo = undefined;
  }
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

function backup(options: CreateBackupOptions = {}, onPhase?: (phase: string) => void) {
  return createBackup(
    backupDeps(t.agent),
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
      await Promise.all([
        ...Array.from({ length: 300 }, (_, i) => writeFile(join(scripts, `s${i}.js`), 'x'.repeat(100))),
        writeFile(join(scripts, 'log.js'), 'y'.repeat(100_000)),
      ]);
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

  it('a config gem.json that is a FIFO is skipped, never opened: the backup completes and says so', async () => {
    // As found, a regular gem.json gives the manifest GEM's version.
    const plain = await backup();
    const read = (filename: string) =>
      readBackup(t.agent.catalog.pathOf(filename), { keys: t.agent.keyring.masterKeys });
    expect((await read(plain.filename)).manifest.gemVersion).toBe('4.2.1');

    const config = join(scratch, 'fifo-config');
    await mkdir(config);
    await writeFile(join(config, 'network.json'), '{"dhcp":true}\n');
    fifo = join(config, 'gem.json');
    execFileSync('mkfifo', [fifo]);
    t.agent.sources.configDir = config;
    // Opening a FIFO for reading waits for a writer, for ever: the backup must never open it.
    const made = await backup();
    expect(made.verifyResult).toBe('ok');
    expect(made.skipped).toEqual({ count: 1, paths: ['config/gem.json'] });
    const { manifest } = await read(made.filename);
    expect(manifest.gemVersion).toBeUndefined();
    expect(manifest.members.map((m) => m.path).filter((p) => p.startsWith('config'))).toEqual([
      'config',
      'config/network.json',
    ]);
  });

  it("each member's tar header carries its source's own mtime (to the second)", async () => {
    const scripts = join(scratch, 'dated-scripts');
    await mkdir(join(scripts, 'macros'), { recursive: true });
    await writeFile(join(scripts, 'macros', 'night.js'), 'dim()');
    await writeFile(join(scripts, 'lights.js'), 'turnOn()');
    await utimes(
      join(scripts, 'lights.js'),
      new Date('2021-03-04T05:06:07Z'),
      new Date('2021-03-04T05:06:07Z'),
    );
    await utimes(join(scripts, 'macros', 'night.js'), new Date('2022-01-01Z'), new Date('2022-01-01Z'));
    await utimes(join(scripts, 'macros'), new Date('2020-02-02T02:02:02Z'), new Date('2020-02-02T02:02:02Z'));
    await utimes(scripts, new Date('2019-09-09T09:09:09Z'), new Date('2019-09-09T09:09:09Z'));
    t.agent.sources.scriptsDir = scripts;
    const made = await backup();

    const { plaintext } = await openBackupFile(t.agent.catalog.pathOf(made.filename), {
      resolveFileKey: (header) => unwrapWithMasterKeys(header.stanzas, t.agent.keyring.masterKeys),
    });
    const extract = tar.extract();
    (plaintext.pipe(createGunzip()) as Readable).pipe(extract);
    const mtimes = new Map<string, number>();
    for await (const entry of extract) {
      mtimes.set(entry.header.name.replace(/\/$/, ''), entry.header.mtime!.getTime());
      entry.resume();
    }
    const second = async (path: string) => Math.floor((await lstat(path)).mtimeMs / 1000) * 1000;
    expect(mtimes.get('scripts')).toBe(Date.parse('2019-09-09T09:09:09Z'));
    expect(mtimes.get('scripts/macros')).toBe(Date.parse('2020-02-02T02:02:02Z'));
    expect(mtimes.get('scripts/lights.js')).toBe(Date.parse('2021-03-04T05:06:07Z'));
    expect(mtimes.get('scripts/macros/night.js')).toBe(Date.parse('2022-01-01Z'));
    expect(mtimes.get('config/gem.json')).toBe(await second(join(original.configDir, 'gem.json')));
  });
});
