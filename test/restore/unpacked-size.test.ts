/**
 * A backup sealed with the installation's keys whose members unpack to far more than its file (zeros
 * compress 1000:1): the restore's disk check counts the manifest's member sizes where each is staged
 * (the scripts and config staging folders beside the live ones, the dump in the work folder), not twice
 * the file, and refuses before anything is staged. A member longer than its manifest says is stopped
 * before a byte past that size reaches its sink. GEM's folders (and then the work folder) sit on a small
 * tmpfs of their own here; each time nothing was changed.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MANIFEST_NAME, type Manifest } from '../../agent/backup/manifest';
import { readBackup } from '../../agent/backup/reader';
import type { AppError } from '../../agent/errors';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { freeOn, TmpfsMounts } from '../services/tmpfs';
import {
  type ArchiveEntry,
  backupNow,
  leftovers,
  liveState,
  runRestore,
  sealArchive,
  unpackBackup,
  withManifest,
} from './helpers';

const MiB = 1048576;

let pg: TestPostgres;
let t: TestAgent;
let root: string;
let gemDisk: string;
let backupName: string;
const mounts = new TmpfsMounts();

/** The entries of the real backup, with `change` applied, sealed with the installation's key as `name`. */
async function resealed(
  name: string,
  change: (entries: ArchiveEntry[], manifest: Manifest) => ArchiveEntry[],
): Promise<string> {
  const { manifest, entries } = await unpackBackup(t.agent, t.agent.catalog.pathOf(backupName));
  const path = join(root, name);
  await sealArchive(
    t.agent.keyring.activeKey,
    t.agent.keyring.installationId,
    change(entries, manifest),
    path,
  );
  return path;
}

const zeros = (name: string, bytes: number): ArchiveEntry => ({
  header: { name, type: 'file', size: bytes, mode: 0o644 },
  data: Buffer.alloc(bytes),
});

beforeAll(async () => {
  pg = await startPostgres();
  root = await mkdtemp(join(tmpdir(), 'gem-unpacked-size-'));
  await chmod(root, 0o755);
  const dataDir = join(root, 'data');
  gemDisk = join(dataDir, 'gem');
  await mkdir(gemDisk, { recursive: true });
  // The live scripts and config folders (and so their staging folders, beside them) on 16 MiB.
  await mounts.mount(gemDisk, '16m');
  t = await startTestAgent(pg, { dataDir });
  backupName = await backupNow(t.agent, 'real');
}, 180_000);

afterAll(async () => {
  await t?.close().catch(() => {});
  await mounts.unmountAll();
  if (root) await rm(root, { recursive: true, force: true });
  await pg?.stop();
});

/** A restore of `path` refused by the disk check for the file system of `dir`, with nothing changed. */
async function expectRefusedUpFront(path: string, dir: string): Promise<void> {
  const before = await liveState(t.agent);
  const backups = (await t.agent.catalog.list()).length;
  const free = await freeOn(dir);
  const job = await runRestore(t.agent, path);
  expect(job.error?.code, job.error?.message).toBe('no_space');
  expect(job.error?.message).toMatch(
    new RegExp(
      `^not enough free disk space to restore: about .* needed, .* free on the file system of ${dir}`,
    ),
  );
  // Refused before the safety backup and before a member was staged.
  expect((await t.agent.catalog.list()).length).toBe(backups);
  expect(await liveState(t.agent)).toEqual(before);
  expect(await leftovers(t.agent)).toEqual([]);
  expect(Math.abs((await freeOn(dir)) - free)).toBeLessThan(MiB);
}

describe("a backup that unpacks to more than the disk holds (the manifest's sizes, not the file's)", () => {
  it('a 64 MiB member of zeros in scripts/: refused on the staging folder beside the live one', async () => {
    const path = await resealed('gem-backup-2026-11-30-200000.tar.gz', (entries, manifest) =>
      withManifest(manifest, [...entries, zeros('scripts/zeros.bin', 64 * MiB)]),
    );
    expect(await freeOn(gemDisk)).toBeLessThan(16 * MiB);
    await expectRefusedUpFront(path, join(gemDisk, 'scripts'));
  });

  it('a 64 MiB dump of zeros: refused on the work folder', async () => {
    const path = await resealed('gem-backup-2026-11-30-200001.tar.gz', (entries, manifest) =>
      withManifest(
        manifest,
        entries.map((e) => (e.header.name === 'database.dump' ? zeros('database.dump', 64 * MiB) : e)),
      ),
    );
    const work = t.agent.paths.work;
    await mkdir(work, { recursive: true });
    await mounts.mount(work, '16m');
    try {
      await expectRefusedUpFront(path, work);
    } finally {
      await mounts.unmount(work);
    }
  });
});

describe('a disk filling up while the backup is staged (the check told to pass)', () => {
  it("names the staging folder's file system, beside the live folder, not the work folder", async () => {
    const path = await resealed('gem-backup-2026-11-30-200003.tar.gz', (entries, manifest) =>
      withManifest(manifest, [...entries, zeros('scripts/zeros.bin', 24 * MiB)]),
    );
    const before = await liveState(t.agent);
    const job = await runRestore(t.agent, path, { skipSafetyBackup: true, faults: { requiredBytes: 0 } });
    expect(job.error?.code, job.error?.message).toBe('no_space');
    expect(job.error?.message).toMatch(
      new RegExp(
        `^the disk filled up while staging the restore under ${gemDisk} \\(the scripts folder's staging copy\\); nothing was changed`,
      ),
    );
    expect(job.error?.message).not.toContain(t.agent.paths.work);
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
  });
});

describe('a member longer than its manifest says', () => {
  const SAID = 1000;
  let path: string;

  beforeAll(async () => {
    // The manifest says 1000 bytes; its tar entry holds 8 MiB.
    path = await resealed('gem-backup-2026-11-30-200002.tar.gz', (entries, manifest) => {
      const [head, ...rest] = withManifest(manifest, [...entries, zeros('scripts/long.bin', 8 * MiB)]);
      const listed = JSON.parse(head!.data!.toString('utf8')) as Manifest;
      for (const m of listed.members) if (m.path === 'scripts/long.bin') m.size = SAID;
      const data = Buffer.from(JSON.stringify(listed));
      return [
        { header: { name: MANIFEST_NAME, type: 'file', size: data.length, mode: 0o644 }, data },
        ...rest,
      ];
    });
  });

  it('is stopped at that size: no byte past it reaches its sink', async () => {
    let written = 0;
    const read = readBackup(path, {
      keys: t.agent.keyring.masterKeys,
      openMember: async (m) =>
        new Writable({
          write(chunk: Buffer, _e, cb) {
            if (m.path === 'scripts/long.bin') written += chunk.length;
            cb();
          },
        }),
    });
    const error = (await read.catch((e: unknown) => e)) as AppError;
    expect(error.code, error.message).toBe('corrupt_backup');
    expect(written).toBeLessThanOrEqual(SAID);
    expect(error.message).toContain(`member scripts/long.bin is larger than the manifest's ${SAID} bytes`);
  });

  it('a restore of it is refused as damaged, nothing changed', async () => {
    const before = await liveState(t.agent);
    const job = await runRestore(t.agent, path, { skipSafetyBackup: true });
    expect(job.error?.code, job.error?.message).toBe('corrupt_backup');
    expect(job.error?.message).toContain('scripts/long.bin is larger than the manifest');
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
  });
});

describe('the safety backup, counted where it is written', () => {
  it('a work folder with room for the dump but not for a backup file is not what refuses the restore', async () => {
    // An 8 MiB backup file (8 MiB that do not compress): the safety backup before it is about that size,
    // written into the backups folder, on another file system than the 4 MiB work folder.
    const path = await resealed('gem-backup-2026-11-30-200004.tar.gz', (entries, manifest) =>
      withManifest(manifest, [
        ...entries,
        {
          header: { name: 'scripts/noise.bin', type: 'file', size: 8 * MiB, mode: 0o644 },
          data: randomBytes(8 * MiB),
        },
      ]),
    );
    const work = t.agent.paths.work;
    await mkdir(work, { recursive: true });
    await mounts.mount(work, '4m');
    try {
      const job = await runRestore(t.agent, path);
      expect(job.error, job.error?.message).toBeUndefined();
      expect(job.result).toMatchObject({ safetyBackup: expect.any(String) });
    } finally {
      await mounts.unmount(work);
    }
    // Back to the state before, for the tests after this one.
    const back = await runRestore(t.agent, t.agent.catalog.pathOf(backupName), { skipSafetyBackup: true });
    expect(back.error).toBeUndefined();
  });
});
