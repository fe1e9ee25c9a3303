/**
 * Who stops the embedded cluster: every process using it is registered beside it; an owner (the
 * agent, or the process that started it) leaves it running while another live one uses it, and the
 * last of them stops it; a process that found it running, and was left nothing, leaves it running;
 * a killed user does not hold it. A real cluster, handles in this process and a real child process.
 */
import type { ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { asClusterOwner, startCluster } from '../../agent/db/cluster';
import { createLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { agentModule, holderProcess } from './holder-process';

const binDir = findPgBinDir(process.env.GEM_PG_BIN);
let root: string | undefined;
let dir = '';
const children: ChildProcess[] = [];

afterAll(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  if (dir && (await up())) await pgCtl('stop', '-m', 'immediate', '-w');
  if (root) await rm(root, { recursive: true, force: true });
});

function pgCtl(...args: string[]) {
  const [cmd, argv] = asClusterOwner(join(binDir, 'pg_ctl'), [...args, '-D', dir]);
  return runProcess(cmd, argv, { cwd: '/' });
}

const up = async () => (await pgCtl('status')).code === 0;

/** Another process using the cluster (it opens it as a CLI command does), until it is killed. */
const otherProcessUsing = () =>
  holderProcess(
    `import { startCluster } from ${agentModule('db', 'cluster.ts')};
await startCluster({ dir: ${JSON.stringify(dir)}, binDir: ${JSON.stringify(binDir)} });`,
    children,
  );

describe('the users of the embedded cluster', () => {
  it('the last user stops what an owner left to it; one that found it running leaves it; a killed user holds nothing', async () => {
    root = await mkdtemp(join(tmpdir(), 'gem-cluster-users-'));
    await chmod(root, 0o755);
    const dataDir = join(root, 'data');
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    dir = join(dataDir, 'postgres');
    const messages: string[] = [];
    const log = createLogger({ write: (line) => messages.push(line) });

    // The starter stops while another handle (a CLI command) still uses it: left to that one,
    // which found it running but is now the last user: it stops it.
    const starter = await startCluster({ dir, binDir, log });
    expect(starter.startedHere).toBe(true);
    const user = await startCluster({ dir, binDir, log });
    expect(user.startedHere).toBe(false);
    await starter.stop();
    expect(await up()).toBe(true);
    expect(messages.join('\n')).toContain('embedded PostgreSQL left running: other processes use it');
    await user.release();
    expect(await up()).toBe(false);

    // One that found it running (started by another process, still its owner) leaves it running.
    const owner = await startCluster({ dir, binDir, log });
    const found = await startCluster({ dir, binDir, log });
    await found.release();
    expect(await up()).toBe(true);

    // Another process using it keeps it running at the owner's stop; once killed, it holds nothing.
    const other = await otherProcessUsing();
    await owner.stop();
    expect(await up()).toBe(true);
    other.kill('SIGKILL');
    await new Promise((resolve) => other.once('exit', resolve));
    const adopter = await startCluster({ dir, binDir, log });
    expect(adopter.startedHere).toBe(false);
    await adopter.stop();
    expect(await up()).toBe(false);
  }, 120_000);
});
