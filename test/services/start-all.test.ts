// startAll: a service that fails to start (a missing binary) must not leave the others running.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startS3 } from './s3';
import { startSmbd } from './smbd';
import { startSshd } from './sshd';
import { releaseService, startAll } from './start-all';

const MISSING = 'gem-no-such-server';
const HINT = `${MISSING} is not installed: apt-get install -y ${MISSING}`;

/** A start as the service helpers write them, for a binary this machine does not have. */
function startMissingServer(): Promise<{ stop(): Promise<void> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(MISSING, [], { stdio: 'ignore' });
    child.once('error', () => reject(new Error(HINT)));
    child.once('spawn', () => resolve({ stop: async () => void child.kill() }));
  });
}

/** Live processes whose command line names `path` (each service's config or data dir is on it). */
function processesMentioning(path: string): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        if (stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z') return false;
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(path);
      } catch {
        return false; // ended while we looked
      }
    })
    .map(Number);
}

const userExists = (name: string) =>
  readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .some((line) => line.startsWith(`${name}:`));

describe('startAll', () => {
  it('stops the services that started when another start fails, and rethrows that error unchanged', async () => {
    const seen: { dir: string; pids: number[]; users: string[] }[] = [];
    const error = await startAll({
      s3: async () => {
        const s3 = await startS3();
        seen.push({ dir: s3.root, pids: processesMentioning(s3.root), users: [] });
        return s3;
      },
      missing: startMissingServer,
      smbd: async () => {
        const smbd = await startSmbd();
        const dir = dirname(smbd.root);
        seen.push({ dir, pids: processesMentioning(dir), users: [smbd.username] });
        return smbd;
      },
      sshd: async () => {
        const sshd = await startSshd();
        const dir = dirname(sshd.root);
        const users = [sshd.passwordUser.username, sshd.keyUser.username];
        seen.push({ dir, pids: processesMentioning(dir), users });
        return sshd;
      },
    }).then(
      () => undefined,
      (reason: unknown) => reason,
    );

    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toBe(HINT);
    expect(seen).toHaveLength(3);
    for (const service of seen) {
      // It really ran (a process, a dir and for sshd and smbd their users), and all of it is gone now.
      expect(service.pids.length).toBeGreaterThan(0);
      expect(processesMentioning(service.dir)).toEqual([]);
      expect(existsSync(service.dir)).toBe(false);
      for (const user of service.users) expect(userExists(user)).toBe(false);
    }
    expect(seen.flatMap((s) => s.users)).toHaveLength(3);
  });

  it('resolves with every service by name when all start', async () => {
    const { a, b } = await startAll({ a: () => startS3(), b: () => startS3({ bucket: 'other' }) });
    try {
      expect(a.bucket).toBe('gem-backups');
      expect(b.bucket).toBe('other');
      expect(processesMentioning(a.root).length).toBeGreaterThan(0);
    } finally {
      await Promise.all([releaseService(a), releaseService(b)]);
    }
    expect(existsSync(a.root)).toBe(false);
    expect(existsSync(b.root)).toBe(false);
  });

  it('ends a service with dispose() before stop() (stop may keep state for a restart), else close()', async () => {
    const calls: string[] = [];
    const note = (name: string) => async () => void calls.push(name);
    await releaseService({ dispose: note('dispose'), stop: note('stop') });
    await releaseService({ stop: note('stop'), close: note('close') });
    await releaseService({ close: note('close') });
    expect(calls).toEqual(['dispose', 'stop', 'close']);
  });
});
