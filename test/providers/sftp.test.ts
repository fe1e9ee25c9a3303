// The SFTP provider against a real OpenSSH sshd started for this file.
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Client } from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withRetry } from '../../agent/providers/retry';
import { EARLY_FLUSH_BYTES, type SftpOptions, SftpProvider } from '../../agent/providers/sftp';
import { runStorageProviderSuite } from '../../shared/storage/conformance';
import { isStorageError, type StorageErrorCode } from '../../shared/storage/index';
import { freePort } from '../services/ports';
import { type SshdService, startSshd } from '../services/sshd';
import { expectProbeLeftoversSwept } from './probe-sweep';

/** ssh2's SFTP channel class: the tests below watch the fsync requests the provider sends through it. */
const { SFTP } = createRequire(import.meta.url)('ssh2/lib/protocol/SFTP.js') as {
  SFTP: { prototype: { ext_openssh_fsync: (handle: Buffer, cb: (error?: Error) => void) => void } };
};

let sshd: SshdService;
beforeAll(async () => {
  sshd = await startSshd();
});
afterAll(async () => {
  await sshd?.stop();
});

let folders = 0;
function options(overrides: Partial<SftpOptions> = {}): SftpOptions {
  return {
    host: sshd.host,
    port: sshd.port,
    username: sshd.passwordUser.username,
    password: sshd.passwordUser.password,
    remotePath: 'backups',
    ...overrides,
  };
}

async function failure(
  promise: Promise<unknown>,
): Promise<{ code: StorageErrorCode; permanent: boolean; message: string }> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  if (!isStorageError(error)) throw new Error(`expected a StorageError, got ${String(error)}`);
  return { code: error.code, permanent: error.permanent, message: error.message };
}

runStorageProviderSuite('sftp (password)', async () => {
  folders += 1;
  const remotePath = `suite-${folders}/gem`;
  const local = join(sshd.root, remotePath);
  return {
    provider: new SftpProvider(options({ remotePath })),
    cleanup: () => rm(join(sshd.root, `suite-${folders}`), { recursive: true, force: true }),
    rawNames: () => readdir(local).catch(() => []),
  };
});

describe('sftp provider', () => {
  const name = 'gem-backup-2026-03-04-050607.tar.gz';
  const source = { size: 3, open: () => new Blob(['abc']).stream() };

  it('logs in with an OpenSSH key and pins the right host key', async () => {
    const provider = new SftpProvider(
      options({
        username: sshd.keyUser.username,
        password: undefined,
        privateKey: sshd.keyUser.privateKey,
        hostKeyFingerprint: sshd.hostKeyFingerprint,
        remotePath: join(sshd.root, 'by-key'),
      }),
    );
    await provider.put(name, source);
    expect((await provider.list()).map((entry) => entry.name)).toEqual([name]);
  });

  it('logs in with a passphrase-protected key', async () => {
    const provider = new SftpProvider(
      options({
        username: sshd.keyUser.username,
        password: undefined,
        privateKey: sshd.keyUser.encryptedPrivateKey,
        passphrase: sshd.keyUser.passphrase,
      }),
    );
    expect(Array.isArray(await provider.list())).toBe(true);
  });

  it("reports a wrong password as permanent 'auth_failed'", async () => {
    const result = await failure(new SftpProvider(options({ password: 'not-the-password' })).list());
    expect(result).toMatchObject({ code: 'auth_failed', permanent: true });
  });

  it("reports a wrong key passphrase as 'auth_failed'", async () => {
    const provider = new SftpProvider(
      options({
        username: sshd.keyUser.username,
        password: undefined,
        privateKey: sshd.keyUser.encryptedPrivateKey,
        passphrase: 'wrong',
      }),
    );
    expect((await failure(provider.list())).code).toBe('auth_failed');
  });

  it("refuses a PuTTY key with 'bad_key_format' and says how to convert it", async () => {
    const provider = new SftpProvider(
      options({
        username: sshd.keyUser.username,
        password: undefined,
        privateKey: sshd.keyUser.puttyPrivateKey,
      }),
    );
    const result = await failure(provider.list());
    expect(result).toMatchObject({ code: 'bad_key_format', permanent: true });
    expect(result.message).toContain('puttygen key.ppk -O private-openssh -o key');
  });

  it('refuses a server whose host key is not the pinned one', async () => {
    const provider = new SftpProvider(
      options({ hostKeyFingerprint: 'SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }),
    );
    const result = await failure(provider.put(name, source));
    expect(result).toMatchObject({ code: 'auth_failed', permanent: true });
    expect(result.message).toContain(sshd.hostKeyFingerprint);
    expect(await readdir(join(sshd.root, 'backups')).catch(() => [])).not.toContain(name);
  });

  it("reports a closed port as retryable 'unreachable'", async () => {
    const result = await failure(new SftpProvider(options({ port: await freePort() })).list());
    expect(result).toMatchObject({ code: 'unreachable', permanent: false });
  });

  it("reports a folder it may not write as 'permission_denied'", async () => {
    await mkdir(join(sshd.root, '..', 'root-only'), { recursive: true });
    const provider = new SftpProvider(options({ remotePath: join(sshd.root, '..', 'root-only', 'gem') }));
    expect((await failure(provider.put(name, source))).code).toBe('permission_denied');
  });

  it('says a backup folder that is a file is a file, not a missing folder, and writes nothing', async () => {
    await writeFile(join(sshd.root, 'a-file'), 'not a folder');
    const provider = new SftpProvider(options({ remotePath: 'a-file' }));
    for (const attempt of [
      () => provider.list(),
      () => provider.put(name, source),
      () => provider.sweepTemp(),
    ]) {
      const refused = await failure(attempt());
      expect(refused.code).toBe('io');
      expect(refused.permanent).toBe(true);
      expect(refused.message).toMatch(/a-file .*is a file, not a folder/);
    }
    expect(await readFile(join(sshd.root, 'a-file'), 'utf8')).toBe('not a folder');
    await provider.close();
  });

  it('uploads once the frozen server comes back, retrying with a fresh source', async () => {
    const provider = new SftpProvider(options({ remotePath: 'after-pause', timeoutMs: 1000 }));
    let opened = 0;
    const counted = {
      size: 3,
      open: () => {
        opened += 1;
        return new Blob(['abc']).stream();
      },
    };
    const retried: string[] = [];
    sshd.pause();
    try {
      await withRetry(() => provider.put(name, counted), {
        attempts: 3,
        baseDelayMs: 50,
        onRetry: (error) => {
          retried.push(error.code);
          sshd.resume();
        },
      });
    } finally {
      sshd.resume();
    }
    expect(retried).toEqual(['unreachable']);
    expect(opened).toBe(1);
    expect(await readdir(join(sshd.root, 'after-pause'))).toEqual([name]);
  });

  it('replaces an existing backup without posix-rename, and keeps the old copy if the new one cannot take its place', async () => {
    const remotePath = 'plain-rename';
    const local = join(sshd.root, remotePath);
    const v1 = { size: 3, open: () => new Blob(['one']).stream() };
    const v2 = { size: 3, open: () => new Blob(['two']).stream() };
    const v3 = { size: 5, open: () => new Blob(['three']).stream() };
    const plain = new SftpProvider(options({ remotePath, posixRename: false }));
    await plain.put(name, v1);
    await plain.put(name, v2);
    expect(await readFile(join(local, name), 'utf8')).toBe('two');
    expect(await readdir(local)).toEqual([name]);
    // The new copy vanishes just before it is renamed in (as if the server lost it): the rename fails.
    const failing = new SftpProvider(
      options({
        remotePath,
        posixRename: false,
        faults: {
          beforeReplace: async () => {
            for (const entry of await readdir(local))
              if (entry.startsWith('.tmp-')) await rm(join(local, entry));
          },
        },
      }),
    );
    expect((await failure(failing.put(name, v3))).code).toBe('not_found');
    expect(await readFile(join(local, name), 'utf8')).toBe('two');
    expect(await readdir(local)).toEqual([name]);
  });

  it("sweeps Test Connection's leftover probe and its temp file as ours, by the same age rule", async () => {
    const remotePath = 'probe-sweep';
    const provider = new SftpProvider(options({ remotePath }));
    await provider.put(name, source);
    await expectProbeLeftoversSwept(provider, join(sshd.root, remotePath), name);
  });

  it('creates a missing remote folder, however deep', async () => {
    const provider = new SftpProvider(options({ remotePath: 'a/b/c' }));
    await provider.put(name, source);
    expect(await readdir(join(sshd.root, 'a', 'b', 'c'))).toEqual([name]);
  });
  describe('a large upload is flushed to the server disk while it is still being sent', () => {
    const size = 5 * EARLY_FLUSH_BYTES;
    const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
    const bytes = randomBytes(size);
    const source = {
      size,
      sha256: sha256(bytes),
      open: () => new Blob([bytes]).stream(),
    };

    /** Runs `upload` while recording each fsync request: its channel and the temp file's size then. */
    async function watchFsyncs(folder: string, upload: () => Promise<unknown>) {
      const real = SFTP.prototype.ext_openssh_fsync;
      // Channels by number (1: the first one seen), so a failure prints numbers, not ssh2's objects.
      const channels = new Map<object, number>();
      const calls: Array<{ channel: number; sizeOnServer: number }> = [];
      SFTP.prototype.ext_openssh_fsync = function (this: object, handle, cb) {
        const dir = join(sshd.root, folder);
        const temp = readdirSync(dir).find((entry) => entry.startsWith('.tmp-'));
        if (!channels.has(this)) channels.set(this, channels.size + 1);
        calls.push({
          channel: channels.get(this)!,
          sizeOnServer: temp ? statSync(join(dir, temp)).size : -1,
        });
        return real.call(this, handle, cb);
      };
      try {
        await upload();
      } finally {
        SFTP.prototype.ext_openssh_fsync = real;
      }
      return calls;
    }

    it('flushes on a second channel every EARLY_FLUSH_BYTES, then fsyncs the whole file on its own', async () => {
      const provider = new SftpProvider(options({ remotePath: 'early-flush' }));
      const calls = await watchFsyncs('early-flush', () => provider.put(name, source));
      expect(sha256(await readFile(join(sshd.root, 'early-flush', name)))).toBe(source.sha256);
      const last = calls.at(-1)!;
      const early = calls.slice(0, -1);
      expect(early.length).toBeGreaterThanOrEqual(2);
      // Early flushes go while bytes are still arriving, on another channel than the upload's.
      expect(early.some((call) => call.sizeOnServer < size)).toBe(true);
      expect(early.every((call) => call.channel !== last.channel)).toBe(true);
      // The last one is on the upload's own channel, after every byte arrived.
      expect(last.sizeOnServer).toBe(size);
    });

    it('uploads the same without them when the second channel cannot be opened', async () => {
      const provider = new SftpProvider(options({ remotePath: 'no-side-channel' }));
      const realSftp = Client.prototype.sftp;
      const channels = new WeakMap<object, number>();
      Client.prototype.sftp = function (this: Client, ...args: unknown[]) {
        const opened = (channels.get(this) ?? 0) + 1;
        channels.set(this, opened);
        const cb = args.at(-1) as (error: Error | undefined) => void;
        if (opened > 1) return process.nextTick(() => cb(new Error('channel open failure'))) as never;
        return (realSftp as (...a: unknown[]) => unknown).apply(this, args) as never;
      } as typeof realSftp;
      let calls: Array<{ sizeOnServer: number }>;
      try {
        calls = await watchFsyncs('no-side-channel', () => provider.put(name, source));
      } finally {
        Client.prototype.sftp = realSftp;
      }
      expect(calls.map((call) => call.sizeOnServer)).toEqual([size]);
      expect(sha256(await readFile(join(sshd.root, 'no-side-channel', name)))).toBe(source.sha256);
    });
  });
});
