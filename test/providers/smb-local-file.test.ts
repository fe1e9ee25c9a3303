// The SMB provider's put of a local file (smbclient reads it, the agent hashes it meanwhile), against a real smbd.
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSource } from '../../agent/offsite/transfer';
import { SmbProvider } from '../../agent/providers/smb';
import { isStorageError } from '../../shared/storage/index';
import { type SmbdService, startSmbd } from '../services/smbd';
import { randomFile } from './random-file';

const MIB = 1024 * 1024;
const name = 'gem-backup-2026-05-06-070809.tar.gz';
let smbd: SmbdService;
let dir: string;
beforeAll(async () => {
  smbd = await startSmbd();
  dir = await mkdtemp(join(tmpdir(), 'gem-smb-file-'));
});
afterAll(async () => {
  await smbd?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function provider(folder: string): SmbProvider {
  return new SmbProvider({
    host: smbd.host,
    port: smbd.port,
    share: smbd.share,
    username: smbd.username,
    password: smbd.password,
    remotePath: `/${folder}/`,
  });
}

describe('smb provider, local file source', () => {
  it('puts the file byte for byte and reports the sha256 it read', async () => {
    const file = await randomFile(dir, 'good', 3 * MIB + 5);
    let progress = 0;
    const stored = await provider('good').put(name, fileSource(file.path, file.bytes.length, file.sha256), {
      onProgress: (bytes) => {
        progress = bytes;
      },
    });
    expect(stored).toMatchObject({ name, size: file.bytes.length, sha256: file.sha256 });
    expect(progress).toBe(file.bytes.length);
    expect((await readFile(join(smbd.root, 'good', name))).equals(file.bytes)).toBe(true);
  });

  it('refuses a file whose sha256 differs from the declared one and leaves nothing on the share', async () => {
    const file = await randomFile(dir, 'bad', 2 * MIB);
    const error = await provider('bad')
      .put(name, fileSource(file.path, file.bytes.length, '0'.repeat(64)))
      .catch((caught: unknown) => caught);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await readdir(join(smbd.root, 'bad'))).toEqual([]);
  });
});
