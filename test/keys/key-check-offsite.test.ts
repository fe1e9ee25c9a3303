// "Test my key file" on a controller with no local backup (rebuilt after a disaster): the newest copy
// on the offsite destinations is tried instead, by its header alone, on a real SFTP server and S3.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildKeysExport, createKeyringFile } from '../../agent/keys/keyring';
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
      /^There is no backup to try the keys on yet here\. The SFTP server could not be reached: Cannot reach 127\.0\.0\.1 on port \d+: .*\.$/,
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
