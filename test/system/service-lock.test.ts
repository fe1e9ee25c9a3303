/**
 * One agent service per data dir (agent/system/service-lock.ts, wired in agent/main.ts): a second one is
 * refused before it touches the embedded cluster the first one serves; a lock left by a killed agent is
 * taken over; an agent stops the cluster it started or adopted, and a cluster already down is a clean stop.
 * Real agent processes on a real embedded cluster: agent/main.ts bundled once for the file by the build
 * itself (test/faults/built-child.ts), as `npm start` runs it from dist/, each starting in ~0.5 s
 * instead of 1.3-2.3 s through tsx's loader; the file starts six.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { asClusterOwner } from '../../agent/db/cluster';
import { serviceLockPath } from '../../agent/system/service-lock';
import { runProcess } from '../../agent/system/spawn';
import { type BuiltChildren, buildChildren } from '../faults/built-child';

const binDir = findPgBinDir(process.env.GEM_PG_BIN);
let root: string;
let dataDir: string;
let built: BuiltChildren<'main'>;
const children: ChildProcess[] = [];

beforeAll(async () => {
  built = await buildChildren({ main: 'agent/main.ts' });
  root = await mkdtemp(join(tmpdir(), 'gem-service-lock-'));
  // As root the cluster runs as postgres, which must reach it.
  await chmod(root, 0o755);
  dataDir = join(root, 'data');
});
afterAll(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  if (dataDir && (await clusterUp())) await pgCtl('stop', '-m', 'immediate', '-w');
  if (root) await rm(root, { recursive: true, force: true });
  await built?.remove();
});

function pgCtl(...args: string[]) {
  const [cmd, argv] = asClusterOwner(join(binDir, 'pg_ctl'), [...args, '-D', join(dataDir, 'postgres')]);
  return runProcess(cmd, argv, { cwd: '/' });
}

async function clusterUp(): Promise<boolean> {
  return (await pgCtl('status')).code === 0;
}

interface Service {
  child: ChildProcess;
  /** stdout and stderr together so far. */
  output(): string;
  exited: Promise<number | null>;
}

/** Starts the bundled agent/main.ts as `npm start` does, on the embedded cluster of the shared data dir. */
function launch(port = '0'): Service {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    GEM_DATA_DIR: dataDir,
    GEM_PG_BIN: binDir,
    PORT: port,
    HOST: '127.0.0.1',
    NODE_ENV: 'test',
  };
  delete env.DATABASE_URL;
  delete env.GEM_AGENT_TOKEN;
  const child = spawn(process.execPath, [built.paths.main], {
    cwd: process.cwd(),
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
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

/** Starts an agent and waits until it listens; returns it and its URL. */
async function startService(): Promise<Service & { url: string }> {
  const service = launch();
  const url = await new Promise<string>((resolve, reject) => {
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
  return { ...service, url };
}

async function stopService(service: Service, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  service.child.kill(signal);
  return service.exited;
}

async function api(url: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const token = (await readFile(join(dataDir, 'agent-token'), 'utf8')).trim();
  const res = await fetch(`${url}api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = (await res.json()) as unknown;
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(answer)}`);
  return answer;
}

/** A backup through the agent at `url`, to the end: it needs the database the agent serves. */
async function backupThrough(url: string, label: string): Promise<void> {
  const { jobId } = (await api(url, 'POST', '/backups', { label })) as { jobId: string };
  for (;;) {
    const job = (await api(url, 'GET', `/jobs/${jobId}`)) as { state: string; error?: unknown };
    if (job.state === 'succeeded') break;
    if (job.state !== 'queued' && job.state !== 'running')
      throw new Error(`backup ${job.state}: ${JSON.stringify(job.error)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const list = (await api(url, 'GET', '/backups')) as { label?: string }[];
  expect(list.some((b) => b.label === label)).toBe(true);
}

describe('one agent service per data dir', () => {
  it('a second agent (another port, or the same) is refused with one line and exit 1; the first keeps its database', async () => {
    const first = await startService();
    expect(first.output()).toContain('embedded PostgreSQL started');
    const port = new URL(first.url).port;
    const refusal = `gem-backup agent failed to start: another agent (pid ${first.child.pid}) already serves ${dataDir}; stop it first`;
    for (const second of [launch('0'), launch(port)]) {
      expect(await second.exited).toBe(1);
      // Nothing else: no cluster adopted or stopped, no recovery step.
      expect(second.output().trim()).toBe(refusal);
    }
    expect(await clusterUp()).toBe(true);
    await backupThrough(first.url, 'after-second-agent');
    // The first one started the cluster: it stops it, and leaves no lock behind.
    expect(await stopService(first)).toBe(0);
    expect(first.output()).toContain('embedded PostgreSQL stopped');
    expect(await clusterUp()).toBe(false);
    expect(existsSync(serviceLockPath(dataDir))).toBe(false);
  }, 180_000);

  it('the lock of a killed agent is taken over; the agent that adopted its cluster stops it at exit', async () => {
    const killed = await startService();
    expect(await stopService(killed, 'SIGKILL')).toBe(null);
    const left = JSON.parse(await readFile(serviceLockPath(dataDir), 'utf8')) as { pid: number };
    expect(left.pid).toBe(killed.child.pid);
    expect(await clusterUp()).toBe(true);

    const next = await startService();
    expect(next.output()).toContain('embedded PostgreSQL already running');
    const taken = JSON.parse(await readFile(serviceLockPath(dataDir), 'utf8')) as { pid: number };
    expect(taken.pid).toBe(next.child.pid);
    await backupThrough(next.url, 'after-takeover');
    // Adopted, not started by it: still the agent's, stopped at its exit (nobody else uses it).
    expect(await stopService(next, 'SIGINT')).toBe(0);
    expect(next.output()).toContain('embedded PostgreSQL stopped');
    expect(await clusterUp()).toBe(false);
  }, 180_000);

  it('an agent whose cluster is already down at exit stops cleanly (exit 0)', async () => {
    const service = await startService();
    expect(service.output()).toContain('embedded PostgreSQL started');
    expect((await pgCtl('stop', '-m', 'fast', '-w')).code).toBe(0);
    expect(await stopService(service)).toBe(0);
    expect(service.output()).toContain('embedded PostgreSQL was already stopped');
    expect(service.output()).not.toContain('"fatal"');
  }, 180_000);
});
