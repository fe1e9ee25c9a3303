// The SMB provider's upload progress (bytes smbclient has read of the local file), on a slow link to a real smbd.
import { readdirSync, readFileSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSource, guardStall } from '../../agent/offsite/transfer';
import { SmbProvider } from '../../agent/providers/smb';
import { type SmbdService, smbclientChildren, smbOptionsFor, startSmbd } from '../services/smbd';
import { randomFile } from './random-file';

const MIB = 1024 * 1024;
/** The slow link: smbclient may read the local file no faster than this. */
const BYTES_PER_SECOND = 8 * MIB;
/**
 * At 8 MiB/s the upload takes at least 4 s, however fast the machine is: sixteen of the provider's 250 ms
 * polls. On a loaded machine smbclient may read a burst before the throttle first sees it (it is then
 * stopped until the time catches up), and half the time is still left for the reports. The size itself
 * is not the point; the time the upload lasts is.
 */
const SIZE = 32 * MIB;
const name = 'gem-backup-2026-05-06-070809.tar.gz';
let smbd: SmbdService;
let dir: string;
/** The local file both tests upload (each to its own folder; neither changes it). */
let file: Awaited<ReturnType<typeof randomFile>>;
beforeAll(async () => {
  smbd = await startSmbd();
  dir = await mkdtemp(join(tmpdir(), 'gem-smb-progress-'));
  file = await randomFile(dir, 'upload', SIZE);
});
afterAll(async () => {
  await smbd?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function provider(folder: string): SmbProvider {
  return new SmbProvider(smbOptionsFor(smbd, `/${folder}/`));
}

/** The /proc fdinfo path of `pid`'s descriptor open on `file`, if it has one. */
function fdinfoOf(pid: number, file: string): string | undefined {
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`) === file) return `/proc/${pid}/fdinfo/${fd}`;
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    // gone meanwhile
  }
  return undefined;
}

/**
 * A slow link without a traffic shaper: every 5 ms, smbclient is stopped (SIGSTOP) while it has read more
 * of `local` than BYTES_PER_SECOND allows since it opened it, and let go on (SIGCONT) otherwise.
 */
function throttle(local: string, bytesPerSecond = BYTES_PER_SECOND): { stop(): void } {
  const file = realpathSync(local);
  let pid: number | undefined;
  let fdinfo: string | undefined;
  let opened = 0;
  let stopped = false;
  const go = () => {
    if (pid !== undefined && stopped) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // already gone
      }
    }
    stopped = false;
  };
  const timer = setInterval(() => {
    pid ??= smbclientChildren(smbd)[0];
    if (pid === undefined) return;
    if (fdinfo === undefined) {
      fdinfo = fdinfoOf(pid, file);
      opened = Date.now();
      if (fdinfo === undefined) return;
    }
    let pos: number;
    try {
      pos = Number(/^pos:\s+(\d+)/m.exec(readFileSync(fdinfo, 'utf8'))?.[1]);
    } catch {
      // the put closed the file: smbclient goes on at full speed (allinfo, rename)
      go();
      clearInterval(timer);
      return;
    }
    const allowed = ((Date.now() - opened) / 1000) * bytesPerSecond;
    if (pos > allowed && !stopped) {
      process.kill(pid, 'SIGSTOP');
      stopped = true;
    } else if (pos <= allowed) {
      go();
    }
  }, 5);
  return {
    stop() {
      clearInterval(timer);
      go();
    },
  };
}

/** Bytes on the share under the put's temp name or the final name, whichever is larger. */
function bytesOnShare(folder: string): number {
  let most = 0;
  try {
    for (const entry of readdirSync(join(smbd.root, folder))) {
      most = Math.max(most, statSync(join(smbd.root, folder, entry)).size);
    }
  } catch {
    // no folder yet
  }
  return most;
}

describe('smb provider, upload progress', () => {
  it('reports the bytes smbclient read while it uploads, and the whole size only once the share holds it', async () => {
    const reports: { bytes: number; onShare: number }[] = [];
    const slow = throttle(file.path);
    try {
      const stored = await provider('slow').put(name, fileSource(file.path, SIZE, file.sha256), {
        onProgress: (bytes) => reports.push({ bytes, onShare: bytesOnShare('slow') }),
      });
      expect(stored).toMatchObject({ name, size: SIZE, sha256: file.sha256 });
    } finally {
      slow.stop();
    }
    for (let index = 1; index < reports.length; index++) {
      expect(reports[index]!.bytes).toBeGreaterThanOrEqual(reports[index - 1]!.bytes);
    }
    // Rising during the upload: several reports between nothing and everything.
    const during = new Set(reports.filter((r) => r.bytes > 0 && r.bytes < SIZE).map((r) => r.bytes));
    expect(during.size).toBeGreaterThanOrEqual(3);
    // The whole size is reported only once the share holds every byte (hashing the file says nothing of that).
    const whole = reports.filter((r) => r.bytes >= SIZE);
    expect(whole.length).toBeGreaterThan(0);
    for (const report of whole) expect(report).toEqual({ bytes: SIZE, onShare: SIZE });
    expect((await readFile(join(smbd.root, 'slow', name))).equals(file.bytes)).toBe(true);
  });

  it('a slow upload that lasts longer than the stall guard is not taken for a server that stopped answering', async () => {
    // 8 MiB/s: the upload takes at least 4 s.
    const slow = throttle(file.path, 8 * MIB);
    try {
      // Far longer than the provider's 250 ms poll of smbclient's reads (a loaded machine may starve
      // the event loop, or start smbclient slowly, for a while), yet shorter than the ≥ 4 s upload: the
      // old progress (hashing only, done in well under a second) went quiet for the rest and was taken
      // for a stall.
      const stored = await guardStall(
        (signal, onProgress) =>
          provider('guarded').put(name, fileSource(file.path, SIZE, file.sha256), { signal, onProgress }),
        { stallTimeoutMs: 3000 },
      );
      expect(stored).toMatchObject({ name, size: SIZE, sha256: file.sha256 });
    } finally {
      slow.stop();
    }
    expect((await readFile(join(smbd.root, 'guarded', name))).equals(file.bytes)).toBe(true);
  });
});
