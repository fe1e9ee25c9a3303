// A DR recovery whose copy into the local backups is refused before its first byte (here: the backups'
// disk has no room for it) fails with no_space and keeps no file of the downloaded backup open: its work
// folder is removed, and the disk space of the download is given back at once, not at the agent's exit.
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { drServiceFor } from '../../agent/dr/service';
import { runProcess } from '../../agent/system/spawn';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { openFilesUnder, pushViaApi, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
let a: TestAgent;
let b: TestAgent;
let c: TestAgent;
let dataDir = '';
let mounted = '';
let smallWorkDir = '';
let smallWork = '';

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  a = await startDrAgent(pg, cloud.url);
  // B's backups folder is a 16 KiB file system: the recovered backup downloads (to the work folder) and
  // checks, but its copy into the backups does not fit.
  dataDir = await mkdtemp(join(tmpdir(), 'gem-dr-copy-refused-'));
  const backups = join(dataDir, 'backups');
  await mkdir(backups);
  const result = await runProcess('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', backups]);
  if (result.code !== 0)
    throw new Error(
      `this test mounts a tmpfs and needs root (or CAP_SYS_ADMIN): mount said ${result.stderr.trim()}`,
    );
  mounted = backups;
  b = await startDrAgent(pg, cloud.url, { dataDir });
  // C's work folder (where a recovery downloads) is a 16 KiB file system: the backup cannot fit.
  smallWorkDir = await mkdtemp(join(tmpdir(), 'gem-dr-small-work-'));
  const work = join(smallWorkDir, 'work');
  await mkdir(work);
  const small = await runProcess('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', work]);
  if (small.code !== 0) throw new Error(`mount said ${small.stderr.trim()}`);
  smallWork = work;
  c = await startDrAgent(pg, cloud.url, { dataDir: smallWorkDir });
});
afterAll(async () => {
  await c?.close();
  await b?.close();
  await a?.close();
  if (mounted) await runProcess('umount', [mounted]);
  if (smallWork) await runProcess('umount', [smallWork]);
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
  if (smallWorkDir) await rm(smallWorkDir, { recursive: true, force: true });
  await cloud?.dispose();
  await pg?.stop();
});

describe('a DR recovery whose copy into the backups is refused', () => {
  it('fails with no_space and keeps no file of the download open', async () => {
    expect((await pushViaApi(a)).state).toBe('succeeded');
    const job = await b.agent.jobs.waitFor(
      (await drServiceFor(b.agent).startRecover(a.agent.keyring.installationId)).id,
    );
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('no_space');
    expect(job.error?.message).toContain('not enough free disk space to store this backup');
    expect(await readdir(b.agent.paths.work).catch(() => [])).toEqual([]);
    expect(await openFilesUnder(b.agent.paths.work)).toEqual([]);
    expect(await b.agent.catalog.list()).toEqual([]);
  });
});

describe('a DR recovery whose download does not fit', () => {
  it('is refused before its first byte is written, saying how big it is: nothing written, nothing open', async () => {
    expect((await pushViaApi(a)).state).toBe('succeeded');
    const job = await c.agent.jobs.waitFor(
      (await drServiceFor(c.agent).startRecover(a.agent.keyring.installationId)).id,
    );
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('no_space');
    expect(job.error?.message).toMatch(
      /^not enough free disk space to store this backup: it is \d+ MB, only 0 MB may be used/,
    );
    expect(await readdir(c.agent.paths.work).catch(() => [])).toEqual([]);
    expect(await openFilesUnder(smallWork)).toEqual([]);
    expect(await c.agent.catalog.list()).toEqual([]);
    expect(await drServiceFor(c.agent).unfinished.read()).toBeNull();
  });
});
