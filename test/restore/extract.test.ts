/** Extraction sinks: restored files are byte-identical, fsynced with all their bytes, folders fsynced after their entries, and mtimes come from the tar headers. */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../agent/backup/manifest';
import { readBackup } from '../../agent/backup/reader';
import { type EntryHeader, extractionSinks, type SyncEntry } from '../../agent/restore/extract';
import type { MasterKey } from '../../shared/envelope';
import { type ArchiveEntry, sealArchive, withManifest } from './helpers';

const key: MasterKey = { id: 'extract-test', key: new Uint8Array(randomBytes(32)) };
const installationId = randomBytes(16).toString('hex');
const folderTime = new Date('2020-01-02T03:04:05.000Z');
const fileTime = new Date('2021-06-07T08:09:10.000Z');

const folder = (name: string, mtime = folderTime): ArchiveEntry => ({
  header: { name, type: 'directory', mode: 0o755, mtime },
});
const file = (name: string, data: Buffer, mtime = fileTime): ArchiveEntry => ({
  header: { name, type: 'file', size: data.length, mode: 0o644, mtime },
  data,
});

const entries: ArchiveEntry[] = [
  folder('scripts'),
  folder('scripts/lib', new Date('2019-05-05T05:05:05.000Z')),
  file('scripts/lib/a.lua', Buffer.from('print("a")\n')),
  // Larger than one write: the fsync must come after the last chunk.
  file('scripts/big.lua', randomBytes(700_000), new Date('2018-08-08T08:08:08.000Z')),
  file('scripts/empty.lua', Buffer.alloc(0)),
  folder('config'),
  file('config/gem.json', Buffer.from('{"version":"1"}')),
];

const base: Manifest = {
  format: 'gem-backup-manifest',
  version: 1,
  createdAt: new Date().toISOString(),
  installationId,
  agentVersion: 'test',
  kind: 'manual',
  postgres: { serverVersion: '15.0', serverVersionNum: 150000, dumpVersion: 'pg_dump 15.0', database: 'gem' },
  rowCounts: {},
  members: [],
};

let dir: string;
let archive: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-extract-'));
  archive = join(dir, 'archive.tar.gz');
  await sealArchive(key, installationId, withManifest(base, entries), archive);
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Staging folders for one extraction. */
async function targets(name: string) {
  const root = join(dir, name);
  const folders = { scripts: join(root, 'scripts-staging'), config: join(root, 'config-staging') };
  await mkdir(folders.scripts, { recursive: true });
  await mkdir(folders.config, { recursive: true });
  return { dumpPath: join(root, 'database.dump'), folders };
}

/** Where an archive entry lands in the staging folders. */
function landed(t: Awaited<ReturnType<typeof targets>>, name: string): string {
  const [top, ...rest] = name.split('/');
  return join(t.folders[top as 'scripts' | 'config'], ...rest);
}

describe('extraction sinks', () => {
  it('fsync each restored file after its last byte and each folder after its entries', async () => {
    const t = await targets('sync');
    const synced: { kind: string; path: string; size: number }[] = [];
    // A wrapper around the real fsync: it records what was synced, and the file's size at that moment.
    const sync: SyncEntry = async (handle, path, kind) => {
      synced.push({ kind, path, size: (await handle.stat()).size });
      await handle.sync();
    };
    const sinks = extractionSinks(t, { sync });
    await readBackup(archive, { keys: [key], openMember: sinks.openMember, onDirectory: sinks.onDirectory });
    await sinks.finish?.();

    const files = entries.filter((e) => e.data);
    for (const e of files) {
      const path = landed(t, e.header.name);
      expect(await readFile(path)).toEqual(e.data);
      expect(synced.filter((s) => s.path === path)).toEqual([{ kind: 'file', path, size: e.data!.length }]);
    }
    const folders = [t.folders.scripts, join(t.folders.scripts, 'lib'), t.folders.config];
    for (const path of folders) {
      const at = synced.findIndex((s) => s.path === path && s.kind === 'folder');
      expect(at, path).toBeGreaterThanOrEqual(0);
      // Synced after everything inside it.
      const inside = synced.map((s, i) => [s.path, i] as const).filter(([p]) => p.startsWith(`${path}/`));
      for (const [p, i] of inside) expect(i, `${p} before ${path}`).toBeLessThan(at);
    }
    expect(synced.length).toBe(files.length + folders.length);
  });

  it("give restored files and folders their tar header's mtime (folders after their entries)", async () => {
    const t = await targets('mtime');
    const sinks = extractionSinks(t);
    // The headers as the reader hands them over with each member.
    const headers = new Map<string, EntryHeader>(
      entries.map((e) => [e.header.name, { mtime: e.header.mtime }]),
    );
    await readBackup(archive, {
      keys: [key],
      openMember: (m) => sinks.openMember(m, headers.get(m.path)),
      onDirectory: (m) => sinks.onDirectory(m, headers.get(m.path)),
    });
    await sinks.finish?.();
    for (const e of entries) {
      const info = await stat(landed(t, e.header.name));
      expect(info.mtime.toISOString(), e.header.name).toBe(e.header.mtime!.toISOString());
    }
  });
});
