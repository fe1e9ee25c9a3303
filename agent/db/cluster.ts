/** The embedded PostgreSQL cluster: created under the data dir with the machine's binaries, started and stopped by us. */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import {
  chmod,
  chown,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  realpath,
  rm,
  stat,
  symlink,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { AppError } from '../errors';
import {
  acquireLock,
  clearStaleLock,
  heldByOtherProcess,
  heldInNamespace,
  lockHolderPid,
  PID_NAMESPACE,
} from '../jobs/lock';
import type { Logger } from '../log';
import {
  createSmallFileExclusive,
  fsyncDir,
  mkdirDurable,
  tempPathFor,
  writeFileAtomic,
  writeSmallFileAtomic,
} from '../system/atomic-file';
import { userNamed } from '../system/passwd';
import { serviceLockPath } from '../system/service-lock';
import { runProcess } from '../system/spawn';
import { openSql } from './connect';

export interface ClusterHandle {
  /** postgres:// URL (with the password) of the `postgres` superuser on this cluster, database `database`. */
  url(database: string): string;
  port: number;
  /**
   * True if this process started the server: this call did, or restart() did since (false: it was
   * already running, e.g. for the agent, and nobody here had to start it again).
   */
  readonly startedHere: boolean;
  /** True if the server runs (`pg_ctl status`). */
  running(): Promise<boolean>;
  /**
   * Starts the server again on its port if it is down (it crashed, or was stopped by hand); false if
   * it was running. Throws if another process took the port meanwhile: the pool's URL names it.
   */
  restart(): Promise<boolean>;
  /**
   * Ends this process's use of the cluster and stops the server, as its owner: the agent serving the
   * data dir (whether it started or adopted the cluster), or a process that started it. Left running
   * while another live process uses it (another handle, a CLI command, the agent serving the data
   * dir): the last of them stops it (see release()).
   */
  stop(): Promise<void>;
  /**
   * Ends this process's use of the cluster: stops it as stop() does if this process started it
   * (startedHere) or an owner that stopped meanwhile left it to the processes still using it, and
   * nobody else uses it now; otherwise (it was running when this one came: started by hand, or an
   * agent serves it) leaves it running.
   */
  release(): Promise<void>;
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
export function asClusterOwner(command: string, args: string[]): [string, string[]] {
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
  const owner = userNamed(SUPERUSER);
  if (!owner) {
    throw new Error(
      'running as root needs the "postgres" system user to own the embedded cluster: apt-get install -y postgresql-15',
    );
  }
  await chown(dir, owner.uid, owner.gid);
  // The postgres user must be able to reach the cluster folder: let others traverse (not list) its parent.
  const parent = dirname(dir);
  const mode = (await stat(parent)).mode & 0o777;
  if ((mode & 0o001) === 0) await chmod(parent, mode | 0o001);
  await checkReachableByOwner(dir);
}

/** True if the `postgres` user may enter `folder` (it and every folder above it). */
async function ownerCanEnter(folder: string): Promise<boolean> {
  const result = await runProcess('runuser', ['-u', SUPERUSER, '--', 'test', '-x', folder], { cwd: '/' });
  return result.code === 0;
}

/**
 * initdb and the server run as `postgres`, which must traverse every folder above the cluster. We open
 * only the cluster's parent; a folder higher up that is closed (Debian's /root is 0700) would make
 * initdb fail with a bare "Permission denied": name that folder and what to do instead.
 */
async function checkReachableByOwner(dir: string): Promise<void> {
  if (await ownerCanEnter(dir)) return;
  const ancestors: string[] = [];
  for (let folder = dirname(dir); ; folder = dirname(folder)) {
    ancestors.unshift(folder);
    if (dirname(folder) === folder) break;
  }
  let blocked = dir;
  for (const folder of ancestors) {
    if (!(await ownerCanEnter(folder))) {
      blocked = folder;
      break;
    }
  }
  throw new AppError(
    'dependency_down',
    `the embedded PostgreSQL runs as user ${SUPERUSER}, which cannot enter ${blocked} to reach ${dir}: ` +
      `set GEM_DATA_DIR to a folder ${SUPERUSER} can reach (e.g. /var/lib/gem-backup), or open that folder with \`chmod o+x ${blocked}\``,
  );
}

/** Where, as root, the cluster of a data dir user postgres cannot reach is kept instead (linked from it). */
export const REACHABLE_CLUSTERS_DIR = '/var/lib/gem-backup/clusters';

/**
 * The folder the cluster really lives in. As root, initdb and the server run as postgres, which must
 * reach it. A new cluster whose data dir lies under a folder closed to others (a checkout in Debian's
 * /root, mode 0700) is placed in REACHABLE_CLUSTERS_DIR instead, under a name derived from its path,
 * and `dir` becomes a link to it: the agent then starts from any folder without opening /root to
 * everyone. An existing cluster folder stays where it is.
 */
async function clusterFolder(dir: string, log?: Logger): Promise<string> {
  if (process.getuid?.() !== 0) return dir;
  const info = await lstat(dir).catch(() => undefined);
  if (info?.isSymbolicLink()) return realpath(dir);
  const dataDir = dirname(dir);
  // The data dir itself is opened for traversal (prepareOwnership): the folders above it decide.
  if (info || (await ownerCanEnter(dirname(dataDir)))) return dir;
  const real = join(
    REACHABLE_CLUSTERS_DIR,
    createHash('sha256').update(resolve(dir)).digest('hex').slice(0, 16),
  );
  await mkdir(REACHABLE_CLUSTERS_DIR, { recursive: true, mode: 0o755 });
  await mkdirDurable(real, 0o700);
  await mkdirDurable(dataDir, 0o700);
  await symlink(real, dir).catch(async (error: NodeJS.ErrnoException) => {
    // Another process starting at the same moment made the same link: that is the one wanted.
    if (error.code !== 'EEXIST' || (await realpath(dir).catch(() => '')) !== (await realpath(real)))
      throw error;
  });
  log?.info('the embedded cluster is kept where user postgres can reach it, linked from the data dir', {
    cluster: real,
    link: dir,
  });
  return real;
}

/** The superuser's password file, beside the cluster folder (in the agent's data dir: `postgres.password`). */
export function clusterPasswordPath(dir: string): string {
  return `${dir}.password`;
}

/**
 * A password file others may read (copied by hand, restored by a tool that dropped its mode) is made
 * 0600 again, with a warning: it was used as it was, open to every local user. One this process may
 * not change (another user's) is refused, naming it.
 */
async function keepPasswordPrivate(path: string, log?: Logger): Promise<void> {
  const info = await stat(path).catch(() => undefined);
  if (!info || (info.mode & 0o077) === 0) return;
  const mode = (info.mode & 0o777).toString(8);
  await chmod(path, 0o600).catch((error: Error) => {
    throw new Error(
      `the embedded PostgreSQL cluster's password file ${path} may be read by other users (mode ${mode}) and cannot be made 0600 here (${error.message}): chmod 600 it as its owner`,
    );
  });
  log?.warn('the embedded PostgreSQL password file could be read by other users: made 0600', {
    file: path,
    mode,
  });
}

/** Reads the superuser's password, creating a random one (0600, written atomically) the first time. */
async function loadOrCreatePassword(path: string, log?: Logger): Promise<string> {
  const password = randomBytes(32).toString('base64url');
  // Exclusive: two processes starting at once on a fresh data dir must both use the same password.
  if (!existsSync(path) && (await createSmallFileExclusive(path, `${password}\n`, 0o600))) return password;
  await keepPasswordPrivate(path, log);
  const saved = (await readFile(path, 'utf8')).trim();
  if (saved) return saved;
  await writeSmallFileAtomic(path, `${password}\n`, 0o600);
  return password;
}

/**
 * The password of a cluster that already asks for one: only the one in its file gets in, so a file
 * missing or empty is an error that names it (a new random password would be turned away).
 */
async function savedPassword(path: string, dir: string, log?: Logger): Promise<string> {
  await keepPasswordPrivate(path, log);
  const saved = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (saved?.trim()) return saved.trim();
  throw new Error(
    `the embedded PostgreSQL cluster in ${dir} needs its password file ${path}, which is ${saved === undefined ? 'missing' : 'empty'}: ` +
      'put back the file from when the cluster was created',
  );
}

// Every connection, TCP or socket, must give the superuser's password: any local process (another OS
// user, a device script) could otherwise get in as superuser.
const SCRAM_HBA = [
  '# Written by GEM Backup & Restore: every connection needs the password (SCRAM).',
  'local   all           all                  scram-sha-256',
  'host    all           all    127.0.0.1/32  scram-sha-256',
  'host    all           all    ::1/128       scram-sha-256',
  'local   replication   all                  scram-sha-256',
  'host    replication   all    127.0.0.1/32  scram-sha-256',
  'host    replication   all    ::1/128       scram-sha-256',
  '',
].join('\n');

/** True if an active line of pg_hba.conf lets someone in without a password (clusters of earlier versions). */
function allowsTrust(hba: string): boolean {
  return hba
    .split('\n')
    .map((line) => line.replace(/#.*/, '').trim())
    .some((line) => line.split(/\s+/).includes('trust'));
}

/** A SCRAM-SHA-256 verifier, so the plain password never travels to the server or its log. */
function scramVerifier(password: string): string {
  const salt = randomBytes(16);
  const iterations = 4096;
  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/**
 * Upgrades a running cluster made with trust auth by an earlier version: the superuser gets the
 * password, pg_hba.conf asks for it everywhere, the server reloads. Each step can be run again, so a
 * crash half-way is finished at the next start.
 */
async function requirePassword(dir: string, port: number, password: string, log?: Logger): Promise<void> {
  log?.info('the embedded PostgreSQL cluster allowed connections without a password: setting one', { dir });
  const trustUrl = `postgres://${SUPERUSER}@127.0.0.1:${port}/postgres`;
  const sql = openSql(trustUrl);
  try {
    // A verifier is a literal of base64 and `$:` only: nothing to escape.
    await sql.unsafe(`alter role ${SUPERUSER} with password '${scramVerifier(password)}'`);
    // Owned like the cluster folder, so the server (running as its owner) can read it.
    await writeSmallFileAtomic(join(dir, 'pg_hba.conf'), SCRAM_HBA, 0o600, async (temp) => {
      if (process.getuid?.() === 0) await chownFile(temp, dir);
    });
    await sql`select pg_reload_conf()`;
  } finally {
    await sql.end({ timeout: 5 });
  }
  // The reload is a signal: wait until the server really turns a wrong password away (trust takes any).
  const wrongUrl = `postgres://${SUPERUSER}:not-the-password@127.0.0.1:${port}/postgres`;
  for (let attempt = 0; attempt < 100; attempt++) {
    const probe = openSql(wrongUrl);
    const accepted = await probe`select 1`.then(
      () => true,
      () => false,
    );
    await probe.end({ timeout: 5 });
    if (!accepted) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(
    'the embedded PostgreSQL cluster still accepts connections without a password after reload',
  );
}

/** Gives a file we wrote into the cluster folder to the cluster's owner (as root; otherwise it is ours already). */
async function ownLikeCluster(path: string, cluster: string): Promise<void> {
  if (process.getuid?.() === 0) await chownFile(path, cluster);
}

/** While a first creation of the cluster at `dir` is under way: beside it, naming the process creating it. */
function creatingMarkerPath(dir: string): string {
  return `${dir}.creating`;
}

/** How long a start waits for another process (the agent and the CLI, started together) creating the cluster. */
const CREATION_WAIT_MS = 180_000;

/**
 * Makes sure a whole cluster is at `dir`, creating it if needed. initdb writes PG_VERSION long before
 * it is done, so a first start cut short (a power cut, a stopped service) used to leave a half-made
 * cluster every later start took for a finished one (the agent never started again). A marker beside
 * the folder, written before anything else and removed once initdb (which fsyncs) and our settings
 * are done, says "unfinished": the next start empties the folder and creates it again. It never
 * holds data: the agent starts a cluster only after its creation finished. The folder itself is kept
 * (it may be a mount point or a symlink's target), and a folder holding anything else is refused.
 * Called under the start lock, which a process creating the cluster holds: a marker found here is a dead
 * creator's, whatever process its pid names now (another one after a reboot).
 */
async function ensureCluster(
  dir: string,
  initdb: string,
  password: () => Promise<string>,
  log?: Logger,
): Promise<void> {
  const marker = creatingMarkerPath(dir);
  const unfinished = existsSync(marker);
  if (existsSync(join(dir, 'PG_VERSION')) && !unfinished) {
    const conf = await readFile(join(dir, 'postgresql.conf'), 'utf8').catch(() => '');
    if (conf.includes(INCLUDE_LINE)) return;
    throw new Error(
      `the embedded PostgreSQL cluster folder ${dir} holds a cluster whose creation an earlier version did not ` +
        'finish (no gem-cluster.conf in its postgresql.conf): it never held data; remove what the folder holds to create it again',
    );
  }
  await mkdirDurable(dir, 0o700);
  const entries = await readdir(dir);
  if (unfinished) {
    log?.warn('the embedded PostgreSQL cluster was not finished at a previous start: it is created again', {
      dir,
    });
    // initdb's own server process may still write there a moment after initdb ended: retried.
    for (const name of entries)
      await rm(join(dir, name), { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  } else if (entries.length > 0) {
    throw new Error(
      `the embedded PostgreSQL cluster folder ${dir} holds files but no cluster (no PG_VERSION): ` +
        'move them elsewhere to let the agent create its cluster there',
    );
  }
  log?.info('creating the embedded PostgreSQL cluster', { dir });
  await writeSmallFileAtomic(marker, `${process.pid}\n`, 0o600);
  await prepareOwnership(dir);
  // initdb reads the password from a file (never the command line); one the cluster's owner can read,
  // beside the cluster folder (the data dir may be closed to it).
  const pwfile = tempPathFor(clusterPasswordPath(dir));
  try {
    await writeFile(pwfile, `${await password()}\n`, { mode: 0o600, flag: 'wx' });
    await ownLikeCluster(pwfile, dir);
    await run(
      initdb,
      [
        '-D',
        dir,
        '-U',
        SUPERUSER,
        '--auth=scram-sha-256',
        `--pwfile=${pwfile}`,
        '-E',
        'UTF8',
        '--locale=C.UTF-8',
      ],
      'initdb',
    );
  } finally {
    await rm(pwfile, { force: true });
  }
  const confPath = join(dir, 'postgresql.conf');
  const conf = await readFile(confPath, 'utf8');
  await writeSmallFileAtomic(confPath, `${conf}\n${INCLUDE_LINE}\n`, 0o600, (file) =>
    ownLikeCluster(file, dir),
  );
  await rm(marker);
  await fsyncDir(dirname(marker));
}

/**
 * Takes the cluster's start lock (`<dir>.start.lock`, the job lock's safe takeover from a dead
 * holder), waiting while another process holds it: it is creating or starting the same cluster.
 */
async function acquireStartLock(dir: string): Promise<() => Promise<void>> {
  const path = `${dir}.start.lock`;
  await mkdir(dirname(dir), { recursive: true, mode: 0o700 });
  for (const deadline = Date.now() + CREATION_WAIT_MS; ; ) {
    try {
      return await acquireLock(path, 'starting the embedded PostgreSQL cluster');
    } catch (error) {
      if (!(error instanceof AppError && error.code === 'job_running')) throw error;
      if (Date.now() > deadline) {
        throw new Error(
          `another process has been starting the embedded PostgreSQL cluster in ${dir} for minutes (${path})`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

/**
 * Beside the cluster folder: one lock file per process using the cluster (`<pid>-<id>`, the job lock's
 * format, so a killed user's file counts as gone), made under the start lock. An owner stopping the
 * cluster leaves it running while another one is there.
 */
function usersFolder(dir: string): string {
  return `${dir}.users`;
}

/** A user's lock file in usersFolder (the lock's temp files and takeover claims hold a dot). */
const USER_FILE = /^\d+-[0-9a-f]+$/;

/** Registers this handle as a user of the cluster in `dir`; returns its release. */
async function registerUser(dir: string): Promise<{ path: string; release: () => Promise<void> }> {
  const folder = usersFolder(dir);
  await mkdir(folder, { recursive: true, mode: 0o700 });
  const path = join(folder, `${process.pid}-${randomBytes(6).toString('hex')}`);
  return { path, release: await acquireLock(path, 'using the embedded PostgreSQL cluster') };
}

/** The pids of the live processes (this one too, for another handle) using the cluster in `dir` but `mine`; dead users' files are removed. */
async function otherUsers(dir: string, mine: string): Promise<number[]> {
  const folder = usersFolder(dir);
  const names = await readdir(folder).catch(() => [] as string[]);
  const pids: number[] = [];
  for (const name of names) {
    const path = join(folder, name);
    if (!USER_FILE.test(name) || path === mine) continue;
    if (await clearStaleLock(path)) pids.push((await lockHolderPid(path)) ?? 0);
  }
  return pids;
}

/**
 * The pid of a live process of another PID namespace using the cluster in `dir` (the agent in one
 * container, a CLI command in another, on one data dir); undefined if none. A server it runs is one
 * pg_ctl cannot see from here (postmaster.pid's pid names nothing, or another process, in this
 * namespace), nor PostgreSQL itself when the IPC namespace differs too (Docker's default): a server
 * started here would be a second one on the same files.
 */
async function userInOtherNamespace(dir: string): Promise<number | undefined> {
  const folder = usersFolder(dir);
  for (const name of await readdir(folder).catch(() => [] as string[])) {
    if (!USER_FILE.test(name)) continue;
    const path = join(folder, name);
    let holder: { pid?: unknown; ns?: unknown } | null;
    try {
      holder = JSON.parse(await readFile(path, 'utf8'));
    } catch {
      continue;
    }
    const { pid, ns } = holder ?? {};
    if (typeof pid !== 'number' || typeof ns !== 'string' || !PID_NAMESPACE || ns === PID_NAMESPACE) continue;
    if (await heldInNamespace(path, pid, ns)) return pid;
  }
  return undefined;
}

/** Refuses to start a server while a process of another PID namespace uses the cluster (see userInOtherNamespace). */
async function checkNoUserElsewhere(dir: string): Promise<void> {
  const pid = await userInOtherNamespace(dir);
  if (pid === undefined) return;
  throw new Error(
    `the embedded PostgreSQL cluster in ${dir} is in use by process ${pid} of another PID namespace (another container), ` +
      'whose server cannot be seen from here: starting one here would run a second server on the same files. ' +
      'Run the command in that container (docker exec), or stop that process first',
  );
}

/**
 * Written by an owner that left the cluster running to the processes still using it: the server's
 * pid (postmaster.pid's first line), so the last of them stops that server, and never one started
 * since by someone else.
 */
function handoverPath(dir: string): string {
  return join(usersFolder(dir), 'owner-left');
}

/** The running server's pid, from its postmaster.pid; undefined when none runs. */
async function serverPid(dir: string): Promise<string | undefined> {
  const text = await readFile(join(dir, 'postmaster.pid'), 'utf8').catch(() => '');
  return text.split('\n')[0]?.trim() || undefined;
}

/** True if an owner left the server now running to the processes using it. */
async function handedOver(dir: string): Promise<boolean> {
  const left = (await readFile(handoverPath(dir), 'utf8').catch(() => '')).trim();
  return left !== '' && left === (await serverPid(dir));
}

/** The line our postgresql.conf ends with: the port and listen address live in gem-cluster.conf. */
const INCLUDE_LINE = "include_if_exists = 'gem-cluster.conf'";

/**
 * Starts the cluster in `dir`, creating it first if needed. TCP on 127.0.0.1 only (no Unix socket,
 * whose path length is limited), a free port kept in the config. Every connection needs the
 * superuser's password (SCRAM), kept in `clusterPasswordPath(dir)` (0600) and given in `url()`.
 */
export async function startCluster(options: {
  dir: string;
  binDir: string;
  log?: Logger;
}): Promise<ClusterHandle> {
  const { binDir, log } = options;
  const initdb = join(binDir, 'initdb');
  const pgCtl = join(binDir, 'pg_ctl');
  if (!existsSync(initdb) || !existsSync(pgCtl)) {
    throw new Error(`PostgreSQL server binaries not found in ${binDir}: apt-get install -y postgresql-15`);
  }
  // The password file stays in the data dir even when the cluster is kept elsewhere (clusterFolder).
  const passwordPath = clusterPasswordPath(options.dir);
  const dir = await clusterFolder(options.dir, log);
  const confPath = join(dir, 'gem-cluster.conf');
  // One start at a time per cluster: the service and a CLI command started together would otherwise
  // both start it (one fails) and the loser's settings file would name a port the server does not use.
  const release = await acquireStartLock(dir);
  let running: boolean;
  let port: number;
  let password: string;
  let user: Awaited<ReturnType<typeof registerUser>>;
  try {
    // The password is made only with the cluster: an existing one's is in its file, or nowhere.
    await ensureCluster(dir, initdb, () => loadOrCreatePassword(passwordPath, log), log);
    await prepareOwnership(dir);
    await boundServerLog(dir, log);
    // Checked before the server starts, so that a start refused for it leaves no server running.
    const trust = allowsTrust(await readFile(join(dir, 'pg_hba.conf'), 'utf8'));
    const saved = trust ? undefined : await savedPassword(passwordPath, dir, log);
    running = await clusterRunning(pgCtl, dir);
    port = Number(
      /^port = (\d+)/m.exec(existsSync(confPath) ? await readFile(confPath, 'utf8') : '')?.[1] ?? 0,
    );
    if (!running) {
      await checkNoUserElsewhere(dir);
      if (!port || !(await portIsFree(port))) port = await freePort();
      // Atomic: a write cut short would leave the server without its port and listen address.
      const settings = [
        `port = ${port}`,
        `listen_addresses = '127.0.0.1'`,
        `unix_socket_directories = ''`,
        'fsync = on',
        'max_connections = 50',
        '',
      ].join('\n');
      await writeSmallFileAtomic(confPath, settings, 0o600, (temp) => ownLikeCluster(temp, dir));
      await startServer(pgCtl, dir, log);
      log?.info('embedded PostgreSQL started', { port });
    } else {
      // Left starting (an agent killed during its start, a start pg_ctl gave up waiting on).
      await waitUntilStarted(pgCtl, dir, log);
      log?.info('embedded PostgreSQL already running', { port });
    }
    if (saved === undefined) {
      const made = await loadOrCreatePassword(passwordPath, log);
      await requirePassword(dir, port, made, log);
      password = encodeURIComponent(made);
    } else {
      password = encodeURIComponent(saved);
    }
    // Under the start lock: an owner stopping the cluster meanwhile sees this process use it.
    user = await registerUser(dir);
  } finally {
    await release();
  }
  const url = (database: string) => `postgres://${SUPERUSER}:${password}@127.0.0.1:${port}/${database}`;
  let startedHere = !running;
  // For as long as this process uses the cluster (the agent: for years); two processes cutting it
  // at the same moment lose at most a few lines.
  let cutting: Promise<void> | undefined;
  const logCheck = setInterval(() => {
    cutting ??= boundServerLog(dir, log).finally(() => {
      cutting = undefined;
    });
  }, serverLogBound.checkMs);
  logCheck.unref();
  /** Ends this handle's use; stops the server if `owner` (or it was handed over) and nobody else uses it. */
  const finish = async (owner: boolean) => {
    clearInterval(logCheck);
    await cutting;
    // Under the start lock: an agent starting meanwhile adopts the cluster only once this is settled.
    const releaseStart = await acquireStartLock(dir);
    try {
      await user.release();
      if (!owner && !(await handedOver(dir))) return;
      // A CLI command that started the cluster while no agent ran leaves it to an agent that
      // started since and serves it now (the service lock of the data dir holding the cluster).
      const agentLock = serviceLockPath(dirname(options.dir));
      if (await heldByOtherProcess(agentLock)) {
        log?.info('embedded PostgreSQL left running: the agent uses it', { lock: agentLock });
        return;
      }
      const others = await otherUsers(dir, user.path);
      if (others.length > 0) {
        // The last of them stops it: the server now running is theirs to stop.
        const pid = await serverPid(dir);
        if (pid) await writeSmallFileAtomic(handoverPath(dir), `${pid}\n`, 0o600);
        log?.info('embedded PostgreSQL left running: other processes use it', { pids: others });
        return;
      }
      // A cluster already down (stopped by hand, or it crashed) is a clean stop, not a failure.
      if (!(await clusterRunning(pgCtl, dir))) {
        log?.info('embedded PostgreSQL was already stopped');
        return;
      }
      try {
        await run(pgCtl, ['stop', '-D', dir, '-m', 'fast', '-w', '-t', '60'], 'stopping PostgreSQL');
      } catch (error) {
        // Stopped by someone else between the check and the stop.
        if (await clusterRunning(pgCtl, dir)) throw error;
        log?.info('embedded PostgreSQL was already stopped');
        return;
      }
      log?.info('embedded PostgreSQL stopped');
    } finally {
      await releaseStart();
    }
  };
  return {
    url,
    port,
    get startedHere() {
      return startedHere;
    },
    running: () => clusterRunning(pgCtl, dir),
    restart: async () => {
      const releaseStart = await acquireStartLock(dir);
      try {
        if (await clusterRunning(pgCtl, dir)) return false;
        await checkNoUserElsewhere(dir);
        if (!(await portIsFree(port))) {
          throw new Error(
            `the embedded PostgreSQL cluster is down and another process now uses its port ${port}: restart the agent`,
          );
        }
        await startServer(pgCtl, dir, log);
        // Started by this process now: stopped with it, like one it started at first.
        startedHere = true;
        return true;
      } finally {
        await releaseStart();
      }
    },
    stop: () => finish(true),
    release: () => finish(startedHere),
  };
}

/**
 * The server's log (pg_ctl -l) is kept to itself and the one before it (server.log.1), each at most
 * `limitBytes` (server.log: give or take what the server writes between two checks every `checkMs`).
 * Left as it was, it grew for as long as the controller ran, on the disk that holds the backups.
 * Mutable for tests.
 */
export const serverLogBound = { limitBytes: 10 * 1024 * 1024, checkMs: 60_000 };

/**
 * Over the limit, server.log's newest `limitBytes` become server.log.1 (replacing the one before) and
 * server.log is emptied in place. In place, not renamed: a running server keeps writing into the file
 * it opened, and it opened it to append (pg_ctl's `>>`), so it goes on at its new end, the start.
 * PostgreSQL's own logging_collector cannot do this: its rotation by size never truncates a file of a
 * fixed name, it appends to it. What the server writes between the copy and the truncate is lost.
 */
async function boundServerLog(dir: string, log?: Logger): Promise<void> {
  const file = join(dir, 'server.log');
  try {
    const size = (await stat(file).catch(() => undefined))?.size ?? 0;
    if (size <= serverLogBound.limitBytes) return;
    await writeFileAtomic(
      `${file}.1`,
      [createReadStream(file, { start: size - serverLogBound.limitBytes, end: size - 1 })],
      { mode: 0o600, check: (temp) => ownLikeCluster(temp, dir) },
    );
    await truncate(file, 0);
  } catch (error) {
    // A log left long (a full disk refused the copy) is no reason to stop the database: tried again at the next check.
    log?.warn('the embedded PostgreSQL server log could not be cut to its limit', {
      file,
      error: (error as Error).message,
    });
  }
}

/** How long `pg_ctl start` waits for the server (seconds) before the start waits on by itself. Mutable for tests. */
export const serverStartWait = { pgCtlSeconds: 60 };

/** Starts the server of the cluster in `dir` with the port and settings its gem-cluster.conf holds. */
async function startServer(pgCtl: string, dir: string, log?: Logger): Promise<void> {
  // A handover an owner wrote for an earlier server names no server now: this one is the starter's.
  await rm(handoverPath(dir), { force: true });
  // PostgreSQL refuses to start while the pid in postmaster.pid runs, whatever that process is.
  if (await staleServerPid(dir)) await rm(join(dir, 'postmaster.pid'), { force: true });
  const file = join(dir, 'server.log');
  const before = (await stat(file).catch(() => undefined))?.size ?? 0;
  const args = ['start', '-D', dir, '-l', file, '-w', '-t', String(serverStartWait.pgCtlSeconds)];
  const failed = await run(pgCtl, args, 'starting PostgreSQL').then(
    () => undefined,
    (error: Error) => error,
  );
  if (!failed) return;
  // pg_ctl gave up waiting on a server still recovering after a crash, which goes on: wait for it.
  if ((await serverStatus(dir)) === 'starting' && (await clusterRunning(pgCtl, dir))) {
    await waitUntilStarted(pgCtl, dir, log);
    return;
  }
  // pg_ctl says only "Examine the log output": why (a bad setting, a full disk) is in the log.
  throw new Error(
    `${failed.message.trim()}\n${file}, at this start:\n${await linesSince(file, before).catch(() => '(unreadable)')}`,
  );
}

/** The running server's state (postmaster.pid's 8th line): starting, ready, standby or stopping; undefined when none runs. */
async function serverStatus(dir: string): Promise<string | undefined> {
  const text = await readFile(join(dir, 'postmaster.pid'), 'utf8').catch(() => '');
  return text.split('\n')[7]?.trim() || undefined;
}

/**
 * Waits while the running server is starting: after a crash (a power cut, a killed server) it replays
 * the WAL since its last checkpoint first, which on a slow disk takes longer than pg_ctl waits, and
 * turns every connection away meanwhile ("the database system is starting up"). However long it takes:
 * the server is unusable until then. Throws if the server ends instead.
 */
async function waitUntilStarted(pgCtl: string, dir: string, log?: Logger): Promise<void> {
  for (let seconds = 0; (await serverStatus(dir)) === 'starting'; seconds++) {
    if (!(await clusterRunning(pgCtl, dir))) break;
    if (seconds % 60 === 0)
      log?.info('embedded PostgreSQL is still starting (recovering after a crash): waiting', { dir });
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  if (!(await clusterRunning(pgCtl, dir))) {
    throw new Error(
      `the embedded PostgreSQL server in ${dir} ended while it was starting: see ${join(dir, 'server.log')}`,
    );
  }
}

/** The last lines (at most 4 KiB) written to `file` after its first `offset` bytes. */
async function linesSince(file: string, offset: number): Promise<string> {
  const handle = await open(file, 'r').catch(() => undefined);
  if (!handle) return '(no log)';
  try {
    const { size } = await handle.stat();
    const start = Math.max(offset, size - 4096);
    const length = Math.max(0, size - start);
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(length), 0, length, start);
    const text = buffer.subarray(0, bytesRead).toString('utf8').trim();
    return text ? text.split('\n').slice(-10).join('\n') : '(nothing)';
  } finally {
    await handle.close();
  }
}

/** True if a server runs on the cluster in `dir` (`pg_ctl status`: 3 when none, 4 when no cluster there). */
async function clusterRunning(pgCtl: string, dir: string): Promise<boolean> {
  const running = await run(pgCtl, ['status', '-D', dir], 'pg_ctl status').then(
    () => true,
    () => false,
  );
  return running && !(await staleServerPid(dir));
}

/**
 * True if postmaster.pid names a live process that is no server of the cluster in `dir`: the file of a
 * server that died with the machine (a power cut), its pid taken since by another process of the
 * cluster's owner (a system PostgreSQL's, say). pg_ctl takes any live pid for the server: the cluster
 * was adopted with nothing listening, and `pg_ctl stop` signalled that process. A server of the cluster
 * works in its folder (PostgreSQL changes into its data directory): a process elsewhere is not one.
 * False when that cannot be read (another user's process: pg_ctl does not count it either).
 */
async function staleServerPid(dir: string): Promise<boolean> {
  const pid = await serverPid(dir);
  if (!pid || !/^\d+$/.test(pid)) return false;
  // By identity, not path: a mount seen at another path from here is the same folder.
  const cwd = await stat(`/proc/${pid}/cwd`).catch(() => undefined);
  const folder = await stat(dir).catch(() => undefined);
  return cwd !== undefined && folder !== undefined && (cwd.dev !== folder.dev || cwd.ino !== folder.ino);
}

async function chownFile(path: string, like: string): Promise<void> {
  const s = await stat(like);
  await chown(path, s.uid, s.gid);
}

/** Creates `database` on the cluster if it does not exist; returns true if it was created. */
export async function ensureDatabase(serverUrl: string, database: string): Promise<boolean> {
  const sql = openSql(serverUrl);
  try {
    const rows = await sql`select 1 from pg_database where datname = ${database}`;
    if (rows.length > 0) return false;
    try {
      await sql.unsafe(`create database "${database.replace(/"/g, '""')}"`);
    } catch (error) {
      // Another process starting at the same moment (the service and a CLI command) created it first:
      // 42P04 if it committed before this check, pg_database's unique index if both ran together.
      const code = (error as { code?: string }).code;
      if (code === '42P04' || code === '23505') return false;
      throw error;
    }
    return true;
  } finally {
    await sql.end({ timeout: 5 });
  }
}
