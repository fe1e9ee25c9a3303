// An SFTP destination whose disk is full: a small tmpfs mounted under the test sshd's folder (needs root).
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeDestinationError } from '../../agent/offsite/messages';
import { fileSource } from '../../agent/offsite/transfer';
import { SftpProvider } from '../../agent/providers/sftp';
import { runProcess } from '../../agent/system/spawn';
import { isStorageError, type StorageError } from '../../shared/storage/index';
import { type SshdService, startSshd, unixIds } from '../services/sshd';

const NAME = 'gem-backup-2026-11-30-120000.tar.gz';
let sshd: SshdService;
let full = '';
let mounted = false;
let local = '';

beforeAll(async () => {
  sshd = await startSshd();
  full = join(sshd.root, 'full');
  await mkdir(full);
  const { uid, gid } = await unixIds(sshd.passwordUser.username);
  const mount = await runProcess('mount', [
    '-t',
    'tmpfs',
    '-o',
    `size=2m,uid=${uid},gid=${gid},mode=755`,
    'tmpfs',
    full,
  ]);
  if (mount.code !== 0)
    throw new Error(`this test mounts a 2 MB tmpfs and needs root: ${mount.stderr.trim()}`);
  mounted = true;
  local = join(tmpdir(), `gem-sftp-full-${process.pid}`);
  await mkdir(local, { recursive: true });
}, 60_000);

afterAll(async () => {
  if (mounted) await runProcess('umount', [full]);
  await sshd?.stop();
  if (local) await rm(local, { recursive: true, force: true });
});

describe('an SFTP server whose disk fills up during an upload', () => {
  it('says the server failed to write the file and may be out of space or over quota; no temp file is left', async () => {
    const path = join(local, NAME);
    const bytes = randomBytes(6 * 1024 * 1024);
    await writeFile(path, bytes);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const provider = new SftpProvider({
      host: sshd.host,
      port: sshd.port,
      username: sshd.passwordUser.username,
      password: sshd.passwordUser.password,
      remotePath: 'full',
    });
    const error = await provider.put(NAME, fileSource(path, bytes.length, sha256)).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(isStorageError(error)).toBe(true);
    const failure = error as StorageError;
    expect(failure.code).toBe('no_space');
    expect(failure.message).toBe(
      `the server failed to write ${NAME}: it may be out of space or over quota (it answered "Failure")`,
    );
    // What the job and the page say for it.
    const section = { host: sshd.host, port: sshd.port, remotePath: 'full' } as never;
    expect(describeDestinationError('sftp', section, failure).message).toBe(
      `${sshd.host}:${sshd.port} (folder full): the server failed to write ${NAME}: it may be out of space or over quota (it answered "Failure"). Free some space there (or lower the number of backups kept), or raise the quota, then try again.`,
    );
    // The temp file was removed: the tmpfs is empty again.
    expect(await readdir(full)).toEqual([]);
  });
});
