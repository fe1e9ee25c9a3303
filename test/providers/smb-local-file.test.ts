// The SMB provider's put of a local file (smbclient reads it, the agent hashes it meanwhile), against a real smbd.
import { type FSWatcher, watch } from 'node:fs';
import { chown, mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSource } from '../../agent/offsite/transfer';
import { SmbProvider } from '../../agent/providers/smb';
import { runProcess } from '../../agent/system/spawn';
import { isStorageError } from '../../shared/storage/index';
import { type SmbdService, smbOptionsFor, startSmbd } from '../services/smbd';
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
  return new SmbProvider(smbOptionsFor(smbd, `/${folder}/`));
}

/**
 * Watches a folder of the share for `name` while a put runs: inotify events plus a readdir every few
 * milliseconds, so a final name visible for only a moment is still seen. stop() returns what was seen.
 */
function watchFinalName(folder: string, target: string): { stop(): Promise<string[]> } {
  const seen: string[] = [];
  const look = () =>
    stat(join(folder, target)).then(
      (s) => seen.push(`${target} present, ${s.size} bytes`),
      () => {},
    );
  const watcher: FSWatcher = watch(folder, (_event, file) => {
    if (file === target) void look();
  });
  const poll = setInterval(() => void look(), 2);
  return {
    async stop() {
      clearInterval(poll);
      watcher.close();
      return seen;
    },
  };
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

  it('refuses a file whose sha256 differs from the declared one, never showing it under the final name', async () => {
    const file = await randomFile(dir, 'bad', 2 * MIB);
    await mkdir(join(smbd.root, 'bad'));
    const { uid, gid } = await stat(smbd.root);
    await chown(join(smbd.root, 'bad'), uid, gid);
    const watcher = watchFinalName(join(smbd.root, 'bad'), name);
    const error = await provider('bad')
      .put(name, fileSource(file.path, file.bytes.length, '0'.repeat(64)))
      .catch((caught: unknown) => caught);
    expect(await watcher.stop()).toEqual([]);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await readdir(join(smbd.root, 'bad'))).toEqual([]);
  });

  it('a put onto a share that fills up fails, never showing the truncated copy under the final name', async () => {
    const full = join(smbd.root, 'full');
    await mkdir(full);
    const mount = await runProcess('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0777', 'tmpfs', full]);
    if (mount.code !== 0) {
      throw new Error(
        `this test mounts a 1 MB tmpfs and needs root (or CAP_SYS_ADMIN): ${mount.stderr.trim()}`,
      );
    }
    try {
      const { uid, gid } = await stat(smbd.root);
      await chown(full, uid, gid);
      const file = await randomFile(dir, 'big', 3 * MIB);
      const watcher = watchFinalName(full, name);
      const error = await provider('full')
        .put(name, fileSource(file.path, file.bytes.length, file.sha256))
        .catch((caught: unknown) => caught);
      expect(await watcher.stop()).toEqual([]);
      expect(isStorageError(error)).toBe(true);
      expect(await readdir(full)).toEqual([]);
    } finally {
      await runProcess('umount', [full]);
    }
  });
});
