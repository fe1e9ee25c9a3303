// Power-cut safety, checked at the system calls: every file or folder the agent renames into place
// was fsynced under its temp name before the rename, and the folder it was renamed into is fsynced
// after it. The CLI and the service run under strace, so this holds for the whole process (its libuv
// threads too), not only for the code paths a test wrapper can see. Both run as the build makes them
// (scripts/build.mjs: what the package bin and `npm start` run once built), bundled once for the file
// (test/faults/built-child.ts), and strace stops them only at the calls it traces (--seccomp-bpf): the
// six commands and the service took 2-3 s each under the tracer through tsx's loader, now under 1 s.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PREVIOUS_FOLDER_MARK } from '../../agent/restore/swap';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { type BuiltChildren, buildChildren } from './built-child';

let pg: TestPostgres;
let built: BuiltChildren<'cli' | 'main'>;
let dataDir: string;
let traceDir: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  const probe = await runProcess('strace', ['-V']).catch(() => undefined);
  if (probe?.code !== 0)
    throw new Error('strace is missing: apt-get install -y strace (scripts/setup.sh does)');
  ({ pg, built } = await startAll({
    pg: startPostgres,
    built: () => buildChildren({ cli: 'agent/cli.ts', main: 'agent/main.ts' }),
  }));
  // By its real path: strace -y names an fsynced file by its real path, a rename by the path given.
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-durable-'));
  env.GEM_KEYS_PASSPHRASE = 'long enough passphrase';
  traceDir = await mkdtemp(join(tmpdir(), 'gem-durable-trace-'));
});
afterAll(async () => {
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
  if (traceDir) await rm(traceDir, { recursive: true, force: true });
});

/**
 * One completed system call of the trace, in the order they completed. A file that must never replace
 * another (a backup, an upload) is published by a hard link from its temp name instead of a rename: the
 * same rules hold for both.
 */
type Call = { name: 'fsync' | 'mkdir'; path: string } | { name: 'rename' | 'link'; from: string; to: string };

let traces = 0;
// --seccomp-bpf: the traced processes stop at the calls traced, not at every system call (-f follows them all).
const STRACE = [
  '-f',
  '--seccomp-bpf',
  '-qq',
  '-y',
  '-s',
  '4096',
  '-e',
  'trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat,mkdir,mkdirat',
];

/** Runs the CLI under strace; returns its result and the fsyncs and renames it made, in order. */
async function tracedCli(
  ...args: string[]
): Promise<{ code: number | null; stdout: string; stderr: string; calls: Call[] }> {
  return tracedCliIn(env, ...args);
}

/** tracedCli with its own environment. */
async function tracedCliIn(
  env: NodeJS.ProcessEnv,
  ...args: string[]
): Promise<{ code: number | null; stdout: string; stderr: string; calls: Call[] }> {
  const out = join(traceDir, `trace-${++traces}`);
  const res = await runProcess('strace', [...STRACE, '-o', out, process.execPath, built.paths.cli, ...args], {
    env,
    cwd: process.cwd(),
  });
  return { ...res, calls: parseTrace(await readFile(out, 'utf8')) };
}

/** Reads strace -f -y output: a call split by another thread counts when it completes (its "resumed" line). */
function parseTrace(text: string): Call[] {
  const calls: Call[] = [];
  const pending = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const pid = /^(\d+)\s+/.exec(raw)?.[1] ?? '';
    let line = raw.replace(/^\d+\s+/, '');
    const unfinished = /^(.*) <unfinished \.\.\.>$/.exec(line);
    if (unfinished) {
      pending.set(pid, unfinished[1]!);
      continue;
    }
    const resumed = /^<\.\.\. \w+ resumed>(.*)$/.exec(line);
    if (resumed) {
      line = (pending.get(pid) ?? '') + resumed[1];
      pending.delete(pid);
    }
    if (!/\)\s+= 0$/.test(line)) continue; // failed calls change nothing (strace pads short calls to a column)
    const sync = /^f(?:data)?sync\(\d+<(.*)>\)/.exec(line);
    if (sync) {
      calls.push({ name: 'fsync', path: sync[1]! });
      continue;
    }
    const made =
      /^mkdir\("((?:[^"\\]|\\.)*)"/.exec(line) ?? /^mkdirat\(AT_FDCWD, "((?:[^"\\]|\\.)*)"/.exec(line);
    if (made) {
      calls.push({ name: 'mkdir', path: made[1]! });
      continue;
    }
    if (/^mkdir/.test(line)) throw new Error(`a mkdir this test cannot read: ${line}`);
    const rename =
      /^rename\("((?:[^"\\]|\\.)*)", "((?:[^"\\]|\\.)*)"/.exec(line) ??
      /^renameat2?\(AT_FDCWD, "((?:[^"\\]|\\.)*)", AT_FDCWD, "((?:[^"\\]|\\.)*)"/.exec(line);
    if (rename) calls.push({ name: 'rename', from: rename[1]!, to: rename[2]! });
    else if (/^rename/.test(line)) throw new Error(`a rename this test cannot read: ${line}`);
    const link =
      /^link\("((?:[^"\\]|\\.)*)", "((?:[^"\\]|\\.)*)"/.exec(line) ??
      /^linkat\(AT_FDCWD, "((?:[^"\\]|\\.)*)", AT_FDCWD, "((?:[^"\\]|\\.)*)"/.exec(line);
    if (link) calls.push({ name: 'link', from: link[1]!, to: link[2]! });
    else if (/^link/.test(line)) throw new Error(`a link this test cannot read: ${line}`);
  }
  return calls;
}

/**
 * Every rename (or link, but a lock's) into `under`: the renamed path fsynced before it (under its old name), and the folder
 * it went into fsynced after it. A live folder moved aside (to its previous name) is exempt from the
 * first: its content is already on disk, and the rename only gives up its name. A folder it went into
 * (or one above it) that this process made: its own parent fsynced between the mkdir and the rename,
 * or the folder, and the file in it, could be gone after a power cut. Returns the broken ones, described.
 */
function unsafeRenames(calls: Call[], under: string): string[] {
  const broken: string[] = [];
  calls.forEach((call, at) => {
    if (!('to' in call) || !call.to.startsWith(`${under}/`)) return;
    // A lock is taken by a hard link (agent/jobs/lock.ts): it holds nothing a crash must keep.
    if (call.name === 'link' && call.to.endsWith('.lock')) return;
    const before = calls.slice(0, at);
    const after = calls.slice(at + 1);
    const movedAside = call.to.includes(PREVIOUS_FOLDER_MARK);
    if (!movedAside && !before.some((c) => c.name === 'fsync' && c.path === call.from))
      broken.push(`${call.from} -> ${call.to}: not fsynced before the rename`);
    if (!after.some((c) => c.name === 'fsync' && c.path === dirname(call.to)))
      broken.push(`${call.from} -> ${call.to}: its folder not fsynced after the rename`);
    before.forEach((made, madeAt) => {
      if (made.name !== 'mkdir' || !call.to.startsWith(`${made.path}/`)) return;
      const parentSynced = calls
        .slice(madeAt + 1, at)
        .some((c) => c.name === 'fsync' && c.path === dirname(made.path));
      if (!parentSynced)
        broken.push(
          `${call.from} -> ${call.to}: the folder ${made.path} made for it, its parent not fsynced`,
        );
    });
  });
  return broken;
}

describe('durability at the system calls', () => {
  it('a backup, its verify and its restore fsync what they rename, and the folder after', async () => {
    const created = await tracedCli('create', '--label', 'durable');
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    // The backup is linked into place (it never replaces a file of its name), not renamed.
    expect(created.calls.some((c) => c.name === 'link' && /gem-backup-.*\.tar\.gz$/.test(c.to))).toBe(true);
    expect(unsafeRenames(created.calls, dataDir)).toEqual([]);
    const name = /created (gem-backup-\S+\.tar\.gz)/.exec(created.stdout)?.[1];
    const verified = await tracedCli('verify', name!);
    expect(verified.code).toBe(0);
    expect(unsafeRenames(verified.calls, dataDir)).toEqual([]);

    const restored = await tracedCli('restore', name!, '--yes');
    // Nothing but the reminder that GEM still needs a restart (no GEM_RESTART_COMMAND here).
    expect(restored.stderr).toMatch(/^warning: the data is restored, but GEM was not restarted: [^\n]*\n?$/);
    expect(restored.code).toBe(0);
    const moved = restored.calls.flatMap((c) => (c.name === 'rename' ? [c.to] : []));
    // The two folders swapped in, the journal written at each step: all checked below.
    expect(moved).toEqual(expect.arrayContaining([join(dataDir, 'scripts'), join(dataDir, 'config')]));
    expect(moved.filter((to) => to === join(dataDir, 'restore-journal.json')).length).toBeGreaterThan(2);
    expect(unsafeRenames(restored.calls, dataDir)).toEqual([]);
  });

  it('a keys export and import fsync what they rename, and the folder after', async () => {
    const out = join(dataDir, 'exported-keys.json');
    const exported = await tracedCli('keys', 'export', '-o', out);
    expect(exported.code).toBe(0);
    // Without --force the export never replaces a file: published by a hard link, under the same rules.
    expect(exported.calls).toContainEqual(expect.objectContaining({ name: 'link', to: out }));
    expect(unsafeRenames(exported.calls, dataDir)).toEqual([]);

    const imported = await tracedCli('keys', 'import', out);
    expect(imported.code).toBe(0);
    expect(imported.calls).toContainEqual(
      expect.objectContaining({ name: 'rename', to: join(dataDir, 'keyring.json') }),
    );
    expect(unsafeRenames(imported.calls, dataDir)).toEqual([]);
  });
});

/**
 * Runs the agent service (agent/main.ts, its own process) under strace, calls `whileUp` with its URL
 * and admin token, then stops it with SIGINT; returns what it fsynced and renamed.
 */
async function tracedAgent(
  whileUp: (api: (method: string, path: string, body?: unknown) => Promise<unknown>) => Promise<void>,
  agentDataDir = dataDir,
) {
  const out = join(traceDir, `trace-${++traces}`);
  const tracer = spawn('strace', [...STRACE, '-o', out, process.execPath, built.paths.main], {
    cwd: process.cwd(),
    env: { ...env, GEM_DATA_DIR: agentDataDir, PORT: '0', HOST: '127.0.0.1', NODE_ENV: 'test' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const exited = new Promise<number | null>((resolve) => tracer.once('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString('utf8');
      const match = /is running at (http:\/\/\S+)/.exec(output);
      if (match) resolve(match[1]!);
    };
    tracer.stdout.on('data', onData);
    tracer.stderr.on('data', onData);
    void exited.then((code) => reject(new Error(`the agent exited (${code}) before listening:\n${output}`)));
  });
  const token = (await readFile(join(agentDataDir, 'agent-token'), 'utf8')).trim();
  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${url}api/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const answer = await res.json();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(answer)}`);
    return answer;
  };
  try {
    await whileUp(api);
  } finally {
    // strace blocks SIGINT while it runs a program (-o FILE PROG): the agent itself is told to stop.
    const agentPid = (await runProcess('pgrep', ['-P', String(tracer.pid)])).stdout.trim();
    process.kill(Number(agentPid), 'SIGINT');
  }
  expect(await exited).toBe(0);
  return parseTrace(await readFile(out, 'utf8'));
}

describe('durability of the service at the system calls', () => {
  it('settings, a backup, a pin, the keys banner and a verification run fsync what they rename', async () => {
    const calls = await tracedAgent(async (api) => {
      await api('PUT', '/settings', {
        autoBackup: { enabled: true, schedule: 'daily', maxBackups: 5 },
        maintenance: { enabled: true, retentionDays: 60 },
      });
      const waitFor = async (answer: unknown) => {
        const { jobId } = answer as { jobId: string };
        for (;;) {
          const job = (await api('GET', `/jobs/${jobId}`)) as { state: string };
          if (job.state === 'succeeded') return;
          if (job.state !== 'queued' && job.state !== 'running') throw new Error(`job ${jobId} ${job.state}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      };
      await waitFor(await api('POST', '/backups', { label: 'traced' }));
      const list = (await api('GET', '/backups')) as { filename: string; label?: string }[];
      const made = list.find((b) => b.label === 'traced');
      await api('POST', `/backups/${made?.filename}/pin`);
      await api('PUT', '/keys/banner', { collapsed: true });
      await waitFor(await api('POST', '/health/verification/run'));
    });
    const written = calls.flatMap((c) => ('to' in c ? [c.to] : []));
    // The backup (linked into place), its records (made, then pinned), the key state (the banner), the verification's state.
    expect(written.some((to) => /\/backups\/gem-backup-.*\.tar\.gz$/.test(to))).toBe(true);
    for (const file of ['backup-records.json', 'state.json', 'verification-state.json'])
      expect(written).toContain(join(dataDir, file));
    expect(unsafeRenames(calls, dataDir)).toEqual([]);
  });

  it('a first start on a data dir not made yet names each folder it made durably before writing in it', async () => {
    const fresh = join(dataDir, 'fresh', 'data');
    const calls = await tracedAgent(async (api) => {
      await api('GET', '/backups');
    }, fresh);
    expect(calls).toContainEqual({ name: 'mkdir', path: fresh });
    expect(calls).toContainEqual(expect.objectContaining({ to: join(fresh, 'keyring.json') }));
    expect(unsafeRenames(calls, dataDir)).toEqual([]);
  });
});

describe('parseTrace', () => {
  it('reads fsyncs, mkdirs and renames, joins calls split by another thread, and drops failed ones', () => {
    const calls = parseTrace(
      [
        '101   fsync(21</d/.tmp-x>) = 0',
        '102   renameat2(AT_FDCWD, "/d/.tmp-y", AT_FDCWD, "/d/y", RENAME_NOREPLACE <unfinished ...>',
        '101   rename("/d/.tmp-x", "/d/x") = 0',
        '102   <... renameat2 resumed>) = 0',
        '101   fdatasync(22</d>)                     = 0',
        '101   mkdir("/d/n", 0700)                    = 0',
        '101   mkdirat(AT_FDCWD, "/d/x", 0755) = -1 EEXIST (File exists)',
        '101   fsync(23</d/n/.tmp-w>) = 0',
        '101   rename("/d/n/.tmp-w", "/d/n/w") = 0',
        '101   fsync(24</d/n>) = 0',
        '101   mkdirat(AT_FDCWD, "/d/m", 0700) = 0',
        '101   fsync(25</d>) = 0',
        '101   fsync(26</d/m/.tmp-v>) = 0',
        '101   rename("/d/m/.tmp-v", "/d/m/v") = 0',
        '101   fsync(27</d/m>) = 0',
        '103   link("/d/.tmp-z", "/d/z") = 0',
        '101   rename("/d/a", "/d/b") = -1 ENOENT (No such file or directory)',
      ].join('\n'),
    );
    expect(calls).toEqual([
      { name: 'fsync', path: '/d/.tmp-x' },
      { name: 'rename', from: '/d/.tmp-x', to: '/d/x' },
      { name: 'rename', from: '/d/.tmp-y', to: '/d/y' },
      { name: 'fsync', path: '/d' },
      { name: 'mkdir', path: '/d/n' },
      { name: 'fsync', path: '/d/n/.tmp-w' },
      { name: 'rename', from: '/d/n/.tmp-w', to: '/d/n/w' },
      { name: 'fsync', path: '/d/n' },
      { name: 'mkdir', path: '/d/m' },
      { name: 'fsync', path: '/d' },
      { name: 'fsync', path: '/d/m/.tmp-v' },
      { name: 'rename', from: '/d/m/.tmp-v', to: '/d/m/v' },
      { name: 'fsync', path: '/d/m' },
      { name: 'link', from: '/d/.tmp-z', to: '/d/z' },
    ]);
    expect(unsafeRenames(calls, '/d')).toEqual([
      '/d/.tmp-y -> /d/y: not fsynced before the rename',
      '/d/n/.tmp-w -> /d/n/w: the folder /d/n made for it, its parent not fsynced',
      '/d/.tmp-z -> /d/z: not fsynced before the rename',
      '/d/.tmp-z -> /d/z: its folder not fsynced after the rename',
    ]);
  });
});
