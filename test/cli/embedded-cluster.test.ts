/**
 * A CLI command on the embedded defaults (no DATABASE_URL) while the service is down: the command
 * that started the cluster stops it when it ends, also after an error or a Ctrl-C; one that found it
 * running (started by hand, or another process uses it) leaves it running. The built CLI on one real
 * embedded cluster.
 */
import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { asClusterOwner, startCluster } from '../../agent/db/cluster';
import { Keyring } from '../../agent/keys/keyring';
import { runProcess } from '../../agent/system/spawn';
import { within } from '../services/wait';
import { type BuiltCli, buildCli } from './built-cli';

const binDir = findPgBinDir(process.env.GEM_PG_BIN);
let root: string;
let dataDir: string;
let env: NodeJS.ProcessEnv;
let built: BuiltCli;

beforeAll(async () => {
  built = await buildCli();
  root = await mkdtemp(join(tmpdir(), 'gem-cli-embedded-'));
  // As root the cluster runs as postgres, which must reach it.
  await chmod(root, 0o755);
  dataDir = join(root, 'data');
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await Keyring.loadOrCreate(join(dataDir, 'keyring.json'));
  const { DATABASE_URL: _url, GEM_KEYS_PASSPHRASE: _passphrase, ...inherited } = process.env;
  env = { ...inherited, GEM_DATA_DIR: dataDir, GEM_PG_BIN: binDir };
});
afterAll(async () => {
  if (dataDir && (await up())) await pgCtl('stop', '-m', 'immediate', '-w');
  if (root) await rm(root, { recursive: true, force: true });
  await built?.remove();
});

function pgCtl(...args: string[]) {
  const [cmd, argv] = asClusterOwner(join(binDir, 'pg_ctl'), [...args, '-D', join(dataDir, 'postgres')]);
  return runProcess(cmd, argv, { cwd: '/' });
}

const up = async () => (await pgCtl('status')).code === 0;
/** Runs the CLI; one that does not end (it waited on its open pool after an error) is killed: code null. */
const cli = (...args: string[]) =>
  runProcess(process.execPath, [built.path, ...args], {
    env,
    cwd: root,
    signal: AbortSignal.timeout(60_000),
  });

/** backups/ replaced by a file: the agent's start fails after it opened the cluster. */
async function breakBackupsFolder(): Promise<void> {
  await rename(join(dataDir, 'backups'), join(dataDir, 'backups.kept'));
  await writeFile(join(dataDir, 'backups'), 'not a folder');
}

async function mendBackupsFolder(): Promise<void> {
  await rm(join(dataDir, 'backups'));
  await rename(join(dataDir, 'backups.kept'), join(dataDir, 'backups'));
}

describe('a CLI command on the embedded cluster', () => {
  it('stops the cluster it started (after an error and a Ctrl-C too); leaves one it found running', async () => {
    // The service is down: the command creates and starts the cluster, and stops it at its end.
    const listed = await cli('list');
    expect(listed.code, listed.stderr).toBe(0);
    expect(await up()).toBe(false);

    // Its start fails after the cluster started (backups/ is a file): one line, exit 1, stopped.
    await breakBackupsFolder();
    const failed = await cli('list');
    expect(failed.code).toBe(1);
    expect(failed.stderr.trim().split('\n')).toHaveLength(1);
    expect(await up()).toBe(false);
    await mendBackupsFolder();

    // Ctrl-C once the command has started the cluster: exit 130, stopped.
    const child = spawn(process.execPath, [built.path, 'create'], { env, cwd: root, stdio: 'ignore' });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    for (const deadline = Date.now() + 60_000; !(await up()) && Date.now() < deadline; )
      await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await up()).toBe(true);
    child.kill('SIGINT');
    expect(await within(exited, 120_000, 'the CLI to exit after SIGINT')).toBe(130);
    expect(await up()).toBe(false);

    // Found running, started by hand (or left by a killed agent), nobody using it: left running.
    const cluster = join(dataDir, 'postgres');
    expect((await pgCtl('start', '-w', '-l', join(cluster, 'server.log'))).code).toBe(0);
    const found = await cli('list');
    expect(found.code, found.stderr).toBe(0);
    expect(await up()).toBe(true);
    // So does a failed start on it, which still ends (its pool closed: nothing stopped the server).
    await breakBackupsFolder();
    const failedBeside = await cli('list');
    expect(failedBeside.code).toBe(1);
    expect(await up()).toBe(true);
    await mendBackupsFolder();

    // Running for another process using it (this one, as the service would): left running too.
    const other = await startCluster({ dir: cluster, binDir });
    const beside = await cli('list');
    expect(beside.code, beside.stderr).toBe(0);
    expect(await up()).toBe(true);
    await other.stop();
    expect(await up()).toBe(false);
  }, 240_000);
});
