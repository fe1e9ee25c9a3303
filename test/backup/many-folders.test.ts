// readBackup of archives holding long runs of folders: the checksum worker must not hold the bytes of their headers.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { readBackup } from '../../agent/backup/reader';
import { standaloneContext } from '../../agent/jobs/runner';
import { createSealTransform } from '../../agent/keys/envelope-node';
import { silentLogger } from '../../agent/log';
import { generateFileKey, newCore, wrapForMasterKey } from '../../shared/envelope';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

/** More folder headers in a row (512 bytes each) than the worker's 8 batches of 1 MiB hold. */
const FOLDERS = 20_000;

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function collect(stream: Readable): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of stream) out.push(c as Buffer);
  return Buffer.concat(out);
}

type Entry = { path: string; type: 'file' | 'directory'; data?: Buffer };

/** A tar archive of `entries` in `pack`'s order, one entry at a time as create.ts does (queued all at once, tar-stream recurses per entry). */
async function tarOf(
  entries: { header: Partial<tar.Header> & { name: string }; data: Buffer }[],
): Promise<Buffer> {
  const pack = tar.pack();
  const out = collect(pack as unknown as Readable);
  for (const { header, data } of entries)
    await new Promise<void>((resolve, reject) =>
      pack.entry(header, data, (e) => (e ? reject(e) : resolve())),
    );
  pack.finalize();
  return out;
}

/** The end of a tar archive: two zero blocks. */
const END_OF_TAR = 1024;

/**
 * A sealed backup of `entries` (gzip level 0, as create.ts writes), the manifest lying about `wrongSha`.
 * `members` is the tar of the entries themselves (`tarOf`), made once: only the manifest differs.
 */
async function sealedBackup(
  entries: Entry[],
  members: Buffer,
  fileKey: Uint8Array,
  wrongSha?: string,
): Promise<Buffer> {
  const manifest = Buffer.from(
    JSON.stringify({
      format: 'gem-backup-manifest',
      version: 1,
      createdAt: new Date().toISOString(),
      installationId: '0123456789abcdef0123456789abcdef',
      agentVersion: 'test',
      kind: 'manual',
      postgres: { serverVersion: '15', serverVersionNum: 150000, dumpVersion: '15', database: 'gem' },
      rowCounts: {},
      members: entries.map((e) => ({
        path: e.path,
        type: e.type,
        size: e.data?.length ?? 0,
        ...(e.type === 'file'
          ? { sha256: e.path === wrongSha ? sha(Buffer.from('other')) : sha(e.data!) }
          : {}),
      })),
    }),
  );
  const head = await tarOf([{ header: { name: 'manifest.json' }, data: manifest }]);
  const gzip = createGzip({ level: 0 });
  const sealer = createSealTransform({
    core: newCore({ installationId: '0123456789abcdef0123456789abcdef', chunkSize: 1 << 20 }),
    stanzas: [await wrapForMasterKey(fileKey, { id: 'k1', key: randomBytes(32) })],
    fileKey,
  });
  gzip.pipe(sealer);
  const out = collect(sealer);
  gzip.end(Buffer.concat([head.subarray(0, head.length - END_OF_TAR), members]));
  return out;
}

describe('a backup with many folders in a row', () => {
  it(`a real backup of ${FOLDERS} consecutive folders is created, verified and read again`, async () => {
    const many = join(t.agent.sources.scriptsDir, 'many');
    await mkdir(many);
    // Made 100 at a time: one by one took longer than the backup's own reading of them.
    for (let i = 0; i < FOLDERS; i += 100)
      await Promise.all(
        Array.from({ length: 100 }, (_, j) => mkdir(join(many, `d${String(i + j).padStart(5, '0')}`))),
      );

    const backup = await createBackup(backupDeps(t.agent), standaloneContext(silentLogger));
    expect(backup.verifyResult).toBe('ok');

    let folders = 0;
    const { manifest } = await readBackup(t.agent.catalog.pathOf(backup.filename), {
      keys: t.agent.keyring.masterKeys,
      onDirectory: async (m) => {
        if (m.path.startsWith('scripts/many/')) folders++;
      },
    });
    expect(folders).toBe(FOLDERS);
    expect(manifest.members.filter((m) => m.type === 'file').length).toBeGreaterThan(3);
  });

  it('with folders (long names: pax headers) between the files, still checks every file against its sha256', async () => {
    const long = 'x'.repeat(120);
    const entries: Entry[] = [
      { path: 'scripts', type: 'directory' },
      { path: 'scripts/a.js', type: 'file', data: randomBytes(70_000) },
    ];
    for (let i = 0; i < 17_000; i++)
      entries.push({ path: `scripts/${i % 2 ? long : 'd'}${i}`, type: 'directory' });
    entries.push({ path: `scripts/${long}.js`, type: 'file', data: randomBytes(1_500_000) });
    entries.push({ path: 'scripts/empty.js', type: 'file', data: Buffer.alloc(0) });
    for (let i = 0; i < 17_000; i++) entries.push({ path: `scripts/e${i}`, type: 'directory' });
    entries.push({ path: 'scripts/z.js', type: 'file', data: randomBytes(10) });

    const fileKey = generateFileKey();
    const read = (file: Buffer) =>
      readBackup(Readable.from([file]), { keys: [], resolveFileKey: async () => fileKey });

    const members = await tarOf(
      entries.map((e) =>
        e.type === 'directory'
          ? { header: { name: e.path, type: 'directory' }, data: Buffer.alloc(0) }
          : { header: { name: e.path }, data: e.data! },
      ),
    );
    const good = await read(await sealedBackup(entries, members, fileKey));
    expect(good.manifest.members).toHaveLength(entries.length);

    for (const e of entries.filter((x) => x.type === 'file')) {
      await expect(read(await sealedBackup(entries, members, fileKey, e.path))).rejects.toMatchObject({
        code: 'corrupt_backup',
        message: expect.stringContaining(`member ${e.path} fails its sha256 check`),
      });
    }
  });
});
