import { type ChildProcess, fork, spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock, clearStaleLock, withJobLock } from '../../agent/jobs/lock';
import { type BuiltChildren, buildChildren } from '../faults/built-child';

const CHILDREN = 6;
const ROUNDS = 25;

let dir: string;
/**
 * lock-child.ts bundled once for the file by the build itself (test/faults/built-child.ts): each racer
 * (six at once, twice) starts without tsx's loader.
 */
let built: BuiltChildren<'racer'>;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-lock-'));
  built = await buildChildren({ racer: 'test/jobs/lock-child.ts' });
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  await built?.remove();
});

/** A pid that certainly belongs to no process: one that ran and exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '0']);
  const pid = child.pid!;
  await new Promise((resolve) => child.on('exit', resolve));
  return pid;
}

interface Racer {
  child: ChildProcess;
  next(): Promise<Record<string, unknown>>;
}

function startRacer(): Racer {
  const child = fork(built.paths.racer, [], {
    execArgv: [],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const queue: Record<string, unknown>[] = [];
  const waiting: ((m: Record<string, unknown>) => void)[] = [];
  child.on('message', (m) => {
    const w = waiting.shift();
    if (w) w(m as Record<string, unknown>);
    else queue.push(m as Record<string, unknown>);
  });
  return {
    child,
    next: () => {
      const m = queue.shift();
      return m ? Promise.resolve(m) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

/** Rounds of CHILDREN processes racing for one lock; returns how many held it at once in each round. */
async function race(prepare: (path: string) => Promise<void>): Promise<number[]> {
  const racers = Array.from({ length: CHILDREN }, startRacer);
  try {
    await Promise.all(racers.map((r) => r.next()));
    const holders: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const path = join(dir, `race-${Math.random().toString(36).slice(2)}.lock`);
      await prepare(path);
      for (const r of racers) r.child.send({ go: path });
      // Every winner keeps holding until all have answered, so two winners means two holders at once.
      const answers = await Promise.all(racers.map((r) => r.next()));
      holders.push(answers.filter((a) => a.got).length);
      for (const r of racers) r.child.send({ release: true });
      await Promise.all(racers.map((r) => r.next()));
    }
    return holders;
  } finally {
    for (const r of racers) r.child.send({ exit: true });
  }
}

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

  it('has exactly one holder when processes race for a free lock', async () => {
    const holders = await race(async () => {});
    expect(holders).toEqual(Array(ROUNDS).fill(1));
  });

  it('has exactly one holder when processes race to take over a lock left by a dead process', async () => {
    const dead = await deadPid();
    let n = 0;
    const holders = await race(async (path) => {
      // Alternate the current format and the older one without a nonce.
      const nonce = n++ % 2 ? { nonce: `dead-${n}` } : {};
      await writeFile(path, JSON.stringify({ pid: dead, what: 'backup', since: 'x', ...nonce }));
    });
    expect(holders).toEqual(Array(ROUNDS).fill(1));
  });

  it('takes over a dead lock even when the takeover claim on it was left by a process that died mid-takeover', async () => {
    const path = join(dir, 'claim-dead.lock');
    await writeFile(
      path,
      JSON.stringify({ pid: await deadPid(), nonce: 'dead-lock', what: 'backup', since: 'x' }),
    );
    const claim = { pid: await deadPid(), nonce: 'dead-claim', what: 'takeover', since: 'x' };
    await writeFile(`${path}.takeover-dead-lock`, JSON.stringify(claim));
    const release = await acquireLock(path, 'restore');
    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ pid: process.pid, what: 'restore' });
    // The spent claims (the dead one and the one made over it) are gone.
    expect((await readdir(dir)).filter((n) => n.startsWith('claim-dead.lock.'))).toEqual([]);
    await release();
  });

  it('leaves a dead lock alone while a live process holds the takeover claim on it', async () => {
    const path = join(dir, 'claim-live.lock');
    const lock = JSON.stringify({ pid: await deadPid(), nonce: 'dead-lock', what: 'backup', since: 'x' });
    await writeFile(path, lock);
    const sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
    try {
      const claim = { pid: sleeper.pid, nonce: 'live-claim', what: 'takeover', since: 'x' };
      await writeFile(`${path}.takeover-dead-lock`, JSON.stringify(claim));
      const error = await acquireLock(path, 'restore').catch((e) => e);
      expect(error).toMatchObject({ code: 'job_running' });
      expect(await readFile(path, 'utf8')).toBe(lock);
      expect(JSON.parse(await readFile(`${path}.takeover-dead-lock`, 'utf8'))).toMatchObject(claim);
    } finally {
      sleeper.kill();
    }
  });

  it('sweeps the takeover claims dead processes left on a lock taken since, never a live one nor one still in use', async () => {
    const path = join(dir, 'spent.lock');
    const dead = await deadPid();
    const claim = (nonce: string, pid = dead) => JSON.stringify({ pid, nonce, what: 'takeover', since: 'x' });
    const left = async () => (await readdir(dir)).filter((n) => n.startsWith('spent.lock')).sort();
    // Takers that died after removing the lock `gone-lock` (one claimed over the other's claim).
    await writeFile(`${path}.takeover-gone-lock`, claim('dead-claim'));
    await writeFile(`${path}.takeover-dead-claim`, claim('dead-claim-2'));
    const sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
    const exited = new Promise((resolve) => sleeper.once('exit', resolve));
    try {
      // A live process's claim on a lock gone meanwhile: its own to remove as it ends its takeover.
      await writeFile(`${path}.takeover-other-lock`, claim('live-claim', sleeper.pid));
      const release = await acquireLock(path, 'backup');
      const held = await readFile(path, 'utf8');
      expect(await clearStaleLock(path)).toBe(true);
      expect(await left()).toEqual(['spent.lock', 'spent.lock.takeover-other-lock']);
      expect(await readFile(path, 'utf8')).toBe(held);
      await release();
      await rm(`${path}.takeover-other-lock`);

      // A dead lock whose dead taker's claim a live process is taking over: all three stay its.
      const lock = JSON.stringify({ pid: dead, nonce: 'dead-lock', what: 'backup', since: 'x' });
      await writeFile(path, lock);
      await writeFile(`${path}.takeover-dead-lock`, claim('dead-claim'));
      await writeFile(`${path}.takeover-dead-claim`, claim('live-claim', sleeper.pid));
      expect(await clearStaleLock(path)).toBe(false);
      expect(await readFile(path, 'utf8')).toBe(lock);
      expect(await left()).toEqual([
        'spent.lock',
        'spent.lock.takeover-dead-claim',
        'spent.lock.takeover-dead-lock',
      ]);
    } finally {
      sleeper.kill();
    }
    // Once that taker is gone too, the next start takes the lock over and nothing of it is left.
    await exited;
    expect(await clearStaleLock(path)).toBe(false);
    expect(await left()).toEqual([]);
  });

  it('lets only one of two concurrent acquires in one process take the lock, free or left by a dead process', async () => {
    const dead = await deadPid();
    for (let round = 0; round < 200; round++) {
      const path = join(dir, `inproc-${round}.lock`);
      if (round % 2) await writeFile(path, JSON.stringify({ pid: dead, what: 'backup', since: 'x' }));
      const results = await Promise.allSettled([
        acquireLock(path, 'backup'),
        acquireLock(path, 'maintenance'),
      ]);
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      expect(results.find((r) => r.status === 'rejected')).toMatchObject({ reason: { code: 'job_running' } });
      for (const r of results) if (r.status === 'fulfilled') await r.value();
    }
  });

  it("never removes another holder's lock on release", async () => {
    const path = join(dir, 'd.lock');
    const first = await acquireLock(path, 'backup');
    await first();
    const second = await acquireLock(path, 'restore');
    const held = await readFile(path, 'utf8');
    await first(); // a late second release of the first holder
    expect(await readFile(path, 'utf8')).toBe(held);
    // A lock that someone else holds now (here: another live process) survives our release too.
    const third = await acquireLock(join(dir, 'e.lock'), 'backup');
    const other = JSON.stringify({ pid: process.ppid, nonce: 'someone-else', what: 'restore', since: 'x' });
    await writeFile(join(dir, 'e.lock'), other);
    await third();
    expect(await readFile(join(dir, 'e.lock'), 'utf8')).toBe(other);
    await second();
    await expect(readFile(path, 'utf8')).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('counts a holder whose pid now names another process (started later, or before a reboot) as dead', async () => {
    // A CLI run died holding the lock; after a restart its pid belongs to something else.
    const path = join(dir, 'reused.lock');
    const other = spawn('sleep', ['30']);
    try {
      const stat = await readFile(`/proc/${other.pid}/stat`, 'utf8');
      const started = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
      const boot = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
      const holder = { pid: other.pid, nonce: 'cli', what: 'backup', since: 'x' };
      // The process that really holds it: alive.
      await writeFile(path, JSON.stringify({ ...holder, started, boot }));
      await expect(acquireLock(path, 'backup')).rejects.toMatchObject({ code: 'job_running' });
      // Same pid, another start: the holder is gone.
      await writeFile(path, JSON.stringify({ ...holder, started: String(Number(started) - 1), boot }));
      expect(await clearStaleLock(path)).toBe(false);
      await expect(readFile(path, 'utf8')).rejects.toMatchObject({ code: 'ENOENT' });
      // Same pid and start, another boot: gone too.
      await writeFile(path, JSON.stringify({ ...holder, started, boot: `${boot.slice(0, -1)}x` }));
      const release = await acquireLock(path, 'backup');
      await release();
    } finally {
      other.kill();
    }
  });

  it('counts a holder it may not signal (EPERM) as alive, and removes only a dead one at start', async () => {
    const path = join(dir, 'f.lock');
    // pid 1 runs as root (or another user): kill(1, 0) succeeds or fails with EPERM, never ESRCH.
    await writeFile(path, JSON.stringify({ pid: 1, nonce: 'init', what: 'restore', since: 'x' }));
    await expect(acquireLock(path, 'backup')).rejects.toMatchObject({ code: 'job_running' });
    expect(await clearStaleLock(path)).toBe(true);
    await writeFile(
      path,
      JSON.stringify({ pid: await deadPid(), nonce: 'gone', what: 'restore', since: 'x' }),
    );
    expect(await clearStaleLock(path)).toBe(false);
    await expect(readFile(path, 'utf8')).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
