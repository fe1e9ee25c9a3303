// A copy into the local backups refused before its first byte is read (no room for it beside the
// database's reserve) ends its read at the destination: the SFTP connection it held is given back (the
// provider's close() then ends it) and its smbclient is ended, rather than left blocked for good. A
// sparse file larger than the free space at a real sshd (through a relay that counts connections) and a
// real smbd.
import { chown, mkdir, mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupCatalog } from '../../agent/backup/catalog';
import { usableSpace } from '../../agent/backup/upload';
import { AppError } from '../../agent/errors';
import { Keyring } from '../../agent/keys/keyring';
import { downloadToCatalog } from '../../agent/offsite/transfer';
import { SftpProvider } from '../../agent/providers/sftp';
import { SmbProvider } from '../../agent/providers/smb';
import type { StorageProvider } from '../../shared/storage/index';
import { type Relay, startRelay } from '../services/relay';
import { type SmbdService, smbclientChildren, smbOptionsFor, startSmbd } from '../services/smbd';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { until, within } from '../services/wait';

const NAME = 'gem-backup-2026-01-01-000000.tar.gz';
const RETRY = { attempts: 2, baseDelayMs: 10, maxDelayMs: 20 };

let sshd: SshdService;
let smbd: SmbdService;
let relay: Relay;
let dir: string;
let catalog: BackupCatalog;
let keyring: Keyring;

/** Puts a sparse file of `size` bytes under NAME in `folder`, owned like `owner`. */
async function sparseBackup(folder: string, size: number, owner: string): Promise<void> {
  await mkdir(folder, { recursive: true });
  const file = await open(join(folder, NAME), 'w');
  await file.truncate(size);
  await file.close();
  const { uid, gid } = await stat(owner);
  await chown(folder, uid, gid);
  await chown(join(folder, NAME), uid, gid);
}

beforeAll(async () => {
  ({ sshd, smbd } = await startAll({ sshd: startSshd, smbd: startSmbd }));
  relay = await startRelay(sshd.port);
  dir = await mkdtemp(join(tmpdir(), 'gem-download-refused-'));
  catalog = new BackupCatalog(join(dir, 'backups'), join(dir, 'records.json'));
  await catalog.init();
  keyring = await Keyring.loadOrCreate(join(dir, 'keyring.json'));
  // A gigabyte more than may be used here: refused as soon as its size is known.
  const size = (await usableSpace(catalog.dir)).room + 1024 ** 3;
  await sparseBackup(join(sshd.root, 'big'), size, sshd.root);
  await sparseBackup(join(smbd.root, 'big'), size, smbd.root);
});
afterAll(async () => {
  await relay?.stop();
  await Promise.all([sshd?.stop(), smbd?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Copies NAME from `provider` into the local backups, expecting the refusal for its size. */
async function refusedForSpace(provider: StorageProvider): Promise<void> {
  const error = await downloadToCatalog({ catalog, keyring }, provider, NAME, { retry: RETRY }).then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(AppError);
  expect((error as AppError).code).toBe('no_space');
  expect(await readdir(catalog.dir)).toEqual([]);
}

describe('a download into the local backups refused before its first byte', () => {
  it('gives its SFTP connection back: the provider closed, the connection ends', async () => {
    const sftp = new SftpProvider({
      host: relay.host,
      port: relay.port,
      username: sshd.passwordUser.username,
      password: sshd.passwordUser.password,
      remotePath: 'big',
      hostKeyFingerprint: sshd.hostKeyFingerprint,
      // Kept far longer than the test: only close() ends it, once no download holds it.
      idleCloseMs: 10 * 60_000,
    });
    await refusedForSpace(sftp);
    await sftp.close(); // as a job's provider is closed when the job ends
    await within(relay.closed(), 5000, 'the SSH connection to end');
    expect(relay.open).toBe(0);
  });

  it('ends its smbclient', async () => {
    const smb: StorageProvider = new SmbProvider(smbOptionsFor(smbd, '/big/'));
    await refusedForSpace(smb);
    await smb.close?.();
    await until(async () => smbclientChildren(smbd).length === 0, 'the smbclient of the download to end', 50);
  });
});
