import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock, withJobLock } from '../../agent/jobs/lock';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-lock-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the job lock', () => {
  it('refuses a second holder with job_running', async () => {
    const release = await acquireLock(join(dir, 'a.lock'), 'backup');
    await expect(acquireLock(join(dir, 'a.lock'), 'restore')).rejects.toMatchObject({ code: 'job_running' });
    await release();
    await (await acquireLock(join(dir, 'a.lock'), 'restore'))();
  });

  it('makes withJobLock wait for the holder, then run, then release', async () => {
    const path = join(dir, 'b.lock');
    const release = await acquireLock(path, 'maintenance');
    const order: string[] = [];
    const waiting = withJobLock(path, 'dr-push backup', async () => order.push('work'), { pollMs: 20 });
    await new Promise((r) => setTimeout(r, 150));
    expect(order).toEqual([]);
    order.push('released');
    await release();
    await waiting;
    expect(order).toEqual(['released', 'work']);
    await (await acquireLock(path, 'next'))();
  });

  it('gives up with job_running once its wait is over', async () => {
    const path = join(dir, 'c.lock');
    const release = await acquireLock(path, 'restore');
    await expect(
      withJobLock(path, 'dr-push backup', async () => 1, { waitMs: 100, pollMs: 20 }),
    ).rejects.toMatchObject({
      code: 'job_running',
    });
    await release();
  });
});
