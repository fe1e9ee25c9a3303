// Downloads from a destination never write more than the size it gives for the backup: a hostile (or
// broken) S3 server whose HEAD says 1000 bytes but whose GET goes on is stopped at the first byte past
// them, once (permanent, no retry), for a restore's work file and for a copy into the local backups; a
// received upload stops past its declared size too. A restore's download that cannot fit beside the
// database's reserve is refused before a byte is written (a small tmpfs), and one that fits still
// downloads from a real S3 server (s3rver).
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupCatalog } from '../../agent/backup/catalog';
import { receiveUpload } from '../../agent/backup/upload';
import { AppError } from '../../agent/errors';
import { Keyring } from '../../agent/keys/keyring';
import { downloadToCatalog, downloadToFile } from '../../agent/offsite/transfer';
import { S3Provider } from '../../agent/providers/s3';
import { runProcess } from '../../agent/system/spawn';
import { StorageError } from '../../shared/storage/index';
import { type S3Service, startS3 } from '../services/s3';

const MIB = 1024 * 1024;
const NAME = 'gem-backup-2026-11-29-010000.tar.gz';
const RETRY = { attempts: 2, baseDelayMs: 10, maxDelayMs: 20 };

/** An S3 server that lists and HEADs the backup at 1000 bytes, then sends 64 MiB for its GET. */
interface Hostile {
  endpoint: string;
  gets: number;
  /** Bytes written to the GET responses (as far as the socket took them). */
  sent: number;
  close(): Promise<void>;
}

async function startHostile(): Promise<Hostile> {
  const hostile = { endpoint: '', gets: 0, sent: 0, close: async () => {} };
  const server: Server = createServer((req, res) => {
    req.resume();
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': '1000', 'last-modified': 'Sun, 29 Nov 2026 01:00:00 GMT' });
      return res.end();
    }
    if (req.method !== 'GET') {
      res.writeHead(200);
      return res.end();
    }
    hostile.gets += 1;
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(MIB, 7);
    let left = 64;
    const pump = () => {
      while (left > 0 && !res.destroyed) {
        left -= 1;
        hostile.sent += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  hostile.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  hostile.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return hostile;
}

let hostile: Hostile;
let s3: S3Service;
let dir: string;
let work: string;
let mounted = false;
let catalog: BackupCatalog;
let keyring: Keyring;

function provider(endpoint: string, bucket: string): S3Provider {
  return new S3Provider({
    endpoint,
    region: 'us-east-1',
    bucket,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    forcePathStyle: true,
  });
}

beforeAll(async () => {
  [hostile, s3] = await Promise.all([startHostile(), startS3()]);
  dir = await mkdtemp(join(tmpdir(), 'gem-download-bounds-'));
  work = join(dir, 'work');
  await mkdir(work);
  const result = await runProcess('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', work]);
  if (result.code !== 0)
    throw new Error(`this test mounts a 4 MB tmpfs and needs root: mount said ${result.stderr.trim()}`);
  mounted = true;
  catalog = new BackupCatalog(join(dir, 'backups'), join(dir, 'records.json'));
  await catalog.init();
  keyring = await Keyring.loadOrCreate(join(dir, 'keyring.json'));
}, 60_000);

afterAll(async () => {
  if (mounted) await runProcess('umount', [work]);
  await Promise.all([hostile?.close(), s3?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function refusal(promise: Promise<unknown>): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  if (!(error instanceof Error)) throw new Error(`expected a refusal, got ${String(error)}`);
  return error;
}

const longer = `the copy of ${NAME} at the destination sends more than the 1000 bytes it is listed with, so it is not what it says; the download was stopped and nothing was kept. Check the destination, or use another backup`;

describe('a server that sends more than the size it gives', () => {
  it('is stopped at the first byte past it for a restore, once', async () => {
    hostile.gets = 0;
    const path = join(work, NAME);
    const error = await refusal(
      downloadToFile(provider(hostile.endpoint, 'b'), NAME, path, { retry: RETRY }),
    );
    expect(error).toBeInstanceOf(StorageError);
    expect((error as StorageError).code).toBe('integrity');
    expect((error as StorageError).permanent).toBe(true);
    expect(error.message).toBe(longer);
    expect(hostile.gets).toBe(1);
    expect(
      await stat(path).then(
        (s) => s.size,
        () => 0,
      ),
    ).toBeLessThanOrEqual(1000);
    await rm(path, { force: true });
  });

  it('is stopped at the first byte past it for a copy into the local backups, nothing kept', async () => {
    hostile.gets = 0;
    const error = await refusal(
      downloadToCatalog({ catalog, keyring }, provider(hostile.endpoint, 'b'), NAME, { retry: RETRY }),
    );
    expect((error as StorageError).code).toBe('integrity');
    expect(error.message).toBe(longer);
    expect(hostile.gets).toBe(1);
    expect(await catalog.list()).toEqual([]);
    expect(await readdir(catalog.dir)).toEqual([]);
  });

  it('and a received upload stops past its declared size', async () => {
    let pulled = 0;
    const endless = new Readable({
      read() {
        pulled += 64 * 1024;
        this.push(pulled > 256 * MIB ? null : Buffer.alloc(64 * 1024, 1));
      },
    });
    const error = await refusal(receiveUpload({ catalog, keyring }, NAME, endless, { declaredSize: 1000 }));
    expect(error).toBeInstanceOf(AppError);
    expect((error as AppError).code).toBe('bad_request');
    expect(error.message).toBe(
      'the backup is longer than the 1000 bytes it was announced with; it was stopped and nothing was kept',
    );
    expect(pulled).toBeLessThan(2 * MIB);
    expect(await readdir(catalog.dir)).toEqual([]);
  });
});

describe("a restore's download from a real S3 server", () => {
  it('that cannot fit beside the reserve is refused before a byte is written', async () => {
    const real = provider(s3.endpoint, s3.bucket);
    const bytes = randomBytes(4.5 * MIB);
    await real.put(NAME, {
      size: bytes.length,
      open: () => Readable.toWeb(Readable.from([bytes])) as ReadableStream<Uint8Array>,
    });
    const error = await refusal(downloadToFile(real, NAME, join(work, NAME), { retry: RETRY }));
    expect(error).toBeInstanceOf(AppError);
    expect((error as AppError).code).toBe('no_space');
    expect(error.message).toMatch(
      new RegExp(
        `^not enough free disk space to download ${NAME.replace(/\./g, '\\.')} for the restore: it is 4 MB, only 3 MB may be used \\(some space is kept free for the database\\); free some space and try again$`,
      ),
    );
    expect(await readdir(work)).toEqual([]);
    await real.delete(NAME);
    await real.close();
  });

  it('that fits downloads as before', async () => {
    const real = provider(s3.endpoint, s3.bucket);
    const bytes = randomBytes(MIB);
    await real.put(NAME, {
      size: bytes.length,
      open: () => Readable.toWeb(Readable.from([bytes])) as ReadableStream<Uint8Array>,
    });
    const path = join(work, NAME);
    expect(await downloadToFile(real, NAME, path, { retry: RETRY })).toBe(MIB);
    expect((await readFile(path)).equals(bytes)).toBe(true);
    await rm(path);
    await real.close();
  });
});
