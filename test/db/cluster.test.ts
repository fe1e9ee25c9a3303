/** The embedded cluster asks every connection for the superuser's password, and upgrades trust clusters of earlier versions. */
import {
  appendFile,
  chmod,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  realpath,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { afterAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { type ClusterHandle, REACHABLE_CLUSTERS_DIR, startCluster } from '../../agent/db/cluster';
import { createLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { withSql } from '../services/postgres';

const binDir = findPgBinDir(process.env.GEM_PG_BIN);
const isRoot = process.getuid?.() === 0;
const roots: string[] = [];
const clusters: ClusterHandle[] = [];

afterAll(async () => {
  for (const cluster of clusters) await cluster.stop().catch(() => {});
  for (const root of roots) await rm(root, { recursive: true, force: true });
});

async function tempRoot(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'gem-cluster-'));
  await chmod(root, 0o755);
  roots.push(root);
  return root;
}

/** Runs a PostgreSQL program as an unprivileged OS user when we are root (as `postgres` for server tools). */
function asUser(user: string, command: string, args: string[]): [string, string[]] {
  return isRoot ? ['runuser', ['-u', user, '--', command, ...args]] : [command, args];
}

/** psql with no password at all (none in the environment, no password file): what another local process would try. */
async function psqlWithoutPassword(port: number) {
  const env: NodeJS.ProcessEnv = { ...process.env, PGPASSFILE: '/dev/null' };
  delete env.PGPASSWORD;
  const [cmd, argv] = asUser('nobody', join(binDir, 'psql'), [
    '-h',
    '127.0.0.1',
    '-p',
    String(port),
    '-U',
    'postgres',
    '-d',
    'postgres',
    '-w',
    '-Atc',
    'select current_user',
  ]);
  return runProcess(cmd, argv, { cwd: '/', env });
}

async function wrongPasswordError(port: number): Promise<{ code?: string; message: string }> {
  const sql = postgres(`postgres://postgres:wrong-password@127.0.0.1:${port}/postgres`, {
    max: 1,
    onnotice: () => {},
    connect_timeout: 10,
  });
  try {
    await sql`select 1`;
    return { message: 'connected' };
  } catch (error) {
    return { code: (error as { code?: string }).code, message: (error as Error).message };
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function expectPasswordRequired(cluster: ClusterHandle, dir: string): Promise<void> {
  const anonymous = await psqlWithoutPassword(cluster.port);
  expect(anonymous.code).not.toBe(0);
  expect(anonymous.stdout).not.toContain('postgres');
  expect(anonymous.stderr).toMatch(/password/);
  const wrong = await wrongPasswordError(cluster.port);
  expect(wrong.code === '28P01' || /password authentication failed/.test(wrong.message)).toBe(true);
  const user = await withSql(cluster.url('postgres'), (sql) => sql`select current_user as u`);
  expect(user[0]!.u).toBe('postgres');
  // The password: in a 0600 file beside the cluster folder, and in the cluster's URL.
  const passwordFile = `${dir}.password`;
  expect((await stat(passwordFile)).mode & 0o777).toBe(0o600);
  const password = (await readFile(passwordFile, 'utf8')).trim();
  expect(password.length).toBeGreaterThanOrEqual(32);
  expect(decodeURIComponent(new URL(cluster.url('postgres')).password)).toBe(password);
  const hba = await readFile(join(dir, 'pg_hba.conf'), 'utf8');
  const active = hba.split('\n').filter((line) => line.trim() && !line.trim().startsWith('#'));
  expect(active.length).toBeGreaterThan(0);
  for (const line of active) expect(line).toMatch(/scram-sha-256\s*$/);
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

describe('embedded cluster authentication', () => {
  it('a new cluster lets nobody in without the password', async () => {
    const dir = join(await tempRoot(), 'cluster');
    const cluster = await startCluster({ dir, binDir });
    clusters.push(cluster);
    await expectPasswordRequired(cluster, dir);
    await cluster.stop();
  });

  it('a trust cluster of an earlier version is upgraded on start and keeps its data', async () => {
    const dir = join(await tempRoot(), 'cluster');
    // The layout earlier versions made: initdb with trust, our settings included from gem-cluster.conf.
    await mkdir(dir, { mode: 0o700 });
    if (isRoot) await runProcess('chown', ['postgres:postgres', dir]);
    const initdb = asUser('postgres', join(binDir, 'initdb'), [
      '-D',
      dir,
      '-U',
      'postgres',
      '--auth=trust',
      '-E',
      'UTF8',
      '--locale=C.UTF-8',
      '--no-sync',
    ]);
    expect((await runProcess(initdb[0], initdb[1], { cwd: '/' })).code).toBe(0);
    await appendFile(join(dir, 'postgresql.conf'), "\ninclude_if_exists = 'gem-cluster.conf'\n");
    const port = await freePort();
    await writeFile(
      join(dir, 'gem-cluster.conf'),
      `port = ${port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n`,
    );
    const pgCtl = join(binDir, 'pg_ctl');
    const start = asUser('postgres', pgCtl, ['start', '-D', dir, '-l', join(dir, 'server.log'), '-w']);
    expect((await runProcess(start[0], start[1], { cwd: '/' })).code).toBe(0);
    const trustUrl = `postgres://postgres@127.0.0.1:${port}/postgres`;
    await withSql(trustUrl, async (sql) => {
      await sql`create table kept (id int)`;
      await sql`insert into kept values (1), (2), (3)`;
    });
    const stop = asUser('postgres', pgCtl, ['stop', '-D', dir, '-m', 'fast', '-w']);
    expect((await runProcess(stop[0], stop[1], { cwd: '/' })).code).toBe(0);

    const cluster = await startCluster({ dir, binDir });
    clusters.push(cluster);
    await expectPasswordRequired(cluster, dir);
    const rows = await withSql(cluster.url('postgres'), (sql) => sql`select count(*)::int as n from kept`);
    expect(rows[0]!.n).toBe(3);
    await cluster.stop();

    // The next start finds a cluster that already asks for the password, and still gets in.
    const again = await startCluster({ dir, binDir });
    clusters.push(again);
    await expectPasswordRequired(again, dir);
    await again.stop();
  });
});

describe('embedded cluster password file', () => {
  it('missing or empty, is refused naming the file: no new password written, no server left running', async () => {
    const dir = join(await tempRoot(), 'data', 'postgres');
    const passwordFile = `${dir}.password`;
    const first = await startCluster({ dir, binDir });
    clusters.push(first);
    await first.stop();
    const password = await readFile(passwordFile, 'utf8');
    const pgCtl = join(binDir, 'pg_ctl');
    const status = () => runProcess(...asUser('postgres', pgCtl, ['status', '-D', dir]), { cwd: '/' });

    await rm(passwordFile);
    await expect(startCluster({ dir, binDir })).rejects.toThrow(
      `needs its password file ${passwordFile}, which is missing`,
    );
    await expect(stat(passwordFile)).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await status()).code).toBe(3);

    await writeFile(passwordFile, '\n', { mode: 0o600 });
    await expect(startCluster({ dir, binDir })).rejects.toThrow(
      `needs its password file ${passwordFile}, which is empty`,
    );
    expect(await readFile(passwordFile, 'utf8')).toBe('\n');
    expect((await status()).code).toBe(3);

    // The file put back, the cluster starts and gets in as before.
    await writeFile(passwordFile, password, { mode: 0o600 });
    const again = await startCluster({ dir, binDir });
    clusters.push(again);
    await expectPasswordRequired(again, dir);
    await again.stop();
  });
});

describe('embedded cluster password file mode', () => {
  it('readable by others (copied by hand, restored without its mode) is made 0600 again, with a warning', async () => {
    const dir = join(await tempRoot(), 'data', 'postgres');
    const passwordFile = `${dir}.password`;
    const first = await startCluster({ dir, binDir });
    clusters.push(first);
    await first.stop();
    const password = await readFile(passwordFile, 'utf8');
    await chmod(passwordFile, 0o644);

    const messages: string[] = [];
    const cluster = await startCluster({
      dir,
      binDir,
      log: createLogger({ write: (line) => messages.push(line) }),
    });
    clusters.push(cluster);
    expect((await stat(passwordFile)).mode & 0o777).toBe(0o600);
    expect(await readFile(passwordFile, 'utf8')).toBe(password);
    const warning = messages.map((line) => JSON.parse(line)).find((line) => line.level === 'warn');
    expect(warning).toMatchObject({ file: passwordFile, mode: '644' });
    expect(JSON.stringify(messages)).not.toContain(password.trim());
    await expectPasswordRequired(cluster, dir);
    await cluster.stop();
  });
});

describe('embedded cluster location', () => {
  it('a data dir under a folder user postgres cannot enter gets its cluster where postgres can reach it', async () => {
    // Like a checkout in Debian's /root (0700): the README's run command must work from there too.
    const closed = join(await tempRoot(), 'home');
    await mkdir(closed, { mode: 0o700 });
    await chmod(closed, 0o700);
    const dir = join(closed, 'gem-data', 'postgres');
    const cluster = await startCluster({ dir, binDir });
    clusters.push(cluster);
    try {
      await withSql(cluster.url('postgres'), async (sql) => {
        expect((await sql`select 1 as one`)[0]).toEqual({ one: 1 });
      });
      if (!isRoot) {
        // Not root: the cluster runs as ourselves, who may enter our own 0700 folder; nothing moves.
        expect((await lstat(dir)).isDirectory()).toBe(true);
        return;
      }
      // As root: kept under REACHABLE_CLUSTERS_DIR, linked from the data dir; the closed folder stays closed.
      expect((await lstat(dir)).isSymbolicLink()).toBe(true);
      expect(await realpath(dir)).toMatch(new RegExp(`^${REACHABLE_CLUSTERS_DIR}/[0-9a-f]{16}$`));
      expect((await stat(closed)).mode & 0o777).toBe(0o700);
      // The password stays in the data dir, readable by root only.
      expect((await stat(join(closed, 'gem-data', 'postgres.password'))).mode & 0o777).toBe(0o600);
      // A second start finds the same cluster through the link.
      await cluster.stop();
      const again = await startCluster({ dir, binDir });
      clusters.push(again);
      expect(again.startedHere).toBe(true);
      await withSql(again.url('postgres'), async (sql) => {
        expect((await sql`select 1 as one`)[0]).toEqual({ one: 1 });
      });
    } finally {
      if (isRoot) {
        const real = await realpath(dir).catch(() => undefined);
        await clusters
          .pop()
          ?.stop()
          .catch(() => {});
        if (real?.startsWith(`${REACHABLE_CLUSTERS_DIR}/`)) await rm(real, { recursive: true, force: true });
      }
    }
  });
});
