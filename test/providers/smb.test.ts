// The SMB provider against a real Samba smbd started for this file.
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probeName } from '../../agent/offsite/connection';
import { type SmbOptions, SmbProvider } from '../../agent/providers/smb';
import { runStorageProviderSuite } from '../../shared/storage/conformance';
import { isStorageError, type StorageErrorCode } from '../../shared/storage/index';
import { freePort } from '../services/ports';
import { type SmbdService, smbOptionsFor, startSmbd } from '../services/smbd';
import { expectProbeLeftoversSwept } from './probe-sweep';

let smbd: SmbdService;
beforeAll(async () => {
  smbd = await startSmbd();
});
afterAll(async () => {
  await smbd?.stop();
});

function options(overrides: Partial<SmbOptions> = {}): SmbOptions {
  return { ...smbOptionsFor(smbd, '/gem/'), ...overrides };
}

async function failure(promise: Promise<unknown>): Promise<{ code: StorageErrorCode; permanent: boolean }> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  if (!isStorageError(error)) throw new Error(`expected a StorageError, got ${String(error)}`);
  return { code: error.code, permanent: error.permanent };
}

let folders = 0;
runStorageProviderSuite('smb (samba)', async () => {
  folders += 1;
  const top = `suite-${folders}`;
  return {
    provider: new SmbProvider(options({ remotePath: `/${top}/gem/` })),
    cleanup: () => rm(join(smbd.root, top), { recursive: true, force: true }),
    rawNames: () => readdir(join(smbd.root, top, 'gem')).catch(() => []),
  };
});

describe('smb provider', () => {
  const name = 'gem-backup-2026-07-08-091011.tar.gz';
  const source = { size: 3, open: () => new Blob(['abc']).stream() };

  it("sweeps Test Connection's leftover probe and its temp file as ours, by the same age rule", async () => {
    const remotePath = 'probe-sweep';
    const provider = new SmbProvider(options({ remotePath }));
    await provider.put(name, source);
    await expectProbeLeftoversSwept(provider, join(smbd.root, remotePath), name);
  });

  it('sweeps a leftover probe from a folder that holds no temp file', async () => {
    const remotePath = 'probe-only';
    const local = join(smbd.root, remotePath);
    const provider = new SmbProvider(options({ remotePath }));
    await provider.put(name, source);
    const probe = probeName();
    await writeFile(join(local, probe), 'probe');
    expect(await provider.sweepTemp()).toEqual({ removed: [probe] });
    expect(await readdir(local)).toEqual([name]);
  });

  it('creates a missing folder path inside the share, however deep', async () => {
    await new SmbProvider(options({ remotePath: '/x/y/z/' })).put(name, source);
    expect(await readdir(join(smbd.root, 'x', 'y', 'z'))).toEqual([name]);
  });

  it('lists, stats and deletes backups the server marks sparse or offline (as Windows deduplication and tiering do)', async () => {
    const local = join(smbd.root, 'marked');
    const provider = new SmbProvider(options({ remotePath: 'marked' }));
    await provider.put(name, source); // the folder, as the share's user makes it
    await rm(join(local, name));
    // Samba shows the DOS attributes its user.DOSATTRIB xattr holds (set here as Samba's hex form, with
    // the python3 Samba depends on): ARCHIVE plus SPARSE_FILE, OFFLINE or both; smbclient's ls prints
    // them as `As`, `Ao`, `Aso`.
    const marked = ['0x220', '0x1020', '0x1220'];
    const names = marked.map((_, i) => `gem-backup-2026-07-08-09101${i}.tar.gz`);
    for (const [i, attributes] of marked.entries()) {
      const file = join(local, names[i]!);
      await writeFile(file, 'abc');
      execFileSync('/usr/bin/python3', [
        '-c',
        'import os, sys; os.setxattr(sys.argv[1], "user.DOSATTRIB", sys.argv[2].encode() + b"\\0")',
        file,
        attributes,
      ]);
    }
    expect((await provider.list()).map((object) => object.name).sort()).toEqual(names);
    expect(await provider.stat(names[0]!)).toMatchObject({ name: names[0], size: 3 });
    await provider.delete(names[1]!);
    expect((await readdir(local)).sort()).toEqual([names[0], names[2]]);
  });

  it('says a backup folder that is a file is a file, not a missing folder or an empty one, and writes nothing', async () => {
    await mkdir(join(smbd.root, 'holder'), { recursive: true });
    await writeFile(join(smbd.root, 'holder', 'a-file'), 'not a folder');
    for (const remotePath of ['/holder/a-file/', '/holder/a-file/gem/']) {
      const provider = new SmbProvider(options({ remotePath }));
      for (const attempt of [() => provider.list(), () => provider.put(name, source)]) {
        const refused = await attempt().then(
          () => undefined,
          (caught: unknown) => caught,
        );
        if (!isStorageError(refused))
          throw new Error(`${remotePath}: expected a StorageError, got ${refused}`);
        expect(refused.code).toBe('io');
        expect(refused.permanent, refused.message).toBe(true);
        expect(refused.message).toBe(
          `/holder/a-file on //${smbd.host}/${smbd.share} is a file, not a folder: choose another folder, or move the file away`,
        );
      }
    }
    expect(await readdir(join(smbd.root, 'holder'))).toEqual(['a-file']);
    expect(await readFile(join(smbd.root, 'holder', 'a-file'), 'utf8')).toBe('not a folder');
  });

  it("reports a folder it may not create as 'permission_denied', leaving nothing", async () => {
    // Made by root, not the share's user: the share's user may not create the backup folder in it.
    await mkdir(join(smbd.root, 'root-only'));
    const provider = new SmbProvider(options({ remotePath: '/root-only/gem/' }));
    expect(await failure(provider.put(name, source))).toEqual({ code: 'permission_denied', permanent: true });
    expect(await readdir(join(smbd.root, 'root-only'))).toEqual([]);
  });

  it('signs in with a password that begins with blanks, which an auth file line would drop', async () => {
    const password = ` \t${smbd.password}`;
    await smbd.setPassword(password);
    try {
      const provider = new SmbProvider(options({ remotePath: 'blank-password', password }));
      await provider.put(name, source);
      expect((await provider.list()).map((object) => object.name)).toEqual([name]);
      expect(await new Response(await provider.get(name)).text()).toBe('abc');
    } finally {
      await smbd.setPassword(smbd.password);
    }
  });

  it("reports a wrong password as permanent 'auth_failed'", async () => {
    expect(await failure(new SmbProvider(options({ password: 'wrong' })).list())).toEqual({
      code: 'auth_failed',
      permanent: true,
    });
  });

  it("reports a share that does not exist as 'path_missing'", async () => {
    expect(await failure(new SmbProvider(options({ share: 'nosuchshare' })).put(name, source))).toEqual({
      code: 'path_missing',
      permanent: true,
    });
  });

  it("reports a closed port as retryable 'unreachable'", async () => {
    expect(await failure(new SmbProvider(options({ port: await freePort() })).list())).toEqual({
      code: 'unreachable',
      permanent: false,
    });
  });

  it("reports a missing smbclient as 'tool_missing' with the apt command", async () => {
    const path = process.env['PATH'];
    process.env['PATH'] = '/nonexistent';
    try {
      const error = await new SmbProvider(options()).list().catch((caught: unknown) => caught);
      expect(isStorageError(error, 'tool_missing')).toBe(true);
      expect((error as Error).message).toContain('apt-get install -y smbclient');
    } finally {
      process.env['PATH'] = path;
    }
  });
});
