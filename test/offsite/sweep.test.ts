// Temp leftovers of failed uploads are swept at every destination and by sync / auto-upload; foreign files always stay.
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { createLogger } from '../../agent/log';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { uploadTempTag } from '../../agent/offsite/transfer';
import { LocalFolderProvider } from '../../agent/providers/local';
import { type S3Options, S3Provider } from '../../agent/providers/s3';
import { SftpProvider } from '../../agent/providers/sftp';
import { SmbProvider } from '../../agent/providers/smb';
import { runProcess } from '../../agent/system/spawn';
import { isStorageError } from '../../shared/storage/index';
import { startTestAgent, type TestAgent } from '../services/agent';
import { type MotoService, startMoto } from '../services/moto';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { type SmbdService, smbOptionsFor, startSmbd } from '../services/smbd';
import { type SshdService, startSshd, unixIds } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, FAST, filenameOf, runJob, startOffsiteAgent } from './helpers';

const BACKUP = 'gem-backup-2026-01-02-030405.tar.gz';
/** Another controller's backup, uploaded into the same folder. */
const OTHER_BACKUP = 'gem-backup-2026-01-03-030405.tar.gz';
/** Temp names exactly as a failed put() leaves them. */
const OLD_TEMP = `.tmp-${BACKUP}.0a1b2c3d`;
const FRESH_TEMP = `.tmp-${BACKUP}.ffee0011`;
/** The `tempTag` of a fresh temp file a sweep given it removes at any age, and one it does not. */
const TAG = 'a1b2c3d4';
const TAGGED_TEMP = `.tmp-${BACKUP}.${TAG}0badf00d`;
const OTHER_TAGGED_TEMP = `.tmp-${BACKUP}.99887766deadbeef`;
/** Not ours, however much some of them look like it. */
const FOREIGN = ['.tmp-gem-backup-notes.txt', '.tmp-other', 'notes.txt'];
const HOUR_AGO = new Date(Date.now() - 3600_000);
const TEN_MINUTES = 10 * 60_000;
const MIB = 1024 * 1024;
const abc = { size: 3, open: () => new Blob(['abc']).stream() };

let pg: TestPostgres;
let sshd: SshdService;
let smbd: SmbdService;
let s3: S3Service;
let moto: MotoService;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, sshd, smbd, s3, moto } = await startAll({
    pg: startPostgres,
    sshd: startSshd,
    smbd: startSmbd,
    s3: startS3,
    moto: startMoto,
  }));
  t = await startOffsiteAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop(), smbd?.stop(), s3?.stop(), moto?.stop()]);
});

/** Plants an old and a fresh temp file of ours and the foreign files in `dir` (which the server's user owns). */
async function plant(dir: string): Promise<void> {
  for (const name of [OLD_TEMP, FRESH_TEMP, ...FOREIGN]) {
    await writeFile(join(dir, name), 'partial upload', { mode: 0o666 });
  }
  await utimes(join(dir, OLD_TEMP), HOUR_AGO, HOUR_AGO);
}

/** A folder in the SFTP user's home, owned by that user (as if the agent had made it). */
async function sshdFolder(name: string): Promise<string> {
  const dir = join(sshd.root, name);
  await mkdir(dir, { recursive: true });
  const { uid, gid } = await unixIds(sshd.passwordUser.username);
  await chown(dir, uid, gid);
  return dir;
}

const sorted = async (dir: string) => (await readdir(dir)).sort();

/**
 * With a `tempTag`, a sweep given an age also removes the fresh temp files that carry the tag (an upload
 * of the sweeper's own that failed), never a fresh one without it (another controller's, maybe in flight).
 */
async function expectTaggedSwept(provider: SftpProvider | SmbProvider, dir: string): Promise<void> {
  for (const name of [TAGGED_TEMP, OTHER_TAGGED_TEMP, FRESH_TEMP]) {
    await writeFile(join(dir, name), 'partial upload', { mode: 0o666 });
  }
  expect(await provider.sweepTemp({ olderThanMs: TEN_MINUTES, tempTag: TAG })).toEqual({
    removed: [TAGGED_TEMP],
  });
  expect((await provider.sweepTemp()).removed.sort()).toEqual([OTHER_TAGGED_TEMP, FRESH_TEMP].sort());
}

describe('sweepTemp at each destination', () => {
  it('sftp: removes only our temp files, the old ones first when given an age', async () => {
    const provider = new SftpProvider({
      host: sshd.host,
      port: sshd.port,
      username: sshd.passwordUser.username,
      password: sshd.passwordUser.password,
      remotePath: 'sweep',
    });
    expect(await provider.sweepTemp()).toEqual({ removed: [] }); // no folder yet
    await provider.put(BACKUP, abc);
    await plant(join(sshd.root, 'sweep'));
    expect(await provider.sweepTemp({ olderThanMs: TEN_MINUTES })).toEqual({ removed: [OLD_TEMP] });
    expect(await provider.sweepTemp()).toEqual({ removed: [FRESH_TEMP] });
    expect(await sorted(join(sshd.root, 'sweep'))).toEqual([...FOREIGN, BACKUP].sort());
    await expectTaggedSwept(provider, join(sshd.root, 'sweep'));
    await provider.close();
  });

  it('smb: removes only our temp files, the old ones first when given an age', async () => {
    const provider = new SmbProvider({
      host: smbd.host,
      port: smbd.port,
      share: smbd.share,
      username: smbd.username,
      password: smbd.password,
      remotePath: '/sweep/',
    });
    expect(await provider.sweepTemp()).toEqual({ removed: [] }); // no folder yet
    await provider.put(BACKUP, abc);
    await plant(join(smbd.root, 'sweep'));
    expect(await provider.sweepTemp({ olderThanMs: TEN_MINUTES })).toEqual({ removed: [OLD_TEMP] });
    expect(await provider.sweepTemp()).toEqual({ removed: [FRESH_TEMP] });
    expect(await sorted(join(smbd.root, 'sweep'))).toEqual([...FOREIGN, BACKUP].sort());
    await expectTaggedSwept(provider, join(smbd.root, 'sweep'));
  });

  it('local folder: removes only our temp files', async () => {
    const dir = join(t.dataDir, 'sweep-local');
    const provider = new LocalFolderProvider(dir);
    await provider.put(BACKUP, abc);
    await plant(dir);
    expect(await provider.sweepTemp({ olderThanMs: TEN_MINUTES })).toEqual({ removed: [OLD_TEMP] });
    expect(await provider.sweepTemp()).toEqual({ removed: [FRESH_TEMP] });
    expect(await sorted(dir)).toEqual([...FOREIGN, BACKUP].sort());
  });

  const s3Options = (endpoint: string, bucket: string): S3Options => ({
    endpoint,
    region: 'us-east-1',
    bucket,
    prefix: 'gem/',
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    forcePathStyle: true,
    partSize: 5 * MIB,
  });
  const client = (endpoint: string) =>
    new S3Client({
      endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    });
  /** An incomplete multipart upload: created, one part sent, never completed nor aborted. */
  const incompleteUpload = async (s3client: S3Client, bucket: string, key: string) => {
    const { UploadId } = await s3client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }));
    await s3client.send(
      new UploadPartCommand({
        Bucket: bucket,
        Key: key,
        UploadId,
        PartNumber: 1,
        Body: new Uint8Array(5 * MIB).fill(1),
      }),
    );
  };

  it('s3 (moto): aborts only the incomplete uploads of backups under the prefix', async () => {
    const raw = client(moto.endpoint);
    try {
      await raw.send(new CreateBucketCommand({ Bucket: 'sweep' }));
      for (const key of [`gem/${BACKUP}`, 'gem/other.bin', `elsewhere/${BACKUP}`, `gem/sub/${BACKUP}`]) {
        await incompleteUpload(raw, 'sweep', key);
      }
      await raw.send(new PutObjectCommand({ Bucket: 'sweep', Key: 'gem/notes.txt', Body: 'foreign' }));
      const provider = new S3Provider(s3Options(moto.endpoint, 'sweep'));
      await provider.put(BACKUP, abc);
      // (moto reports a fixed 2010 `Initiated` for every upload, so the age filter is not checked here.)
      expect(await provider.sweepTemp()).toEqual({ removed: [BACKUP] });
      const left = await raw.send(new ListMultipartUploadsCommand({ Bucket: 'sweep' }));
      expect((left.Uploads ?? []).map((u) => u.Key).sort()).toEqual(
        [`elsewhere/${BACKUP}`, 'gem/other.bin', `gem/sub/${BACKUP}`].sort(),
      );
      expect((await provider.list()).map((o) => o.name)).toEqual([BACKUP]);
      await raw.send(new HeadObjectCommand({ Bucket: 'sweep', Key: 'gem/notes.txt' })); // still there

      // A multipart put that fails (wrong sha256) leaves no incomplete upload behind.
      const size = 12 * MIB;
      const bad = { size, sha256: '0'.repeat(64), open: () => new Blob([new Uint8Array(size)]).stream() };
      expect(await provider.put(BACKUP, bad).catch((e) => isStorageError(e, 'integrity'))).toBe(true);
      const after = await raw.send(new ListMultipartUploadsCommand({ Bucket: 'sweep', Prefix: 'gem/' }));
      expect((after.Uploads ?? []).map((u) => u.Key).sort()).toEqual(['gem/other.bin', `gem/sub/${BACKUP}`]);
      await provider.close();
    } finally {
      raw.destroy();
    }
  });

  it('s3 (s3rver): a server without ListMultipartUploads is reported as skipped, not as a failure', async () => {
    const raw = client(s3.endpoint);
    try {
      await incompleteUpload(raw, s3.bucket, `gem/${BACKUP}`);
      const provider = new S3Provider(s3Options(s3.endpoint, s3.bucket));
      const result = await provider.sweepTemp();
      expect(result.removed).toEqual([]);
      expect(result.skipped).toMatch(/does not implement/);
      await provider.close();
    } finally {
      raw.destroy();
    }
  });
});

describe('sync and auto-upload sweep the destination first', () => {
  const sftp = (remotePath: string, autoUpload: boolean) => ({
    enabled: true,
    host: sshd.host,
    port: sshd.port,
    username: sshd.passwordUser.username,
    remotePath,
    auth: { password: sshd.passwordUser.password },
    autoUpload,
  });

  it("Sync Now removes every temp leftover of ours, and only old ones of others: another controller's upload in flight finishes", async () => {
    const dir = await sshdFolder('synced');
    // An old leftover, a fresh one without this installation's tag, and a fresh one with it (an upload of
    // its own that failed: Sync Now knows none of its uploads is in flight).
    await plant(dir);
    const ownFresh = `.tmp-${BACKUP}.${uploadTempTag(t.agent.keyring.installationId)}0badf00d`;
    await writeFile(join(dir, ownFresh), 'partial upload', { mode: 0o666 });
    // Another controller backing up into the same folder, its upload in flight: its source holds back
    // everything after the first KiB until the sync is done.
    const other = new SftpProvider({
      host: sshd.host,
      port: sshd.port,
      username: sshd.passwordUser.username,
      password: sshd.passwordUser.password,
      remotePath: 'synced',
    });
    const otherTag = uploadTempTag(randomUUID());
    const body = randomBytes(256 * 1024);
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let pulls = 0;
    const source = {
      size: body.length,
      open: () =>
        new ReadableStream<Uint8Array>({
          async pull(controller) {
            if (pulls++ === 0) return controller.enqueue(body.subarray(0, 1024));
            await held;
            controller.enqueue(body.subarray(1024));
            controller.close();
          },
        }),
    };
    const putting = other.put(OTHER_BACKUP, source, { tempTag: otherTag });
    putting.catch(() => {}); // awaited below
    try {
      await expect
        .poll(async () =>
          (await readdir(dir)).filter((n) => n.startsWith(`.tmp-${OTHER_BACKUP}.${otherTag}`)),
        )
        .toHaveLength(1);
      const name = filenameOf(await backupNow(t));
      await t.agent.settings.update({ offsite: { sftp: sftp('synced', false) } });
      const job = await runJob(t, 'POST', '/offsite/sftp/sync');
      expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
      expect(job.result).toMatchObject({ uploaded: [name], sweptTemp: 2 });
      release();
      expect((await putting).size).toBe(body.length);
      expect(await sorted(dir)).toEqual([...FOREIGN, FRESH_TEMP, name, OTHER_BACKUP].sort());
    } finally {
      release();
      await other.close();
    }
  });

  it('auto-upload removes only leftovers older than 10 minutes, then uploads', async () => {
    const dir = await sshdFolder('auto-sweep');
    await plant(dir);
    await t.agent.settings.update({ offsite: { sftp: sftp('auto-sweep', true) } });
    const notices: unknown[] = [];
    const off = t.agent.jobs.subscribeAll((event) => {
      if (event.type === 'notice' && event.name === 'offsite-upload') notices.push(event.data);
    });
    try {
      const name = filenameOf(await backupNow(t));
      expect(notices).toEqual([{ sftp: expect.objectContaining({ ok: true, sweptTemp: 1 }) }]);
      expect(await sorted(dir)).toEqual([...FOREIGN, FRESH_TEMP, name].sort());
    } finally {
      off();
      await t.agent.settings.update({ offsite: { sftp: sftp('auto-sweep', false) } });
    }
  });
});

describe('a temp leftover the server still holds open when a sync starts', () => {
  it('Sync Now sweeps it again once its transfers went through (SMB refuses to delete an open file)', async () => {
    // The agent's warning that the sweep at its start failed: then the session holding the file dies,
    // as the session of an attempt given up on a frozen server does once the server answers again.
    let holder: ReturnType<typeof spawn> | undefined;
    let sweepFailed = 0;
    const held = await startTestAgent(pg, {
      modules: [offsiteModule],
      log: createLogger({
        level: 'warn',
        write: (line) => {
          if (!line.includes('"removing temp leftovers of failed uploads failed"')) return;
          sweepFailed++;
          holder?.kill('SIGKILL');
        },
      }),
    });
    offsiteServiceFor(held.agent, FAST);
    // An upload of this installation's own that failed, the session of its given-up attempt still alive.
    const leftover = `.tmp-${BACKUP}.${uploadTempTag(held.agent.keyring.installationId)}0a1b2c3d`;
    const dir = join(smbd.root, 'held');
    const work = await mkdtemp(join(tmpdir(), 'gem-smb-holder-'));
    const fifo = join(work, 'holder.fifo');
    try {
      // A live smbclient session writing the leftover from a pipe that is never closed: the file stays open.
      await mkdir(dir, { recursive: true, mode: 0o777 });
      await chmod(dir, 0o777); // the share's user writes in it
      expect((await runProcess('mkfifo', [fifo])).code).toBe(0);
      const auth = join(work, 'holder.auth');
      await writeFile(auth, `username = ${smbd.username}\npassword = ${smbd.password}\n`, { mode: 0o600 });
      holder = spawn(
        'smbclient',
        [
          '-m',
          'SMB3',
          '-A',
          auth,
          '-p',
          String(smbd.port),
          `//${smbd.host}/${smbd.share}`,
          '-c',
          `put ${fifo} held/${leftover}`,
        ],
        { stdio: 'ignore' },
      );
      const exited = new Promise((resolve) => holder!.once('exit', resolve));
      const writer = createWriteStream(fifo);
      writer.on('error', () => {});
      writer.write(Buffer.alloc(MIB));
      await expect.poll(() => existsSync(join(dir, leftover)), { timeout: 10_000 }).toBe(true);

      const name = filenameOf(await backupNow(held));
      await held.agent.settings.update({
        offsite: {
          smb: { enabled: true, ...smbOptionsFor(smbd, '/held/'), autoUpload: false },
        },
      });
      const job = await runJob(held, 'POST', '/offsite/smb/sync');
      await exited;
      writer.destroy();
      expect(sweepFailed).toBe(1);
      expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
      expect(job.result).toMatchObject({ uploaded: [name], sweptTemp: 1 });
      expect(await sorted(dir)).toEqual([name]);
    } finally {
      holder?.kill('SIGKILL');
      await held.close();
      await rm(dir, { recursive: true, force: true });
      await rm(work, { recursive: true, force: true });
    }
  });
});
