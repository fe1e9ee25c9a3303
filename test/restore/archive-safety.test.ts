import { mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { restoreModule } from '../../agent/http/routes/restore';
import { extractionSinks } from '../../agent/restore/extract';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { tempDirForTest } from '../services/temp-dir';
import {
  type ArchiveEntry,
  hostileFile as file,
  hostile,
  leftovers,
  liveState,
  sealArchive,
} from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let outside: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [restoreModule] });
  outside = await mkdtemp(join(tmpdir(), 'gem-outside-'));
}, 120_000);

afterAll(async () => {
  if (outside) await rm(outside, { recursive: true, force: true });
  await t?.close();
  await pg?.stop();
});

describe('malicious archives sealed with the installation keys', () => {
  const corpus: Array<[string, () => ArchiveEntry[]]> = [
    ['../x', () => [file('../x')]],
    ['/abs', () => [file(join(outside, 'abs'))]],
    ['a/../../x', () => [file('scripts/a/../../x')]],
    [
      'a symlink, then a file through it',
      () => [
        { header: { name: 'scripts/link', type: 'symlink', linkname: outside } },
        file('scripts/link/x'),
      ],
    ],
    [
      'a hardlink to a file outside',
      () => [{ header: { name: 'scripts/hard', type: 'link', linkname: '/etc/passwd' } }],
    ],
    [
      'a device entry',
      () => [{ header: { name: 'scripts/null', type: 'character-device', devmajor: 1, devminor: 3 } }],
    ],
    ['an entry outside scripts/ and config/', () => [file('evil.sh')]],
  ];
  corpus.forEach(([what, entries], i) => {
    it(`refuses ${what}: nothing written outside staging, live untouched`, async () => {
      const before = await liveState(t.agent);
      const name = `gem-backup-2020-01-0${i + 1}-000000.tar.gz`;
      await sealArchive(
        t.agent.keyring.activeKey,
        t.agent.keyring.installationId,
        hostile(t.agent.keyring.installationId, entries()),
        t.agent.catalog.pathOf(name),
      );
      const res = await t.request(`/api/v1/backups/${name}/restore`, {
        method: 'POST',
        body: JSON.stringify({ confirm: name }),
      });
      expect(res.status).toBe(202);
      const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
      expect(job.state).toBe('failed');
      expect(job.error?.code).toBe('corrupt_backup');
      expect(job.error?.message).toMatch(/unsafe archive entry/);
      expect(await readdir(outside)).toEqual([]);
      for (const dir of [dirname(t.agent.sources.scriptsDir), t.dataDir, join(t.dataDir, 'work')]) {
        expect(
          (await readdir(dir).catch(() => [])).filter((n) => ['x', 'abs', 'evil.sh'].includes(n)),
        ).toEqual([]);
      }
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
    });
  });
});

describe('the extraction sinks', () => {
  it('never write through a symlink planted in the staging folder', async () => {
    const root = await tempDirForTest('gem-sinks-');
    const scripts = join(root, 'scripts.staging');
    const sinks = extractionSinks({
      dumpPath: join(root, 'dump'),
      folders: { scripts, config: join(root, 'config.staging') },
    });
    await sinks.onDirectory({ path: 'scripts', type: 'directory', size: 0 });
    await symlink(outside, join(scripts, 'planted'));
    const member = (path: string) => ({ path, type: 'file' as const, size: 1 });
    await expect(sinks.openMember(member('scripts/planted/x'))).rejects.toThrow(/escapes the staging folder/);
    await expect(sinks.openMember(member('scripts/planted'))).rejects.toThrow(/already exists/);
    await expect(sinks.onDirectory({ path: 'scripts/planted', type: 'directory', size: 0 })).rejects.toThrow(
      /already exists/,
    );
    await expect(
      sinks.onDirectory({ path: 'scripts/planted/sub', type: 'directory', size: 0 }),
    ).rejects.toThrow(/escapes/);
    await expect(sinks.openMember(member('scripts/missing/x'))).rejects.toThrow(/does not exist/);
    await expect(sinks.openMember(member('scripts/../x'))).rejects.toThrow(/unsafe/);
    await expect(sinks.openMember(member('other/x'))).rejects.toThrow(/outside scripts/);
    await mkdir(join(scripts, 'ok'));
    const sink = await sinks.openMember(member('scripts/ok/file.lua'));
    await new Promise<void>((resolve, reject) => sink.end('y', () => resolve()).on('error', reject));
    expect(await readdir(join(scripts, 'ok'))).toEqual(['file.lua']);
    expect(await readdir(outside)).toEqual([]);
  });
});
