// Locks and temp sweeps across PID namespaces: the agent in one container and a CLI command in another
// on the same data dir. A holder's pid names no process (or an unrelated one) in the other namespace, so
// it is judged by its file's freshness instead. Real processes in new PID namespaces (unshare -p -f),
// pid-namespace-child.ts bundled once for the file by the build itself (test/faults/built-child.ts): each
// child starts without tsx's loader.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { type HistoryEntry, JobHistory } from '../../agent/jobs/history';
import { acquireLock, clearStaleLock, heldByOtherProcess, lockTiming } from '../../agent/jobs/lock';
import { JobRunner } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { removeAbandoned, TEMP_PREFIX } from '../../agent/system/atomic-file';
import { type BuiltChildren, buildChildren } from '../faults/built-child';

const BOOT = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();

let dir: string;
let built: BuiltChildren<'child'>;
beforeAll(async () => {
  // Never skipped: without namespaces these cases are not tested at all.
  const probe = spawnSync('unshare', ['-p', '-f', '--mount-proc', 'true'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0)
    throw new Error(
      `these tests need 'unshare -p -f --mount-proc' (util-linux) run as root to make PID namespaces: install util-linux and run the tests as root (unshare said: ${probe.error?.message ?? probe.stderr.trim()})`,
    );
  dir = await mkdtemp(join(tmpdir(), 'gem-pidns-'));
  built = await buildChildren({ child: 'test/system/pid-namespace-child.ts' });
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  await built?.remove();
});

interface Other {
  /** The first line it reported: its pid and namespace as it sees them, and what it did. */
  said: Record<string, unknown> & { pid: number; ns: string };
  /** Kills it (SIGKILL) and resolves once it is gone (its unshare parent, which reaps it, has exited). */
  kill(): Promise<void>;
}

const running: Other[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((o) => o.kill()));
});

/**
 * Runs the child script with `args` in a new PID namespace; resolves with its first report. It is pid
 * 1 there, a pid that runs here too; `pid` makes it that pid of its namespace instead (a shell sets the
 * namespace's last pid and starts it), for a pid that names no process here, as in a real container.
 */
async function inOtherNamespace(args: string[], options: { pid?: number } = {}): Promise<Other> {
  const node = [process.execPath, built.paths.child, ...args];
  const command =
    options.pid === undefined
      ? node
      : ['sh', '-c', `echo ${options.pid - 1} > /proc/sys/kernel/ns_last_pid && "$@"`, 'sh', ...node];
  const unshare: ChildProcess = spawn(
    'unshare',
    ['-p', '-f', '--mount-proc', ...command],
    // stdin: the child ends when it closes, should this process die before killing it.
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  // unshare says this when its child is killed by SIGKILL (it cannot pass that signal on): not news.
  unshare.stderr?.on('data', (chunk: Buffer) => {
    const text = chunk.toString().replace(/^unshare: sigprocmask unblock failed.*\n?/gm, '');
    if (text) process.stderr.write(text);
  });
  const exited = new Promise<void>((resolve) => unshare.once('exit', () => resolve()));
  const said = await new Promise<Other['said']>((resolve, reject) => {
    let text = '';
    unshare.stdout?.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      const line = text.indexOf('\n');
      if (line >= 0) resolve(JSON.parse(text.slice(0, line)));
    });
    unshare.once('exit', (code) =>
      reject(new Error(`the child in a new PID namespace exited (${code}) before reporting`)),
    );
  });
  let killed: Promise<void> | undefined;
  const other: Other = {
    said,
    kill: () => {
      killed ??= (async () => {
        // unshare exits once it reaped its child (pid 1 of the namespace).
        const child = readFileSync(`/proc/${unshare.pid}/task/${unshare.pid}/children`, 'utf8').trim();
        if (child) process.kill(Number(child.split(' ')[0]), 'SIGKILL');
        else unshare.kill('SIGKILL');
        await exited;
      })();
      return killed;
    },
  };
  running.push(other);
  return other;
}

/** Sets the mtime (and atime) of `path` back by `ms`. */
async function age(path: string, ms: number): Promise<void> {
  const at = new Date(Date.now() - ms);
  await utimes(path, at, at);
}

/** Sets the `seenAt` of job `id` in the jobs.json of `data` back by `ms` (its process is dead: nobody else writes). */
async function ageSeen(data: string, id: string, ms: number): Promise<void> {
  const path = join(data, 'jobs.json');
  const file = JSON.parse(await readFile(path, 'utf8')) as { jobs: HistoryEntry[] };
  const entry = file.jobs.find((e) => e.job.id === id)!;
  expect(entry.seenAt).toBeDefined();
  entry.seenAt = new Date(Date.parse(entry.seenAt!) - ms).toISOString();
  await writeFile(path, JSON.stringify(file));
}

async function waitFor(what: string, check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('the job lock across PID namespaces', () => {
  it('is not taken over from a live holder in another namespace, whatever its pid names here', async () => {
    const lock = join(dir, 'live.lock');
    const holder = await inOtherNamespace(['hold', lock]);
    expect(holder.said.ns).not.toBe(readlinkSync('/proc/self/ns/pid'));
    // From this namespace: the normal refusal, naming the other namespace.
    const error = await acquireLock(lock, 'backup').catch((e: unknown) => e);
    expect((error as { code?: string }).code).toBe('job_running');
    expect((error as Error).message).toContain('another PID namespace');
    expect(await clearStaleLock(lock)).toBe(true);
    expect(await heldByOtherProcess(lock)).toBe(true);
    // From a third namespace, where the taker has the same pid as the holder (both are pid 1 there).
    const taker = await inOtherNamespace(['take', lock]);
    expect(taker.said.pid).toBe(holder.said.pid);
    expect(taker.said).toMatchObject({ got: false, code: 'job_running' });
    expect(JSON.parse(readFileSync(lock, 'utf8'))).toMatchObject({ what: 'restore', ns: holder.said.ns });
  });

  it('is taken over once the holder died and its lock was not refreshed for longer than the limit', async () => {
    const lock = join(dir, 'dead.lock');
    const holder = await inOtherNamespace(['hold', lock]);
    await holder.kill();
    // Dead, but nothing here can tell: while the file is fresh the holder counts as alive.
    expect((await acquireLock(lock, 'backup').catch((e: unknown) => e)) as { code?: string }).toMatchObject({
      code: 'job_running',
    });
    await age(lock, lockTiming.foreignMaxAgeMs + 60_000);
    const lines: string[] = [];
    const write = vi.spyOn(process.stderr, 'write').mockImplementation((line) => {
      lines.push(String(line));
      return true;
    });
    let release: () => Promise<void>;
    try {
      release = await acquireLock(lock, 'backup');
    } finally {
      write.mockRestore();
    }
    expect(JSON.parse(readFileSync(lock, 'utf8'))).toMatchObject({ what: 'backup', pid: process.pid });
    await release();
    const warning = lines.map((l) => JSON.parse(l) as { msg: string }).find((l) => l.msg.includes(lock));
    expect(warning?.msg).toContain('another PID namespace');
  });

  it("keeps a holder's lock fresh: its heartbeat moves the lock file's mtime", async () => {
    const lock = join(dir, 'heartbeat.lock');
    await inOtherNamespace(['hold', lock, '200']);
    // Made to look older than the limit: only the holder's heartbeat can make it fresh again.
    await age(lock, lockTiming.foreignMaxAgeMs + 60_000);
    const before = (await stat(lock)).mtimeMs;
    await waitFor('the heartbeat', async () => (await stat(lock)).mtimeMs > before);
    expect((await acquireLock(lock, 'backup').catch((e: unknown) => e)) as { code?: string }).toMatchObject({
      code: 'job_running',
    });
  });

  it("keeps a live lock temp of another namespace's writer; removes an old one", async () => {
    const lock = join(dir, 'temps.lock');
    const other = await inOtherNamespace(['hold', join(dir, 'other.lock')]);
    // A lock temp as a writer there leaves it between writing and linking (pid 1, started at tick 1).
    const temp = `${lock}.n1.tmp`;
    const holder = { pid: other.said.pid, started: '1', boot: BOOT, ns: other.said.ns, nonce: 'n1' };
    await writeFile(temp, JSON.stringify({ ...holder, what: 'restore', since: new Date().toISOString() }));
    await clearStaleLock(lock);
    expect(await readdir(dir)).toContain('temps.lock.n1.tmp');
    await age(temp, lockTiming.foreignMaxAgeMs + 60_000);
    await clearStaleLock(lock);
    expect(await readdir(dir)).not.toContain('temps.lock.n1.tmp');
  });
});

describe('temp files and work folders across PID namespaces', () => {
  it('a temp file being written by a live process in another namespace survives the sweep; an old one of a dead one goes', async () => {
    const folder = join(dir, 'backups');
    await mkdir(folder);
    const writer = await inOtherNamespace(['write', join(folder, 'gem-backup-1.tar.gz'), '200']);
    const [temp] = await readdir(folder);
    expect(temp?.startsWith(TEMP_PREFIX)).toBe(true);
    expect(temp).toContain(`.p${writer.said.pid}n`);
    // The start-up sweep (catalog init, data dir): the writer's pid names no live process here.
    expect(await removeAbandoned(folder)).toEqual([]);
    expect(await readdir(folder)).toEqual([temp]);
    // Even one that looks old is kept while its writer's heartbeat refreshes it.
    await age(join(folder, temp!), 20 * 60_000);
    const aged = (await stat(join(folder, temp!))).mtimeMs;
    await waitFor('the temp heartbeat', async () => (await stat(join(folder, temp!))).mtimeMs > aged);
    expect(await removeAbandoned(folder)).toEqual([]);
    await writer.kill();
    // Dead now, but young: kept (nothing here can tell); once older than the limit it goes.
    expect(await removeAbandoned(folder)).toEqual([]);
    await age(join(folder, temp!), 20 * 60_000);
    expect(await removeAbandoned(folder)).toEqual([temp]);
    expect(await readdir(folder)).toEqual([]);
  });

  it("a live process's work folder in another namespace survives the sweep; an old one of a dead one goes", async () => {
    const root = join(dir, 'work');
    await mkdir(root);
    const worker = await inOtherNamespace(['work', root, '200']);
    const name = String(worker.said.folder).slice(root.length + 1);
    expect(name).toMatch(/^p\d+n\d+$/);
    await age(join(root, name), 60 * 60_000);
    const aged = (await stat(join(root, name))).mtimeMs;
    await waitFor('the work folder heartbeat', async () => (await stat(join(root, name))).mtimeMs > aged);
    expect(await removeAbandoned(root, { all: true })).toEqual([]);
    await worker.kill();
    await age(join(root, name), 60 * 60_000);
    expect(await removeAbandoned(root, { all: true })).toEqual([name]);
  });
});

describe('a job run in another PID namespace (a gem-backup command in another container)', () => {
  it('is listed as running while it holds the job lock, though its pid names no process here, and as interrupted once its lock goes stale', async () => {
    const data = join(dir, 'job-data');
    await mkdir(data);
    // A pid free here, as a command's pid in another container usually is.
    let pid = 30_000;
    while (existsSync(`/proc/${pid}`)) pid++;
    const other = await inOtherNamespace(['job', data, '200'], { pid });
    expect(other.said.pid).toBe(pid);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    const id = String(other.said.job);

    // The service beside it: its job list, and its start (which ends the jobs whose process is gone).
    const runner = new JobRunner({
      lockPath: join(data, 'job.lock'),
      log: silentLogger,
      history: new JobHistory(join(data, 'jobs.json'), silentLogger),
    });
    const listed = async () => (await runner.listWithOthers()).find((j) => j.id === id);
    expect(await listed()).toMatchObject({ state: 'running', phase: 'stage' });
    expect(await runner.loadHistory('none')).toEqual([]);
    expect(await listed()).toMatchObject({ state: 'running' });

    // Killed: its lock stays behind; once it (and the job's own heartbeat in the file) is older than
    // the limit, the job is over.
    await other.kill();
    await age(join(data, 'job.lock'), lockTiming.foreignMaxAgeMs + 60_000);
    expect(await listed()).toMatchObject({ state: 'running' });
    await ageSeen(data, id, lockTiming.foreignMaxAgeMs + 60_000);
    expect(await listed()).toMatchObject({ state: 'failed', error: { code: 'interrupted' } });
    await runner.shutdown();
  });

  it('a job that takes no job lock (verify) is listed as running while its heartbeat in jobs.json is fresh, and as interrupted once it is stale', async () => {
    const data = join(dir, 'verify-data');
    await mkdir(data);
    let pid = 30_000;
    while (existsSync(`/proc/${pid}`)) pid++;
    const other = await inOtherNamespace(['verify', data, '200'], { pid });
    const id = String(other.said.job);
    expect(existsSync(join(data, 'job.lock'))).toBe(false);

    const runner = new JobRunner({
      lockPath: join(data, 'job.lock'),
      log: silentLogger,
      history: new JobHistory(join(data, 'jobs.json'), silentLogger),
    });
    const listed = async () => (await runner.listWithOthers()).find((j) => j.id === id);
    expect(await listed()).toMatchObject({ state: 'running', phase: 'read' });
    expect(await runner.loadHistory('none')).toEqual([]);
    // It reports no progress: its heartbeat writes the entry again.
    const seenAt = async () =>
      (await new JobHistory(join(data, 'jobs.json'), silentLogger).entries()).find((e) => e.job.id === id)
        ?.seenAt;
    const first = await seenAt();
    await waitFor('the job heartbeat', async () => (await seenAt()) !== first, 20_000);
    expect(await listed()).toMatchObject({ state: 'running' });

    // Killed: its last heartbeat is fresh for a while (nothing here can tell), then stale.
    await other.kill();
    expect(await listed()).toMatchObject({ state: 'running' });
    await ageSeen(data, id, lockTiming.foreignMaxAgeMs + 60_000);
    expect(await listed()).toMatchObject({ state: 'failed', error: { code: 'interrupted' } });
    await runner.shutdown();
  });
});
