// "Test my key file" on a controller with no local backup (rebuilt after a disaster): the newest copy
// on the offsite destinations is tried instead, by its header alone, on a real SFTP server and S3.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chown, copyFile, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { buildKeysExport, createKeyringFile } from '../../agent/keys/keyring';
import { HEADERS_READ_PER_DESTINATION } from '../../agent/verification/key-check';
import { tryParseHeader } from '../../shared/envelope';
import { sftpSection } from '../health/helpers';
import { backupNow, call, filenameOf, s3Section, startOffsiteAgent } from '../offsite/helpers';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let sshd: SshdService;
let s3: S3Service;
let t: TestAgent;
let sshdStopped = false;
let keysFile: string;
let older: string;
let newest: string;

const sftp = () => ({ ...sftpSection(sshd), autoUpload: true });
const s3At = (enabled: boolean) => s3Section(s3, { enabled, autoUpload: true });

beforeAll(async () => {
  ({ pg, sshd, s3 } = await startAll({ pg: startPostgres, sshd: startSshd, s3: startS3 }));
  t = await startOffsiteAgent(pg);
  // Both destinations receive every backup (the real auto-upload), then S3 is turned off until its test.
  await t.agent.settings.update({
    autoBackup: { maxBackups: 10 },
    offsite: { sftp: sftp(), s3: s3At(true) },
  });
  older = filenameOf(await backupNow(t));
  newest = filenameOf(await backupNow(t));
  expect(newest > older).toBe(true);
  await t.agent.settings.update({ offsite: { sftp: sftp(), s3: s3At(false) } });
  const exported = await t.request('/api/v1/keys/export');
  expect(exported.status).toBe(200);
  keysFile = await exported.text();
  // The box rebuilt: no local backup, only the copies offsite.
  for (const name of [older, newest]) await t.agent.catalog.delete(name);
  expect(await t.agent.catalog.list()).toEqual([]);
}, 120_000);

afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshdStopped ? undefined : sshd?.stop(), s3?.stop()]);
});

/** `name`'s date moved by `seconds`: another backup name, newer (or older) than it. */
function nameAfter(name: string, seconds: number): string {
  const [, y, mo, d, h, mi, se] = /^gem-backup-(\d{4})-(\d{2})-(\d{2})-(\d{2})(\d{2})(\d{2})/.exec(name)!;
  const date = new Date(
    Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(se) + seconds),
  );
  return backupNameFor(date);
}

/** A folder under the SFTP user's home holding copies of `files` (paths) under `names`, owned as its uploads are. */
async function sftpFolder(folder: string, files: [path: string, name: string][]): Promise<string> {
  const dir = join(sshd.root, folder);
  const { uid, gid } = await stat(join(sshd.root, 'gem-backups'));
  await mkdir(dir, { recursive: true });
  await chown(dir, uid, gid);
  for (const [path, name] of files) {
    await copyFile(path, join(dir, name));
    await chown(join(dir, name), uid, gid);
  }
  return dir;
}

/**
 * Waits until a backup made now is named after `name`: names go by the second, and the rebuilt box's
 * own backup must be the newer one (on a fast machine it could fall in the same second).
 */
async function untilNamedAfter(name: string): Promise<void> {
  while (backupNameFor(new Date()) <= name) await sleep(50);
}

/** `text` as a regular expression matching it literally. */
const literally = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Bytes this process has read through read-like system calls, sockets included (`rchar` of /proc/self/io). */
function bytesReadByThisProcess(): number {
  return Number(/^rchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'))?.[1]);
}

describe('the key check with no local backup', () => {
  it('opens the newest copy on the SFTP server with the right keys file, naming it and the destination', async () => {
    const res = await call(t, 'POST', '/keys/check', JSON.parse(keysFile));
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({
      ok: true,
      canOpen: true,
      backup: newest,
      destination: 'sftp',
      sameInstallation: true,
    });
    expect(res.body.reason).toBe(
      `There is no local backup: these keys open the header of ${newest} on the SFTP server; only its header was checked (its chunks are checked when it is restored)`,
    );
    // Nothing was downloaded into the local backups.
    expect(await t.agent.catalog.list()).toEqual([]);
  });

  it("on a rebuilt controller that already made a backup of its own, tries the old installation's copies offsite", async () => {
    // A new installation on the same SFTP folder: its newest backup here is its own, which the old keys cannot open.
    const rebuilt = await startOffsiteAgent(pg);
    try {
      await rebuilt.agent.settings.update({
        autoBackup: { maxBackups: 10 },
        offsite: { sftp: sftpSection(sshd) },
      });
      await untilNamedAfter(newest);
      const own = filenameOf(await backupNow(rebuilt));
      expect(own > newest).toBe(true);
      const res = await call(rebuilt, 'POST', '/keys/check', JSON.parse(keysFile));
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect(res.body).toMatchObject({
        canOpen: true,
        backup: newest,
        destination: 'sftp',
        sameInstallation: false,
      });
      // There is a backup here, the new installation's own: not said to be none.
      expect(res.body.reason).toMatch(
        new RegExp(
          `^There is no local backup of its installation: these keys open the header of ${newest.replace(/\./g, '\\.')} on the SFTP server`,
        ),
      );
    } finally {
      await rebuilt.close();
    }
  });

  it("on a rebuilt controller whose own copy is the newest in the folder, opens the old installation's newest copy behind it", async () => {
    // The folder of the old installation A (two copies) that the rebuilt box B auto-uploads to: B's own copy is the newest there.
    const gemBackups = join(sshd.root, 'gem-backups');
    const folder = await sftpFolder('rebuilt', [
      [join(gemBackups, older), older],
      [join(gemBackups, newest), newest],
    ]);
    const rebuilt = await startOffsiteAgent(pg);
    try {
      await rebuilt.agent.settings.update({
        autoBackup: { maxBackups: 10 },
        offsite: { sftp: { ...sftpSection(sshd, 'rebuilt'), autoUpload: true } },
      });
      await untilNamedAfter(newest);
      const own = filenameOf(await backupNow(rebuilt));
      expect(own > newest).toBe(true);
      expect((await stat(join(folder, own))).isFile()).toBe(true);
      const expected = (noneHere: string) =>
        `There is no local backup${noneHere}: these keys open the header of ${newest} on the SFTP server; only its header was checked (its chunks are checked when it is restored)`;
      // B's own backup here and on top of the folder: A's keys are tried on A's newest copy, and open it.
      const res = await call(rebuilt, 'POST', '/keys/check', JSON.parse(keysFile));
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect(res.body).toMatchObject({
        ok: true,
        canOpen: true,
        backup: newest,
        destination: 'sftp',
        sameInstallation: false,
      });
      expect(res.body.reason).toBe(expected(' of its installation'));

      // No local backup at all (it was deleted): the same copy.
      await rebuilt.agent.catalog.delete(own);
      const bare = await call(rebuilt, 'POST', '/keys/check', JSON.parse(keysFile));
      expect(bare.body).toMatchObject({ canOpen: true, backup: newest, destination: 'sftp' });
      expect(bare.body.reason).toBe(expected(''));

      // A copy on top that is not a backup at all is skipped, with a note.
      const junk = nameAfter(own, 1);
      await writeFile(join(folder, junk), randomBytes(4096));
      await chown(join(folder, junk), (await stat(folder)).uid, (await stat(folder)).gid);
      const skipped = await call(rebuilt, 'POST', '/keys/check', JSON.parse(keysFile));
      expect(skipped.body).toMatchObject({ canOpen: true, backup: newest, destination: 'sftp' });
      expect(skipped.body.reason).toBe(
        `${expected('')}. ${junk} on the SFTP server was skipped: it does not start with the GEM backup signature.`,
      );

      // A third installation's keys: no copy of it anywhere, so the newest readable copy answers, saying how many were looked at.
      const other = await buildKeysExport(createKeyringFile(), undefined);
      const otherId = (JSON.parse(other) as { installationId: string }).installationId;
      const no = await call(rebuilt, 'POST', '/keys/check', { file: other });
      expect(no.body).toMatchObject({ canOpen: false, backup: own, destination: 'sftp', error: 'no_key' });
      expect(no.body.reason).toMatch(
        new RegExp(
          `^These keys cannot open ${literally(own)} on the SFTP server: it was made with key \\S+, which the file does not hold \\(the keys file is from installation ${otherId.slice(0, 8)}…, the backup from another installation; no copy of installation ${otherId.slice(0, 8)}… was found among the 4 copies on the SFTP server\\)\\. ${literally(junk)} on the SFTP server was skipped: `,
        ),
      );

      // A folder with more of B's copies on top than are looked at: the bound is said, and A's copy is not reached.
      const crowded = Array.from({ length: HEADERS_READ_PER_DESTINATION + 1 }, (_, i) =>
        nameAfter(own, 10 + i),
      );
      await sftpFolder('crowded', [
        [join(gemBackups, newest), newest],
        ...crowded.map((name): [string, string] => [join(folder, own), name]),
      ]);
      await rebuilt.agent.settings.update({ offsite: { sftp: sftpSection(sshd, 'crowded') } });
      const bounded = await call(rebuilt, 'POST', '/keys/check', JSON.parse(keysFile));
      expect(bounded.body).toMatchObject({ canOpen: false, backup: crowded.at(-1), destination: 'sftp' });
      expect(bounded.body.reason).toContain(
        `the backup from another installation; no copy of installation ${t.agent.keyring.installationId.slice(0, 8)}… was found among the newest ${HEADERS_READ_PER_DESTINATION} of the ${crowded.length + 1} copies on the SFTP server, at most ${HEADERS_READ_PER_DESTINATION} are looked at)`,
      );
    } finally {
      await rebuilt.close();
    }
  }, 120_000);

  it('with no offsite destination set up, or one that holds nothing, says what to do', async () => {
    const fresh = await startOffsiteAgent(pg);
    try {
      const none = await call(fresh, 'POST', '/keys/check', JSON.parse(keysFile));
      expect(none.status, JSON.stringify(none.body)).toBe(200);
      expect(none.body).toMatchObject({ ok: true, canOpen: false, backup: null });
      expect(none.body.reason).toBe(
        'There is no backup here to try the keys on, and no offsite destination is set up: set up the destination that holds your copies (page: Offsite), then check again',
      );
      await fresh.agent.settings.update({ offsite: { sftp: sftpSection(sshd, 'nothing-here') } });
      const empty = await call(fresh, 'POST', '/keys/check', JSON.parse(keysFile));
      expect(empty.body).toMatchObject({ ok: true, canOpen: false, backup: null });
      expect(empty.body.reason).toBe(
        'There is no backup here to try the keys on, and the SFTP server holds no backup: check that it is the one that holds your copies (page: Offsite), then check again',
      );
    } finally {
      await fresh.close();
    }
  }, 60_000);

  it('says no, with the reason, for another installation’s keys file', async () => {
    const other = await buildKeysExport(createKeyringFile(), undefined);
    const res = await call(t, 'POST', '/keys/check', { file: other });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({
      canOpen: false,
      backup: newest,
      destination: 'sftp',
      sameInstallation: false,
      error: 'no_key',
    });
    expect(res.body.reason).toMatch(
      new RegExp(
        `^These keys cannot open ${newest.replace(/\./g, '\\.')} on the SFTP server: it was made with key `,
      ),
    );
    expect(res.body.reason).toContain(t.agent.keyring.activeKey.id);
    expect(res.body.reason).toContain('the backup from another installation');
  });

  it('reads only the header: a copy whose every byte after the header is garbage, followed by 16 GiB, still opens at once', async () => {
    const path = join(sshd.root, 'gem-backups', newest);
    const bytes = await readFile(path);
    const parsed = tryParseHeader(bytes);
    expect(parsed).not.toBeNull();
    const headerLength = parsed!.length;
    expect(bytes.length).toBeGreaterThan(headerLength);
    // Every chunk after the header overwritten, and the file made 16 GiB long (a hole reads as zeros):
    // a check that read any chunk fails, and one that downloaded the copy would take minutes.
    const handle = await open(path, 'r+');
    try {
      await handle.write(
        randomBytes(bytes.length - headerLength),
        0,
        bytes.length - headerLength,
        headerLength,
      );
      await handle.truncate(16 * 1024 ** 3);
    } finally {
      await handle.close();
    }
    expect((await stat(path)).size).toBe(16 * 1024 ** 3);
    // The agent runs in this process (its own, in vitest's forks pool): what it read from the SFTP
    // connection is in this process's read count.
    const readBefore = bytesReadByThisProcess();
    const res = await call(t, 'POST', '/keys/check', JSON.parse(keysFile));
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ canOpen: true, backup: newest, destination: 'sftp' });
    expect(bytesReadByThisProcess() - readBefore).toBeLessThan(64 * 1024 ** 2);
    expect(await t.agent.catalog.list()).toEqual([]);
  }, 60_000);

  it('says the SFTP server could not be reached when it is stopped (no 500), and keeps the "no backup" answer', async () => {
    await sshd.stop();
    sshdStopped = true;
    const res = await call(t, 'POST', '/keys/check', JSON.parse(keysFile));
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ ok: true, canOpen: false, backup: null });
    expect(res.body.destination).toBeUndefined();
    expect(res.body.reason).toMatch(
      /^There is no backup here to try the keys on\. The SFTP server could not be reached: Cannot reach 127\.0\.0\.1 on port \d+: .*\.$/,
    );
  }, 60_000);

  it('tries the next destination when one cannot be reached: the copy on S3, saying the SFTP server was not reached', async () => {
    await t.agent.settings.update({ offsite: { sftp: sftp(), s3: s3At(true) } });
    const res = await call(t, 'POST', '/keys/check', JSON.parse(keysFile));
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ canOpen: true, backup: newest, destination: 's3' });
    expect(res.body.reason).toMatch(
      new RegExp(
        `^There is no local backup: these keys open the header of ${newest.replace(/\./g, '\\.')} on the S3 storage; only its header was checked \\(its chunks are checked when it is restored\\)\\. The SFTP server could not be reached: Cannot reach 127\\.0\\.0\\.1 on port \\d+`,
      ),
    );
  }, 60_000);
});
