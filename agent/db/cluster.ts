/** The embedded PostgreSQL cluster: created under the data dir with the machine's binaries, started and stopped by us. */
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import postgres from 'postgres';
import type { Logger } from '../log';
import { runProcess } from '../system/spawn';

export interface ClusterHandle {
  /** postgres:// URL of the `postgres` superuser on this cluster, database `database`. */
  url(database: string): string;
  port: number;
  /** True if this call started the server (false: it was already running, e.g. for the agent). */
  startedHere: boolean;
  stop(): Promise<void>;
}

const SUPERUSER = 'postgres';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** Root may not run initdb or postgres: run them as the `postgres` system user instead. */
function asClusterOwner(command: string, args: string[]): [string, string[]] {
  if (process.getuid?.() !== 0) return [command, args];
  return ['runuser', ['-u', 'postgres', '--', command, ...args]];
}

async function run(command: string, args: string[], what: string): Promise<string> {
  const [cmd, argv] = asClusterOwner(command, args);
  const result = await runProcess(cmd, argv, { cwd: '/' }).catch((error: NodeJS.ErrnoException) => {
    throw new Error(`${what}: ${error.code === 'ENOENT' ? `${cmd} not found` : error.message}`);
  });
  if (result.code !== 0)
    throw new Error(`${what} failed (exit ${result.code}): ${result.stderr || result.stdout}`);
  return result.stdout;
}

async function prepareOwnership(dir: string): Promise<void> {
  if (process.getuid?.() !== 0) return;
  const passwd = await readFile('/etc/passwd', 'utf8');
  const entry = passwd.split('\n').find((line) => line.startsWith(`${SUPERUSER}:`));
  if (!entry) {
    throw new Error(
      'running as root needs the "postgres" system user to own the embedded cluster: apt-get install -y postgresql-15',
    );
  }
  const [, , uid, gid] = entry.split(':');
  await chown(dir, Number(uid), Number(gid));
  // The postgres user must be able to reach the cluster folder: let others traverse (not list) its parent.
  const parent = dirname(dir);
  const mode = (await stat(parent)).mode & 0o777;
  if ((mode & 0o001) === 0) await chmod(parent, mode | 0o001);
}

/**
 * Starts the cluster in `dir`, creating it first if needed. TCP on 127.0.0.1 only (no Unix socket,
 * whose path length is limited), trust auth for local connections, a free port kept in the config.
 */
export async function startCluster(options: {
  dir: string;
  binDir: string;
  log?: Logger;
}): Promise<ClusterHandle> {
  const { dir, binDir, log } = options;
  const initdb = join(binDir, 'initdb');
  const pgCtl = join(binDir, 'pg_ctl');
  if (!existsSync(initdb) || !existsSync(pgCtl)) {
    throw new Error(`PostgreSQL server binaries not found in ${binDir}: apt-get install -y postgresql-15`);
  }
  const confPath = join(dir, 'gem-cluster.conf');
  if (!existsSync(join(dir, 'PG_VERSION'))) {
    log?.info('creating the embedded PostgreSQL cluster', { dir });
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await prepareOwnership(dir);
    await run(
      initdb,
      ['-D', dir, '-U', SUPERUSER, '--auth=trust', '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync'],
      'initdb',
    );
    const conf = await readFile(join(dir, 'postgresql.conf'), 'utf8');
    await writeFile(join(dir, 'postgresql.conf'), `${conf}\ninclude_if_exists = 'gem-cluster.conf'\n`);
  }
  await prepareOwnership(dir);
  const running = await run(pgCtl, ['status', '-D', dir], 'pg_ctl status').then(
    () => true,
    () => false,
  );
  let port = Number(
    /^port = (\d+)/m.exec(existsSync(confPath) ? await readFile(confPath, 'utf8') : '')?.[1] ?? 0,
  );
  if (!running) {
    if (!port || !(await portIsFree(port))) port = await freePort();
    await writeFile(
      confPath,
      [
        `port = ${port}`,
        `listen_addresses = '127.0.0.1'`,
        `unix_socket_directories = ''`,
        'fsync = on',
        'max_connections = 50',
        '',
      ].join('\n'),
    );
    if (process.getuid?.() === 0) await chownFile(confPath, dir);
    await run(
      pgCtl,
      ['start', '-D', dir, '-l', join(dir, 'server.log'), '-w', '-t', '60'],
      'starting PostgreSQL',
    );
    log?.info('embedded PostgreSQL started', { port });
  } else {
    log?.info('embedded PostgreSQL already running', { port });
  }
  const url = (database: string) => `postgres://${SUPERUSER}@127.0.0.1:${port}/${database}`;
  return {
    url,
    port,
    startedHere: !running,
    stop: async () => {
      await run(pgCtl, ['stop', '-D', dir, '-m', 'fast', '-w', '-t', '60'], 'stopping PostgreSQL');
      log?.info('embedded PostgreSQL stopped');
    },
  };
}

async function chownFile(path: string, like: string): Promise<void> {
  const s = await stat(like);
  await chown(path, s.uid, s.gid);
}

/** Creates `database` on the cluster if it does not exist; returns true if it was created. */
export async function ensureDatabase(serverUrl: string, database: string): Promise<boolean> {
  const sql = postgres(serverUrl, { max: 1, onnotice: () => {} });
  try {
    const rows = await sql`select 1 from pg_database where datname = ${database}`;
    if (rows.length > 0) return false;
    await sql.unsafe(`create database "${database.replace(/"/g, '""')}"`);
    return true;
  } finally {
    await sql.end({ timeout: 5 });
  }
}
