// The SMB provider's get() streams smbclient's output (no local copy first), against a real smbd.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chown, copyFile, mkdir, mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SmbProvider } from '../../agent/providers/smb';
import { isStorageError } from '../../shared/storage/index';
import { type SmbdService, smbclientChildren, smbOptionsFor, startSmbd } from '../services/smbd';
import { randomFile } from './random-file';

const MIB = 1024 * 1024;
const SIZE = 64 * MIB;
const name = 'gem-backup-2026-05-06-070809.tar.gz';
let smbd: SmbdService;
let dir: string;
let sha256: string;
beforeAll(async () => {
  smbd = await startSmbd();
  dir = await mkdtemp(join(tmpdir(), 'gem-smb-get-'));
  const file = await randomFile(dir, 'big', SIZE);
  sha256 = file.sha256;
  const folder = join(smbd.root, 'big');
  await mkdir(folder);
  await copyFile(file.path, join(folder, name));
  const { uid, gid } = await stat(smbd.root);
  await chown(folder, uid, gid);
  await chown(join(folder, name), uid, gid);
});
afterAll(async () => {
  await smbd?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function provider(): SmbProvider {
  return new SmbProvider(smbOptionsFor(smbd, '/big/'));
}

/** The provider's spool folders (gem-smb-spool-*) in the temp dir. */
async function spoolFolders(): Promise<string[]> {
  return (await readdir(tmpdir())).filter((entry) => entry.startsWith('gem-smb-spool-'));
}

/** Bytes in the spool folders that are not in `before`. */
async function spooled(before: string[]): Promise<number> {
  let bytes = 0;
  for (const entry of await spoolFolders()) {
    if (before.includes(entry)) continue;
    for (const file of await readdir(join(tmpdir(), entry)).catch(() => [])) {
      bytes += (await stat(join(tmpdir(), entry, file)).catch(() => ({ size: 0 }))).size;
    }
  }
  return bytes;
}

async function until(condition: () => boolean, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!condition() && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 10));
  return condition();
}

describe('smb provider, get', () => {
  it('reading the first 64 KiB copies nothing locally, and cancelling ends smbclient', async () => {
    const before = await spoolFolders();
    const stream = await provider().get(name);
    // smbclient is still sending (held by the pipe), not done copying the whole file somewhere.
    const running = smbclientChildren(smbd);
    expect(running).toHaveLength(1);
    expect(await spooled(before)).toBe(0);
    const reader = stream.getReader();
    let read = 0;
    while (read < 64 * 1024) {
      const { done, value } = await reader.read();
      if (done) break;
      read += value.length;
    }
    expect(read).toBeGreaterThanOrEqual(64 * 1024);
    expect(read).toBeLessThan(SIZE);
    expect(await spooled(before)).toBe(0);
    await reader.cancel();
    expect(await until(() => !existsSync(`/proc/${running[0]}`))).toBe(true);
    expect(smbclientChildren(smbd)).toEqual([]);
  });

  it('a full get gives the file byte for byte', async () => {
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of (await provider().get(name)) as unknown as AsyncIterable<Uint8Array>) {
      hash.update(chunk);
      bytes += chunk.length;
    }
    expect(bytes).toBe(SIZE);
    expect(hash.digest('hex')).toBe(sha256);
    expect(await until(() => smbclientChildren(smbd).length === 0)).toBe(true);
  });

  it('a file cut short on the share during the get is refused, not passed on short', async () => {
    const stream = await provider().get(name);
    const reader = stream.getReader();
    await reader.read();
    // The share's copy is cut short while smbclient reads it.
    const copy = join(dir, 'restore');
    await copyFile(join(smbd.root, 'big', name), copy);
    await truncate(join(smbd.root, 'big', name), SIZE / 2);
    let failure: unknown;
    let read = 0;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        read += value.length;
      }
    } catch (error) {
      failure = error;
    } finally {
      await copyFile(copy, join(smbd.root, 'big', name));
    }
    // smbclient's own failure (a read past the end) or our byte count: either way an error, never an end.
    expect(isStorageError(failure)).toBe(true);
    expect(read).toBeLessThan(SIZE);
  });
});
