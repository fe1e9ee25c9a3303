/**
 * Stopping the embedded cluster: a CLI command that started it leaves it running while an agent
 * process serves the data dir (its service lock); a cluster already down is a clean stop.
 * A real cluster and a real process holding the service lock.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { asClusterOwner, startCluster } from '../../agent/db/cluster';
import { createLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { withSql } from '../services/postgres';
import { agentModule, holderProcess } from './holder-process';

const binDir = findPgBinDir(process.env.GEM_PG_BIN);
const roots: string[] = [];
const children: ChildProcess[] = [];
const clusterDirs: string[] = [];

afterAll(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const dir of clusterDirs) await pgCtl(dir, 'stop', '-m', 'immediate', '-w');
  for (const root of roots) await rm(root, { recursive: true, force: true });
});

function pgCtl(dir: string, ...args: string[]) {
  const [cmd, argv] = asClusterOwner(join(binDir, 'pg_ctl'), [...args, '-D', dir]);
  return runProcess(cmd, argv, { cwd: '/' });
}

/** Another process holding the agent's service lock on `dataDir`, as a running agent does. */
const holdServiceLock = (dataDir: string) =>
  holderProcess(
    `import { acquireServiceLock } from ${agentModule('system', 'service-lock.ts')};
await acquireServiceLock(${JSON.stringify(dataDir)});`,
    children,
  );

describe('stopping the embedded cluster', () => {
  it('leaves it running while an agent serves the data dir; stops it once that agent is gone; already down is clean', async () => {
    const root = await mkdtemp(join(tmpdir(), 'gem-cluster-stop-'));
    roots.push(root);
    await chmod(root, 0o755);
    const dataDir = join(root, 'data');
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const messages: string[] = [];
    const log = createLogger({ write: (line) => messages.push(line) });
    const dir = join(dataDir, 'postgres');
    clusterDirs.push(dir);
    // As a CLI command does while no agent runs: it starts the cluster, and would stop it at its end.
    const cluster = await startCluster({ dir, binDir, log });
    expect(cluster.startedHere).toBe(true);

    // An agent started meanwhile and adopted it: the command's end leaves it running.
    const agent = await holdServiceLock(dataDir);
    await cluster.stop();
    expect((await pgCtl(dir, 'status')).code).toBe(0);
    expect(messages.join('\n')).toContain('embedded PostgreSQL left running: the agent uses it');

    // That agent was killed: nobody serves the data dir, the cluster is stopped.
    agent.kill('SIGKILL');
    await new Promise((resolve) => agent.once('exit', resolve));
    await cluster.stop();
    expect((await pgCtl(dir, 'status')).code).not.toBe(0);
    expect(messages.join('\n')).toContain('embedded PostgreSQL stopped');

    // Already down (stopped by hand, or it crashed): a clean stop, not an error.
    await expect(cluster.stop()).resolves.toBeUndefined();
    expect(messages.join('\n')).toContain('embedded PostgreSQL was already stopped');
  }, 120_000);

  it('one adopted (already running) counts as started here once restart() had to start it again', async () => {
    const root = await mkdtemp(join(tmpdir(), 'gem-cluster-adopt-'));
    roots.push(root);
    await chmod(root, 0o755);
    const dataDir = join(root, 'data');
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const dir = join(dataDir, 'postgres');
    clusterDirs.push(dir);
    // Started by a process that was then killed (an agent): the cluster keeps running.
    const killed = await holderProcess(
      `import { startCluster } from ${agentModule('db', 'cluster.ts')};
await startCluster({ dir: ${JSON.stringify(dir)}, binDir: ${JSON.stringify(binDir)} });`,
      children,
    );
    killed.kill('SIGKILL');
    await new Promise((resolve) => killed.once('exit', resolve));
    // The next process finds it running: not started here (a CLI command's release leaves it running).
    const adopted = await startCluster({ dir, binDir });
    expect(adopted.startedHere).toBe(false);
    expect(await adopted.restart()).toBe(false);
    expect(adopted.startedHere).toBe(false);
    // Stopped by hand; the agent's database watch starts it again: now started here, stopped with it.
    expect((await pgCtl(dir, 'stop', '-m', 'fast', '-w')).code).toBe(0);
    expect(await adopted.restart()).toBe(true);
    expect(adopted.startedHere).toBe(true);
    await adopted.stop();
    expect((await pgCtl(dir, 'status')).code).not.toBe(0);
  }, 120_000);

  it('a postmaster.pid a power cut left, its pid now another process of the owner, is started over, that process untouched', async () => {
    const root = await mkdtemp(join(tmpdir(), 'gem-cluster-stale-'));
    roots.push(root);
    await chmod(root, 0o755);
    const dir = join(root, 'data', 'postgres');
    clusterDirs.push(dir);
    const first = await startCluster({ dir, binDir });
    const pidFile = await readFile(join(dir, 'postmaster.pid'), 'utf8');
    await first.stop();
    // After the reboot the server's pid names another process of the cluster's owner (a system
    // PostgreSQL's, say): pg_ctl alone takes it for the server, and `pg_ctl stop` would signal it.
    const [cmd, argv] = asClusterOwner('sleep', ['600']);
    const other = spawn(cmd, argv, { stdio: 'ignore' });
    children.push(other);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const otherPid =
      cmd === 'sleep'
        ? other.pid!
        : Number(readFileSync(`/proc/${other.pid}/task/${other.pid}/children`, 'utf8').trim().split(' ')[0]);
    await writeFile(join(dir, 'postmaster.pid'), pidFile.replace(/^\d+/, String(otherPid)));

    try {
      const cluster = await startCluster({ dir, binDir });
      expect(cluster.startedHere).toBe(true);
      await withSql(cluster.url('postgres'), (sql) => sql`select 1`);
      await cluster.stop();
      expect((await pgCtl(dir, 'status')).code).not.toBe(0);
      // The other process was never signalled.
      expect(() => process.kill(otherPid, 0)).not.toThrow();
      expect(other.exitCode).toBe(null);
    } finally {
      process.kill(otherPid, 'SIGKILL');
    }
  }, 120_000);
});
