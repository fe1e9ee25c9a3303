// The checksum worker (gzip CRC-32 and member sha256 off the decrypting thread) and readBackup's checks through it.
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { crc32, gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { createBackupGunzip } from '../../agent/backup/gunzip';
import { ArchiveHasher } from '../../agent/backup/member-hasher';
import { readBackup } from '../../agent/backup/reader';
import { AppError } from '../../agent/errors';
import { createSealTransform } from '../../agent/keys/envelope-node';
import { generateFileKey, newCore, wrapForMasterKey } from '../../shared/envelope';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function collect(stream: Readable): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of stream) out.push(c as Buffer);
  return Buffer.concat(out);
}

/** A tar archive of a manifest and the given members, with sha256 in the manifest unless `wrongSha`. */
async function archive(members: Record<string, Buffer>, wrongSha?: string): Promise<Buffer> {
  const pack = tar.pack();
  const manifest = {
    format: 'gem-backup-manifest',
    version: 1,
    createdAt: new Date().toISOString(),
    installationId: '0123456789abcdef0123456789abcdef',
    agentVersion: 'test',
    kind: 'manual',
    postgres: { serverVersion: '15', serverVersionNum: 150000, dumpVersion: '15', database: 'gem' },
    rowCounts: {},
    members: Object.entries(members).map(([path, bytes]) => ({
      path,
      type: 'file',
      size: bytes.length,
      sha256: path === wrongSha ? sha(Buffer.from('other')) : sha(bytes),
    })),
  };
  const out = collect(pack as unknown as Readable);
  pack.entry({ name: 'manifest.json' }, JSON.stringify(manifest));
  for (const [name, bytes] of Object.entries(members)) pack.entry({ name }, bytes);
  pack.finalize();
  return out;
}

/** Seals gzip bytes into a backup envelope (small chunks: many of them). */
async function seal(gz: Buffer, fileKey: Uint8Array): Promise<Buffer> {
  const sealer = createSealTransform({
    core: newCore({ installationId: '0123456789abcdef0123456789abcdef', chunkSize: 4096 }),
    stanzas: [await wrapForMasterKey(fileKey, { id: 'k1', key: randomBytes(32) })],
    fileKey,
  });
  const out = collect(sealer);
  sealer.end(gz);
  return out;
}

async function read(file: Buffer, fileKey: Uint8Array) {
  return readBackup(Readable.from([file]), { keys: [], resolveFileKey: async () => fileKey });
}

describe('archive hasher', () => {
  it('hashes member ranges named before or after their bytes, empty ones included, and keeps the CRC', async () => {
    const bytes = randomBytes(3_500_000); // several batches
    const hasher = new ArchiveHasher();
    try {
      const early = hasher.member(10, 2_000_000);
      for (let i = 0; i < bytes.length; i += 300_001) hasher.write(bytes.subarray(i, i + 300_001));
      await hasher.drained();
      const empty = hasher.member(2_000_000, 2_000_000);
      const late = hasher.member(2_500_000, 3_500_000);
      hasher.known(Number.MAX_SAFE_INTEGER);
      expect(await hasher.crc()).toBe(crc32(bytes));
      expect(await early).toBe(sha(bytes.subarray(10, 2_000_000)));
      expect(await empty).toBe(sha(Buffer.alloc(0)));
      expect(await late).toBe(sha(bytes.subarray(2_500_000)));
    } finally {
      await hasher.close();
    }
    // The worker is reused for the next archive, from a clean state.
    const again = new ArchiveHasher();
    try {
      again.write(bytes.subarray(0, 1000));
      const whole = again.member(0, 1000);
      expect(await again.crc()).toBe(crc32(bytes.subarray(0, 1000)));
      expect(await whole).toBe(sha(bytes.subarray(0, 1000)));
    } finally {
      await again.close();
    }
  });

  it('waits for batches when the worker holds them for a range not yet named, and goes on once it is', async () => {
    const bytes = randomBytes(12_000_000); // more than the 8 MiB of batches
    const hasher = new ArchiveHasher();
    try {
      hasher.write(bytes);
      const waiting = hasher.drained();
      expect(waiting).toBeInstanceOf(Promise);
      let drained = false;
      waiting?.then(() => {
        drained = true;
      });
      await new Promise((r) => setTimeout(r, 50));
      expect(drained).toBe(false); // every batch is waiting for its range
      const digest = hasher.member(1000, 12_000_000);
      await waiting;
      expect(await hasher.crc()).toBe(crc32(bytes));
      expect(await digest).toBe(sha(bytes.subarray(1000)));
    } finally {
      await hasher.close();
    }
  });

  it('gunzip with the CRC on the worker: good data passes, a wrong CRC fails checked() like zlib', async () => {
    const plain = randomBytes(2_000_000);
    const gz = gzipSync(plain, { level: 0 });
    const run = async (bytes: Buffer) => {
      const hasher = new ArchiveHasher();
      const gunzip = createBackupGunzip(hasher);
      try {
        const out = await collect(
          Readable.from([bytes.subarray(0, 700_000), bytes.subarray(700_000)]).pipe(gunzip),
        );
        await gunzip.checked();
        return out;
      } finally {
        await hasher.close();
      }
    };
    expect((await run(gz)).equals(plain)).toBe(true);
    const bad = Buffer.from(gz);
    bad[bad.length - 8]! ^= 1;
    await expect(run(bad)).rejects.toMatchObject({ code: 'Z_DATA_ERROR', message: 'incorrect data check' });
  });

  it('readBackup accepts a good archive and refuses a wrong gzip CRC or a wrong member sha256 under a valid envelope', async () => {
    const fileKey = generateFileKey();
    const members = { 'database.dump': randomBytes(1_500_000), 'scripts/a.sh': Buffer.from('echo hi\n') };
    const good = gzipSync(await archive(members), { level: 0 });
    const result = await read(await seal(good, fileKey), fileKey);
    expect(result.manifest.members).toHaveLength(2);

    const badCrc = Buffer.from(good);
    badCrc[badCrc.length - 8]! ^= 1;
    const crcError = await read(await seal(badCrc, fileKey), fileKey).catch((e: unknown) => e);
    expect(crcError).toBeInstanceOf(AppError);
    expect(crcError).toMatchObject({
      code: 'corrupt_backup',
      message: 'the backup is damaged: the compressed stream is invalid',
    });

    const badSha = gzipSync(await archive(members, 'scripts/a.sh'), { level: 0 });
    const shaError = await read(await seal(badSha, fileKey), fileKey).catch((e: unknown) => e);
    expect(shaError).toMatchObject({
      code: 'corrupt_backup',
      message: 'the backup is damaged: member scripts/a.sh fails its sha256 check',
    });
  });
});
