// A real Samba smbd on 127.0.0.1 for SMB tests: its own smb.conf, a free port, share `gem`, one user.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './ports';
import { serviceProcesses, signalAll, stopTree } from './process-tree';
import { createUnixUser, deleteUnixUser, unixIds } from './sshd';

const SMBD = '/usr/sbin/smbd';

/** The pids of the smbclients this process (any of its threads) runs against `smbd`. */
export function smbclientChildren(smbd: Pick<SmbdService, 'port'>): number[] {
  return readdirSync(`/proc/${process.pid}/task`)
    .flatMap((task) => readFileSync(`/proc/${process.pid}/task/${task}/children`, 'utf8').split(' '))
    .filter((pid) => /^\d+$/.test(pid))
    .filter((pid) => {
      try {
        const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        return argv[0]?.endsWith('smbclient') && argv.includes(String(smbd.port));
      } catch {
        return false; // ended while we looked
      }
    })
    .map(Number);
}

export interface SmbdService {
  host: string;
  port: number;
  share: string;
  username: string;
  password: string;
  domain?: string;
  /** The share's folder on this machine. */
  root: string;
  stop(): Promise<void>;
  /** Gives the share's user a new password (`password` above stays the first one). */
  setPassword(password: string): Promise<void>;
  /** SIGSTOP / SIGCONT smbd and its per-connection children: a server that stops answering. */
  pause(): void;
  resume(): void;
}

/** SmbProvider options for the test smbd's share, backups under `remotePath` (e.g. `/good/`). */
export function smbOptionsFor(smbd: SmbdService, remotePath: string) {
  return {
    host: smbd.host,
    port: smbd.port,
    share: smbd.share,
    username: smbd.username,
    password: smbd.password,
    remotePath,
  };
}

function runWithInput(file: string, args: string[], input: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`${file} failed (${code}): ${stderr}`)),
    );
    child.stdin.on('error', () => {}); // a tool that exits without reading its input
    child.stdin.end(input);
  });
}

/** Starts smbd on a free port of 127.0.0.1. Throws with the apt command if Samba is not installed. */
export async function startSmbd(): Promise<SmbdService> {
  if (!existsSync(SMBD)) throw new Error('samba is not installed: apt-get install -y samba smbclient');
  const dir = await mkdtemp(join(tmpdir(), 'gem-smbd-'));
  await chmod(dir, 0o755); // the share user must reach the share folder inside it
  const root = join(dir, 'share');
  const username = `gemsmb${randomBytes(4).toString('hex')}`;
  const password = randomBytes(12).toString('hex');
  let userCreated = false;
  let child: ChildProcess | undefined;
  let userUid: number | undefined;
  const cleanup = async () => {
    // Every session process must be gone before userdel, which refuses a user that still runs something.
    if (child?.pid !== undefined) await stopTree(child.pid, { uid: userUid });
    if (userCreated) await deleteUnixUser(username);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await mkdir(root);
    await createUnixUser(username, root, password);
    userCreated = true;
    const { uid, gid } = await unixIds(username);
    userUid = uid;
    await chown(root, uid, gid);
    for (const sub of ['private', 'lock', 'state', 'cache', 'pid', 'ncalrpc', 'log'])
      await mkdir(join(dir, sub));
    const port = await freePort();
    const config = join(dir, 'smb.conf');
    await writeFile(
      config,
      [
        '[global]',
        `smb ports = ${port}`,
        'interfaces = 127.0.0.1',
        'bind interfaces only = yes',
        'disable netbios = yes',
        'server min protocol = SMB2',
        `private dir = ${join(dir, 'private')}`,
        `lock directory = ${join(dir, 'lock')}`,
        `state directory = ${join(dir, 'state')}`,
        `cache directory = ${join(dir, 'cache')}`,
        `pid directory = ${join(dir, 'pid')}`,
        `ncalrpc dir = ${join(dir, 'ncalrpc')}`,
        `log file = ${join(dir, 'log', 'smbd.log')}`,
        `passdb backend = tdbsam:${join(dir, 'private', 'passdb.tdb')}`,
        'load printers = no',
        'printing = bsd',
        'printcap name = /dev/null',
        'disable spoolss = yes',
        'map to guest = never',
        '',
        '[gem]',
        `path = ${root}`,
        'read only = no',
        `valid users = ${username}`,
        '',
      ].join('\n'),
    );
    await runWithInput('smbpasswd', ['-c', config, '-s', '-a', username], `${password}\n${password}\n`);
    // detached: smbd signals its whole process group when it stops, which must not be the test runner's.
    child = spawn(SMBD, ['--foreground', '--no-process-group', '--debug-stdout', `--configfile=${config}`], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let log = '';
    const keep = (chunk: Buffer) => {
      log = (log + chunk).slice(-4000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const started = child;
    await waitForPort(port, {
      exited: () => (started.exitCode !== null ? `smbd exited (${started.exitCode}): ${log}` : undefined),
    });
    const pid = started.pid!;
    return {
      host: '127.0.0.1',
      port,
      share: 'gem',
      username,
      password,
      root,
      stop: cleanup,
      setPassword: (next) => runWithInput('smbpasswd', ['-c', config, '-s', username], `${next}\n${next}\n`),
      pause: () => signalAll(serviceProcesses(pid, userUid), 'SIGSTOP'),
      resume: () => signalAll(serviceProcesses(pid, userUid), 'SIGCONT'),
    };
  } catch (error) {
    await cleanup();
    throw error;
  }
}
