// A damaged state file is an error that names the file without quoting it, and an update leaves it as it was;
// a file another process replaced is read again; processes updating one file at once all keep their
// changes (a lock file beside it, agent/jobs/lock.ts), and a lock a dead process left is taken over.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { createLogger } from '../../agent/log';
import { JsonStateFile } from '../../agent/system/json-state';
import { tempDirForTest } from '../services/temp-dir';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-json-state-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const INSTALLATION_ID = '9f2c4e1ab7d3450c8e6f1a2b3c4d5e6f';

describe('a state file', () => {
  it.each([
    ['cut short', `{"enrollment":{"installationId":"${INSTALLATION_ID}`],
    ['a fault next to a secret', `{"enrollment":{"installationId":${INSTALLATION_ID}}}`],
    ['not an object', `["${INSTALLATION_ID}"]`],
  ])('that is damaged (%s) is refused without being quoted, and left as it was', async (_case, text) => {
    const path = join(dir, `dr-state-${_case.replaceAll(' ', '-')}.json`);
    await writeFile(path, text);
    const state = new JsonStateFile<{ enrollment?: { installationId: string }; n?: number }>(
      path,
      () => ({}),
    );
    const failure = await state.get().then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    expect(failure?.message).toBe(`${path} is damaged (not a JSON object): move it aside to start it afresh`);
    expect(failure?.message).not.toContain(INSTALLATION_ID.slice(0, 8));
    await expect(
      state.update((s) => {
        s.n = 1;
      }),
    ).rejects.toThrow('is damaged');
    expect(await readFile(path, 'utf8')).toBe(text);
  });

  it('that is damaged, for state the agent can rebuild, is set aside once and starts afresh', async () => {
    const sub = await mkdtemp(join(dir, 'aside-'));
    const path = join(sub, 'alerts-state.json');
    const text = `{"backups":{"status":"error","installationId":"${INSTALLATION_ID}`;
    await writeFile(path, text);
    const lines: string[] = [];
    const log = createLogger({ write: (line) => lines.push(line) });
    const state = new JsonStateFile<{ n: number }>(path, () => ({ n: 0 }), { setAsideDamaged: { log } });
    expect(await state.get()).toEqual({ n: 0 });
    // The damaged file is kept beside, as it was, for a look; nothing is under the name until an update.
    const [aside, ...others] = (await readdir(sub)).filter((name) =>
      name.startsWith('alerts-state.json.damaged-'),
    );
    expect(others).toEqual([]);
    expect(await readFile(join(sub, aside!), 'utf8')).toBe(text);
    expect(existsSync(path)).toBe(false);
    await state.update((s) => {
      s.n = 3;
    });
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({ n: 3 });
    // Told once, naming both files, never quoting the content.
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({
      level: 'warn',
      msg: 'a damaged state file was set aside; that state starts afresh',
      file: path,
      setAside: join(sub, aside!),
    });
    expect(lines[0]).not.toContain(INSTALLATION_ID.slice(0, 8));
  });

  it('that is damaged, read at once by several stores and updated meanwhile, is set aside once; none fails and the update stays', async () => {
    // The service's stores and a CLI command's, on one damaged file: each read finds it damaged. A
    // read that set it aside without the file's lock found it gone under its rename (ENOENT, the
    // first look at the state failed), or took away the file an update had just written.
    for (let round = 0; round < 10; round++) {
      const sub = await mkdtemp(join(dir, 'aside-at-once-'));
      const path = join(sub, 'alerts-state.json');
      await writeFile(path, `{"backups":{"status":"error"`);
      const lines: string[] = [];
      const log = createLogger({ write: (line) => lines.push(line) });
      const store = () =>
        new JsonStateFile<{ n: number }>(path, () => ({ n: 0 }), { setAsideDamaged: { log } });
      const [service, cli, other] = [store(), store(), store()];
      const results = await Promise.allSettled([
        service.get(),
        cli.get(),
        other.update((s) => {
          s.n = 5;
        }),
        service.get(),
      ]);
      expect(results.map((r) => (r.status === 'rejected' ? String(r.reason) : 'ok'))).toEqual([
        'ok',
        'ok',
        'ok',
        'ok',
      ]);
      expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({ n: 5 });
      expect(await cli.get()).toEqual({ n: 5 });
      expect((await readdir(sub)).filter((name) => name.includes('.damaged-'))).toHaveLength(1);
      expect(lines).toHaveLength(1);
    }
  });

  it('that is missing reads as the initial state, and an update writes it', async () => {
    const path = join(dir, 'fresh.json');
    const state = new JsonStateFile<{ n: number }>(path, () => ({ n: 0 }));
    expect(await state.get()).toEqual({ n: 0 });
    await state.update((s) => {
      s.n = 2;
    });
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({ n: 2 });
  });
});

describe('a state file that cannot be read', () => {
  it('is an error, never the initial state an update would then write over it', async () => {
    // A folder where the file should be (EISDIR): as root, a mode that forbids reading would not.
    const path = join(dir, 'state-unreadable.json');
    await mkdir(path);
    const state = new JsonStateFile<{ n?: number }>(path, () => ({}));
    await expect(state.get()).rejects.toThrow(`${path} cannot be read (EISDIR)`);
    await expect(
      state.update((s) => {
        s.n = 1;
      }),
    ).rejects.toThrow('cannot be read');
    expect((await stat(path)).isDirectory()).toBe(true);
  });
});

describe('a state file two processes write (the service and a CLI command)', () => {
  it('is read again once the other has replaced it, so an update keeps what the other wrote', async () => {
    const path = join(dir, 'dr-state-shared.json');
    // Two stores on one file, as the service and `gem-backup dr push` each hold one.
    const service = new JsonStateFile<{ lastPush?: string; enrollment?: string }>(path, () => ({}));
    const cli = new JsonStateFile<{ lastPush?: string; enrollment?: string }>(path, () => ({}));
    expect(await service.get()).toEqual({});
    await cli.update((s) => {
      s.enrollment = 'enrolled by the CLI';
    });
    expect(await service.get()).toEqual({ enrollment: 'enrolled by the CLI' });
    await service.update((s) => {
      s.lastPush = 'pushed by the service';
    });
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({
      enrollment: 'enrolled by the CLI',
      lastPush: 'pushed by the service',
    });
    expect(await cli.get()).toEqual({ enrollment: 'enrolled by the CLI', lastPush: 'pushed by the service' });
    // Removed by hand: both read the initial state again.
    await rm(path);
    expect(await service.get()).toEqual({});
  });
});

/** A child that prints `word` on a line of its stdout, or fails if it exits (or `ms` pass) first. */
function nextLine(child: ChildProcess, word: string, ms: number): Promise<void> {
  return new Promise((done, fail) => {
    let seen = '';
    const timer = setTimeout(
      () => finish(new Error(`no '${word}' from process ${child.pid} in ${ms} ms`)),
      ms,
    );
    const onData = (chunk: Buffer) => {
      seen += chunk;
      if (seen.split('\n').includes(word)) finish();
    };
    const onExit = (code: number | null) =>
      finish(new Error(`process ${child.pid} exited (${code}) before '${word}'`));
    function finish(error?: Error) {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
      if (error) fail(error);
      else done();
    }
    child.stdout?.on('data', onData);
    child.on('exit', onExit);
  });
}

/** Runs `count` increments of `n` in `path` from each of `processes` Node processes, all started together. */
async function incrementFromProcesses(path: string, processes: number, count: number): Promise<void> {
  const children = Array.from({ length: processes }, () =>
    spawn(
      process.execPath,
      ['--import', 'tsx', join(import.meta.dirname, 'json-state-child.ts'), path, `${count}`],
      {
        stdio: ['pipe', 'pipe', 'inherit'],
      },
    ),
  );
  try {
    await Promise.all(children.map((child) => nextLine(child, 'ready', 30_000)));
    const finished = children.map((child) => nextLine(child, 'done', 60_000));
    for (const child of children) child.stdin.write('go\n');
    await Promise.all(finished);
  } finally {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  }
}

/** A pid no process can have: above the kernel's largest (4194304). */
const DEAD_PID = 4_194_305;

/**
 * A lock file's content as agent/jobs/lock.ts writes it: the holder's pid (with, where given, its
 * start and boot) and a nonce naming this taking.
 */
function lockOf(pid: number, more: { started?: string; boot?: string } = {}): string {
  return JSON.stringify({
    pid,
    ...more,
    nonce: randomUUID(),
    what: 'update of state.json',
    since: new Date().toISOString(),
  });
}

/** A live process other than this one, stopped when the test ends. */
async function liveProcess(): Promise<number> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  await new Promise((resolve) => child.on('spawn', resolve));
  onTestFinished(() => {
    child.kill('SIGKILL');
  });
  return child.pid!;
}

const addOne = (s: { n: number }) => {
  s.n += 1;
};

const counter = (path: string, lockWaitMs?: number) =>
  new JsonStateFile<{ n: number }>(path, () => ({ n: 0 }), lockWaitMs !== undefined ? { lockWaitMs } : {});

describe('a state file several processes update at once', () => {
  it('keeps every change of each (a lock across processes)', async () => {
    const path = join(await tempDirForTest('gem-json-state-'), 'state.json');
    // A lock a killed process left, which all of them find at once: one takes it over, none takes another's.
    await writeFile(`${path}.lock`, lockOf(DEAD_PID), { mode: 0o600 });
    await incrementFromProcesses(path, 3, 200);
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({ n: 600 });
    // Nothing is left beside it: no lock, no claim, no temp file.
    expect(await readdir(join(path, '..'))).toEqual(['state.json']);
  }, 120_000);
});

describe('the lock of a state file', () => {
  it.each([
    ['a process that has exited', async () => lockOf(DEAD_PID)],
    [
      'a pid another process now has (it started at another time)',
      async () => lockOf(await liveProcess(), { started: '1' }),
    ],
    ['a process of an earlier boot', async () => lockOf(await liveProcess(), { boot: 'an-earlier-boot' })],
    [
      'this process, left by an earlier one with the same pid (a restarted container)',
      async () => lockOf(process.pid),
    ],
  ])('left by %s is taken over, and the update is done', async (_case, holder) => {
    const path = join(await tempDirForTest('gem-json-state-'), 'state.json');
    await writeFile(`${path}.lock`, await holder(), { mode: 0o600 });
    // Taken over, not waited for: with a live holder this update would fail after its 3 s wait.
    expect(await counter(path, 3_000).update(addOne)).toEqual({ n: 1 });
    expect(await readdir(join(path, '..'))).toEqual(['state.json']);
  });

  it("leaves no temp file a killed process left while taking it (the lock's own temps)", async () => {
    const path = join(await tempDirForTest('gem-json-state-'), 'state.json');
    const live = lockOf(await liveProcess());
    await writeFile(`${path}.lock.${randomUUID()}.tmp`, lockOf(DEAD_PID), { mode: 0o600 });
    const writing = `${path}.lock.${randomUUID()}.tmp`;
    await writeFile(writing, live, { mode: 0o600 });
    expect(await counter(path).update(addOne)).toEqual({ n: 1 });
    // A live process's temp stays: it is about to link it.
    expect((await readdir(join(path, '..'))).sort()).toEqual(['state.json', basename(writing)]);
  });

  it('held by a live process is waited for, and the update is done once it is released', async () => {
    const path = join(await tempDirForTest('gem-json-state-'), 'state.json');
    await writeFile(path, '{"n":5}\n');
    await writeFile(`${path}.lock`, lockOf(await liveProcess()), { mode: 0o600 });
    let done = false;
    const update = counter(path)
      .update(addOne)
      .finally(() => {
        done = true;
      });
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(done).toBe(false);
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({ n: 5 });
    await unlink(`${path}.lock`);
    expect(await update).toEqual({ n: 6 });
  });

  it('held by a live process for longer than the wait fails, naming the file and the pid', async () => {
    const path = join(await tempDirForTest('gem-json-state-'), 'state.json');
    const pid = await liveProcess();
    const lock = lockOf(pid);
    await writeFile(`${path}.lock`, lock, { mode: 0o600 });
    await expect(counter(path, 300).update(addOne)).rejects.toThrow(
      `${path} is being updated by process ${pid} (lock ${path}.lock) for more than 0.3 s: try again; if that process hangs, stop it`,
    );
    expect(existsSync(path)).toBe(false);
    expect(await readFile(`${path}.lock`, 'utf8')).toBe(lock);
  });

  it('with unreadable content (a maker mid-write, or killed) is waited for while young, then taken over', async () => {
    const path = join(await tempDirForTest('gem-json-state-'), 'state.json');
    await writeFile(`${path}.lock`, '', { mode: 0o600 });
    await expect(counter(path, 200).update(addOne)).rejects.toThrow(
      'is being updated by a process that has not written its pid',
    );
    const aMinuteAgo = new Date(Date.now() - 60_000);
    await utimes(`${path}.lock`, aMinuteAgo, aMinuteAgo);
    expect(await counter(path, 200).update(addOne)).toEqual({ n: 1 });
    expect(await readdir(join(path, '..'))).toEqual(['state.json']);
  });
});
