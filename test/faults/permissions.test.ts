/**
 * Files and folders the agent may not use, and its start on a full disk. The agent (service) started as
 * another user than the installation's refuses before writing anything, with the command that works; a
 * backups folder it cannot read is an error, not "no backups"; a folder it may not write to (root's,
 * immutable) is `permission_denied` with one sentence in jobs and answers, and deleting a backup there
 * says so too (not ENOTDIR); a start on a full disk names the file and says the disk is full. Real
 * agent processes (bundled agent/main.ts) run as root and as `nobody`, on a real cluster.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor, createdAtFromName } from '../../agent/backup/catalog';
import { userNamed } from '../../agent/system/passwd';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment, startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { type BuiltChildren, buildChildren } from './built-child';

let pg: TestPostgres;
let built: BuiltChildren<'main'>;
let root: string;
const children: ChildProcess[] = [];
const mounts: string[] = [];
const immutable: string[] = [];

beforeAll(async () => {
  if (process.getuid?.() !== 0)
    throw new Error(
      'this test gives files to user nobody and mounts a tmpfs: run the suite as root (as CI does)',
    );
  ({ pg, built } = await startAll({
    pg: startPostgres,
    built: () => buildChildren({ main: 'agent/main.ts' }),
  }));
  root = await mkdtemp(join(tmpdir(), 'gem-faults-perm-'));
  await chmod(root, 0o755);
});

afterAll(async () => {
  // Each agent leads its own process group: runuser's child (the agent) goes with it.
  for (const child of children) {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {}
  }
  for (const path of immutable) await runProcess('chattr', ['-i', path]);
  for (const path of mounts) await runProcess('umount', [path]);
  await pg?.stop();
  await built?.remove();
  if (root) await rm(root, { recursive: true, force: true });
});

const nobody = () => {
  const user = userNamed('nobody');
  if (!user) throw new Error('this test needs the system user nobody');
  return user;
};

interface Service {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

/** Starts the bundled agent/main.ts as `user` (root: as this process). */
function launch(env: NodeJS.ProcessEnv, user?: string): Service {
  const full: NodeJS.ProcessEnv = {
    ...env,
    PORT: '0',
    HOST: '127.0.0.1',
    NODE_ENV: 'test',
    GEM_AGENT_TOKEN: TEST_TOKEN,
  };
  const [cmd, args] = user
    ? ['runuser', ['-u', user, '--', process.execPath, built.paths.main]]
    : [process.execPath, [built.paths.main]];
  const child = spawn(cmd as string, args as string[], {
    cwd: '/',
    env: full,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  children.push(child);
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    output += chunk.toString('utf8');
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    output += chunk.toString('utf8');
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => output, exited };
}

/** Resolves the agent's URL once it listens; rejects if it exits first. */
function listening(service: Service): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const timer = setInterval(() => {
      const match = /is running at (http:\/\/\S+)/.exec(service.output());
      if (match) {
        clearInterval(timer);
        resolve(match[1]!);
      }
    }, 50);
    void service.exited.then((code) => {
      clearInterval(timer);
      reject(new Error(`the agent exited (${code}) before listening:\n${service.output()}`));
    });
  });
}

async function stopService(service: Service): Promise<void> {
  service.child.kill('SIGTERM');
  // runuser passes the signal on, and ends by it once the agent has exited.
  await service.exited;
  expect(service.output()).toContain('"msg":"stopped"');
}

async function api(url: string, method: string, path: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${url}api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
    ...(method === 'POST' ? { body: '{}' } : {}),
  });
  return { status: res.status, body: await res.json() };
}

/** Every path under `dir` with its owner's uid. */
async function owners(dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const name of await readdir(dir, { recursive: true })) out[name] = (await stat(join(dir, name))).uid;
  return out;
}

describe('the agent started as another user than the installation’s', () => {
  it('refuses before writing anything, naming the owner and the command that works; the owner starts it', async () => {
    const { uid, gid } = nobody();
    const { dataDir, env } = await seededEnvironment(pg, 'gem-faults-owner-');
    try {
      await runProcess('chown', ['-R', `${uid}:${gid}`, dataDir]);
      const before = await owners(dataDir);
      const asRoot = launch(env);
      expect(await asRoot.exited).toBe(1);
      expect(asRoot.output().trim()).toBe(
        `gem-backup agent failed to start: the installation in ${dataDir} belongs to user nobody and the agent runs as root: ` +
          `start it as user nobody, so that what it writes stays readable to the service: runuser -u nobody -- ${process.execPath} ${built.paths.main}`,
      );
      // Nothing written: no lock, no state file, nothing of root's.
      expect(await owners(dataDir)).toEqual(before);

      // The command it names works.
      const asOwner = launch(env, 'nobody');
      await listening(asOwner);
      await stopService(asOwner);
      expect(Object.values(await owners(dataDir)).every((owner) => owner === uid)).toBe(true);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);

  it("a keyring root made in the service user's data dir: the refusal also says how to give it back", async () => {
    const { uid, gid } = nobody();
    const { dataDir, env } = await seededEnvironment(pg, 'gem-faults-rootkeys-');
    try {
      // The data dir is nobody's; only the keyring is root's (a `sudo gem-backup keys import` by mistake).
      await runProcess('chown', ['-R', `${uid}:${gid}`, dataDir]);
      await runProcess('chown', ['0:0', join(dataDir, 'keyring.json')]);
      const before = await owners(dataDir);
      const service = launch(env, 'nobody');
      expect(await service.exited).toBe(1);
      expect(service.output().trim()).toContain(
        `the installation in ${dataDir} belongs to root and the agent runs as user nobody: start it as root`,
      );
      expect(service.output().trim()).toMatch(
        new RegExp(
          `; or, if root made it by mistake \\(a sudo gem-backup\\), give it back as root: chown -R nobody ${dataDir}$`,
        ),
      );
      expect(await owners(dataDir)).toEqual(before);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);

  it('a new data dir (no keyring yet) is made by whoever starts the agent', async () => {
    const dataDir = join(root, 'new-data');
    const service = launch({
      ...process.env,
      GEM_DATA_DIR: dataDir,
      DATABASE_URL: await pg.createDatabase(),
    });
    await listening(service);
    await stopService(service);
    expect((await stat(join(dataDir, 'keyring.json'))).uid).toBe(0);
  }, 60_000);
});

describe('a backups folder the agent cannot read', () => {
  it('is an error with one sentence in the list, health and pin, not "no backups"', async () => {
    const { uid, gid } = nobody();
    const { dataDir, env } = await seededEnvironment(pg, 'gem-faults-unreadable-');
    await runProcess('chown', ['-R', `${uid}:${gid}`, dataDir]);
    const service = launch(env, 'nobody');
    try {
      const url = await listening(service);
      const { body: started } = await api(url, 'POST', '/backups');
      const jobId = (started as { jobId: string }).jobId;
      let job: { state: string; result?: { backup: { filename: string } } };
      do {
        await new Promise((r) => setTimeout(r, 100));
        job = (await api(url, 'GET', `/jobs/${jobId}`)).body as typeof job;
      } while (job.state === 'queued' || job.state === 'running');
      expect(job.state).toBe('succeeded');
      const name = job.result!.backup.filename;

      const backups = join(dataDir, 'backups');
      await chown(backups, 0, 0);
      await chmod(backups, 0o700);
      const sentence = `the agent cannot read ${backups}: permission denied (EACCES); it must belong to the service's user nobody (chown -R nobody ${backups})`;
      expect(await api(url, 'GET', '/backups')).toEqual({
        status: 500,
        body: { error: { code: 'permission_denied', message: sentence } },
      });
      const health = (await api(url, 'GET', '/health')).body as {
        areas: { backups: { status: string; reason: string } };
      };
      expect(health.areas.backups).toEqual({
        status: 'failing',
        reason: `The backups check failed: ${sentence}`,
      });
      const pin = await api(url, 'POST', `/backups/${name}/pin`);
      expect(pin.status).toBe(500);
      expect((pin.body as { error: { code: string; message: string } }).error).toEqual({
        code: 'permission_denied',
        message: `the agent cannot read ${backups}: permission denied (EACCES); it must belong to the service's user nobody (chown -R nobody ${backups})`,
      });

      await chown(backups, uid, gid);
      const list = await api(url, 'GET', '/backups');
      expect((list.body as { filename: string }[]).map((b) => b.filename)).toEqual([name]);
      await stopService(service);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('a folder the agent may not write to (immutable)', () => {
  let t: TestAgent;
  let name: string;
  beforeAll(async () => {
    t = await startTestAgent(pg, { dataDir: await mkdtemp(join(root, 'immutable-')) });
    const res = await t.request('/api/v1/backups', { method: 'POST' });
    const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    name = (job.result as { backup: { filename: string } }).backup.filename;
  });
  afterAll(async () => {
    for (const path of immutable.splice(0)) await runProcess('chattr', ['-i', path]);
    await t?.close();
  });

  const chattr = async (path: string) => {
    const result = await runProcess('chattr', ['+i', path]);
    if (result.code !== 0) throw new Error(`chattr +i ${path} failed: ${result.stderr}`);
    immutable.push(path);
  };
  const release = async () => {
    for (const path of immutable.splice(0)) await runProcess('chattr', ['-i', path]);
  };
  const sentence = (folder: string) =>
    `the agent cannot write to ${folder}: operation not permitted (EPERM); it must belong to the service's user root (chown -R root ${folder}) and not be immutable (chattr -i)`;
  const expectDenied = async (res: Response, folder: string) => {
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(res.status, JSON.stringify(body)).toBe(500);
    expect(body.error).toEqual({ code: 'permission_denied', message: sentence(folder) });
  };

  it('a backup job, an upload and a delete say so in one sentence', async () => {
    const backups = t.agent.paths.backups;
    const bytes = await readFile(join(backups, name));
    await chattr(backups);
    try {
      const res = await t.request('/api/v1/backups', { method: 'POST' });
      const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
      expect(job.state).toBe('failed');
      expect(job.error).toEqual({ code: 'permission_denied', message: sentence(backups) });

      // Another name the upload check accepts for these bytes (a second after their header's time).
      const other = backupNameFor(new Date(Date.parse(createdAtFromName(name) ?? '') + 1000));
      await expectDenied(
        await t.request(`/api/v1/backups/upload?filename=${other}`, {
          method: 'POST',
          headers: { 'content-length': String(bytes.length) },
          body: bytes,
        }),
        backups,
      );
      await expectDenied(await t.request(`/api/v1/backups/${name}`, { method: 'DELETE' }), backups);
    } finally {
      await release();
    }
    expect((await t.request(`/api/v1/backups/${name}`, { method: 'DELETE' })).status).toBeLessThan(300);
  });

  it('pinning and the keys banner with the data dir immutable say so too', async () => {
    const res = await t.request('/api/v1/backups', { method: 'POST' });
    const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    name = (job.result as { backup: { filename: string } }).backup.filename;
    await chattr(t.dataDir);
    try {
      await expectDenied(await t.request(`/api/v1/backups/${name}/pin`, { method: 'POST' }), t.dataDir);
      await expectDenied(
        await t.request('/api/v1/keys/banner', {
          method: 'PUT',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ collapsed: true }),
        }),
        t.dataDir,
      );
    } finally {
      await release();
    }
  });
});

describe('the agent started on a full disk', () => {
  it('names the file it could not write and says the disk is full', async () => {
    const dataDir = join(root, 'full');
    await mkdir(dataDir);
    const mount = await runProcess('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dataDir]);
    if (mount.code !== 0) throw new Error(`mounting a tmpfs failed: ${mount.stderr.trim()}`);
    mounts.push(dataDir);
    const handle = await open(join(dataDir, 'filler'), 'a');
    try {
      for (;;) await handle.write(Buffer.alloc(64 * 1024));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
    } finally {
      await handle.close();
    }
    const service = launch({
      ...process.env,
      GEM_DATA_DIR: dataDir,
      DATABASE_URL: await pg.createDatabase(),
    });
    expect(await service.exited).toBe(1);
    expect(service.output().trim()).toBe(
      `gem-backup agent failed to start: the disk is full: the agent cannot write ${join(dataDir, 'agent.lock')}; free some space on it and start the agent again`,
    );
  }, 60_000);
});
