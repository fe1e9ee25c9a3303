// Sources that carry a local file (localPath): SMB puts the file as it is, still checked; SFTP/S3 stream it.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SftpProvider } from '../../agent/providers/sftp';
import { SmbProvider } from '../../agent/providers/smb';
import { type BackupSource, isStorageError } from '../../shared/storage/index';
import { type SmbdService, startSmbd } from '../services/smbd';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';

let smbd: SmbdService;
let sshd: SshdService;
let dir: string;
beforeAll(async () => {
  ({ smbd, sshd } = await startAll({ smbd: startSmbd, sshd: startSshd }));
  dir = await mkdtemp(join(tmpdir(), 'gem-local-path-'));
});
afterAll(async () => {
  await Promise.all([smbd?.stop(), sshd?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

const name = 'gem-backup-2026-03-04-050607.tar.gz';

/** A local file of `size` pseudo-random bytes and a source over it (declared sha256 overridable). */
async function fileWith(size: number, seed: number, declared?: { sha256?: string; size?: number }) {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  const path = join(dir, `file-${seed}`);
  await writeFile(path, bytes);
  const source: BackupSource = {
    size: declared?.size ?? size,
    sha256: declared?.sha256 ?? createHash('sha256').update(bytes).digest('hex'),
    localPath: path,
    open: () => Readable.toWeb(createReadStream(path)) as ReadableStream<Uint8Array>,
  };
  return { bytes, source };
}

describe('smb put of a local file', () => {
  const provider = () =>
    new SmbProvider({
      host: smbd.host,
      port: smbd.port,
      share: smbd.share,
      username: smbd.username,
      password: smbd.password,
      remotePath: '/direct/',
    });
  const remote = () => readdir(join(smbd.root, 'direct')).catch(() => [] as string[]);

  it('stores the file byte for byte with its sha256, no temp file left', async () => {
    const { bytes, source } = await fileWith(3 * 1024 * 1024 + 17, 1);
    const stored = await provider().put(name, source);
    expect(stored).toMatchObject({ name, size: bytes.length, sha256: source.sha256 });
    expect(await remote()).toEqual([name]);
    expect((await readFile(join(smbd.root, 'direct', name))).equals(bytes)).toBe(true);
  });

  it('replaces an existing backup only once the new copy checked out', async () => {
    const { bytes, source } = await fileWith(200_000, 2);
    await provider().put(name, source);
    expect(await remote()).toEqual([name]);
    expect((await readFile(join(smbd.root, 'direct', name))).equals(bytes)).toBe(true);
  });

  it("refuses a file whose sha256 is not the declared one with 'integrity', keeping the previous backup", async () => {
    const before = await readFile(join(smbd.root, 'direct', name));
    const { source } = await fileWith(150_000, 3, { sha256: 'ab'.repeat(32) });
    const error = await provider()
      .put(name, source)
      .catch((caught: unknown) => caught);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await remote()).toEqual([name]);
    expect((await readFile(join(smbd.root, 'direct', name))).equals(before)).toBe(true);
  });

  it("refuses a bad file under a new name with 'integrity' and leaves nothing under it", async () => {
    const other = 'gem-backup-2026-03-04-050608.tar.gz';
    const { source } = await fileWith(150_000, 4, { size: 150_001 });
    const error = await provider()
      .put(other, source)
      .catch((caught: unknown) => caught);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await remote()).toEqual([name]);
  });
});

describe('sftp put with many writes in flight', () => {
  it('stores a file of uneven size byte for byte', async () => {
    const { bytes, source } = await fileWith(9 * 1024 * 1024 + 12345, 5);
    const provider = new SftpProvider({
      host: sshd.host,
      port: sshd.port,
      username: sshd.passwordUser.username,
      password: sshd.passwordUser.password,
      remotePath: 'pipelined',
    });
    const seen: number[] = [];
    const stored = await provider.put(name, source, { onProgress: (n) => seen.push(n) });
    expect(stored).toMatchObject({ size: bytes.length, sha256: source.sha256 });
    expect(seen.at(-1)).toBe(bytes.length);
    expect(await readdir(join(sshd.root, 'pipelined'))).toEqual([name]);
    // Buffer.equals: a deep toEqual of megabytes takes minutes.
    expect((await readFile(join(sshd.root, 'pipelined', name))).equals(bytes)).toBe(true);
  });
});
