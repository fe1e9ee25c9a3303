// The embedded cluster used from another PID namespace (the agent in one container, a CLI command in
// another, on one data dir): a start here never runs a second server on the same files. Real processes in
// new namespaces (unshare): the server in its own PID and IPC namespaces, as in a container, where neither
// pg_ctl nor PostgreSQL's own lock file check can see it; the user's lock file held by
// test/system/pid-namespace-child.ts (`hold`), bundled by the build itself.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { type ClusterHandle, startCluster } from '../../agent/db/cluster';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { withSql } from '../services/postgres';
import { until } from '../services/wait';

const binDir = findPgBinDir(process.env.GEM_PG_BIN);
let root: string;
let built: BuiltChildren<'child'>;
const children: ChildProcess[] = [];
const clusters: ClusterHandle[] = [];

beforeAll(async () => {
  // Never skipped: without namespaces this case is not tested at all.
  const probe = spawnSync('unshare', ['-p', '-i', '-f', '--mount-proc', 'true'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0)
    throw new Error(
      `this test needs 'unshare -p -i -f --mount-proc' (util-linux) run as root: ${probe.error?.message ?? probe.stderr.trim()}`,
    );
  root = await mkdtemp(join(tmpdir(), 'gem-cluster-ns-'));
  await chmod(root, 0o755);
  built = await buildChildren({ child: 'test/system/pid-namespace-child.ts' });
});
afterAll(async () => {
  for (const cluster of clusters) await cluster.stop().catch(() => {});
  for (const child of children) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    // Its namespace's pid 1 ignores other signals; killed, it takes the namespace's processes with it.
    const first = readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim();
    if (first) process.kill(Number(first.split(' ')[0]), 'SIGKILL');
    else child.kill('SIGKILL');
    await exited;
  }
  if (root) await rm(root, { recursive: true, force: true });
  await built?.remove();
});

/** Runs `command` in new PID and IPC namespaces, as a container runs it; ends with it. */
function inContainer(command: string[]): ChildProcess {
  const child = spawn('unshare', ['-p', '-i', '-f', '--mount-proc', ...command], {
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  children.push(child);
  return child;
}

describe('the embedded cluster used from another PID namespace', () => {
  it('a start (or restart) here is refused while a process there uses it: no second server, its settings unchanged', async () => {
    const dir = join(root, 'data', 'postgres');
    const made = await startCluster({ dir, binDir });
    clusters.push(made);
    await made.stop();
    const url = made.url('postgres');
    const settings = await readFile(join(dir, 'gem-cluster.conf'), 'utf8');

    // The other container's server, and its process using the cluster (its lock file beside it).
    const server = ['runuser', '-u', 'postgres', '--', join(binDir, 'postgres'), '-D', dir];
    inContainer(process.getuid?.() === 0 ? server : server.slice(4));
    await until(
      () =>
        withSql(url, (sql) => sql`select 1`).then(
          () => true,
          () => false,
        ),
      'the server in the other namespace',
    );
    const pidFile = await readFile(join(dir, 'postmaster.pid'), 'utf8');
    const holder = inContainer([
      process.execPath,
      built.paths.child,
      'hold',
      `${dir}.users/1-0123456789ab`,
      '1000',
    ]);
    await new Promise((resolve) => holder.stdout?.once('data', resolve));

    await expect(startCluster({ dir, binDir })).rejects.toThrow(
      /in use by process 1 of another PID namespace \(another container\)/,
    );
    // Nor does a handle's restart (the service's database watch) start one.
    await expect(made.restart()).rejects.toThrow(/in use by process 1 of another PID namespace/);
    expect(await readFile(join(dir, 'postmaster.pid'), 'utf8')).toBe(pidFile);
    expect(await readFile(join(dir, 'gem-cluster.conf'), 'utf8')).toBe(settings);
    await withSql(url, (sql) => sql`select 1`);
  });
});
