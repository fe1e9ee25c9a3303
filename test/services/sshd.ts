// A real OpenSSH sshd on 127.0.0.1 for SFTP tests: its own config, host key, a password user and a key user.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, waitForPort } from './ports';
import { serviceProcesses, signalAll, stopTree } from './process-tree';

const run = promisify(execFile);
const SSHD = '/usr/sbin/sshd';

export interface SshdService {
  host: string;
  port: number;
  /** Logs in with a password. Its home (= `root`) is where relative remote paths land. */
  passwordUser: { username: string; password: string };
  /** Logs in with an ed25519 key (OpenSSH format); same Unix identity and home as the password user. */
  keyUser: {
    username: string;
    privateKey: string;
    /** The same user's second key, encrypted with `passphrase`. */
    encryptedPrivateKey: string;
    passphrase: string;
    /** A PuTTY-format (.ppk) key text, for the "wrong key format" error. */
    puttyPrivateKey: string;
  };
  /** Home folder of both users (absolute path on this machine). */
  root: string;
  /** Host key fingerprint as `ssh-keygen -lf` prints it: `SHA256:base64`. */
  hostKeyFingerprint: string;
  /** Freezes sshd and every session process (SIGSTOP): connections hang instead of failing. */
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

/** Runs a command with an argument array, retrying while /etc/passwd is locked by a parallel test file. */
async function runAdmin(file: string, args: string[], input?: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await new Promise<void>((resolve, reject) => {
        const child = spawn(file, args, {
          stdio: [input === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr?.on('data', (chunk) => {
          stderr += chunk;
        });
        child.on('error', reject);
        child.on('close', (code) =>
          code === 0 ? resolve() : reject(new Error(`${file} failed (${code}): ${stderr}`)),
        );
        child.stdin?.on('error', () => {}); // a tool that exits without reading its input
        child.stdin?.end(input);
      });
      return;
    } catch (error) {
      if (attempt >= 20 || !/lock|currently used/i.test(String(error))) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100 + Math.random() * 200));
    }
  }
}

/** Creates a throwaway Unix user (nologin shell) with the given home; `shareUidWith` reuses another user's uid. */
export async function createUnixUser(
  username: string,
  home: string,
  password: string,
  shareUidWith?: string,
): Promise<void> {
  const args = ['-M', '-d', home, '-s', '/usr/sbin/nologin'];
  if (shareUidWith !== undefined) {
    const { uid, gid } = await unixIds(shareUidWith);
    args.push('-o', '-u', String(uid), '-g', String(gid));
  }
  await runAdmin('useradd', [...args, username]);
  await runAdmin('chpasswd', [], `${username}:${password}\n`);
}

/** The numeric uid and primary gid of a Unix user. */
export async function unixIds(username: string): Promise<{ uid: number; gid: number }> {
  const { stdout: uid } = await run('id', ['-u', username]);
  const { stdout: gid } = await run('id', ['-g', username]);
  return { uid: Number(uid), gid: Number(gid) };
}

/** Removes a user made by createUnixUser; the home folder is removed by the caller. */
export async function deleteUnixUser(username: string): Promise<void> {
  try {
    await runAdmin('userdel', [username]);
  } catch (error) {
    if (/does not exist/i.test(String(error))) return;
    // A session that outlived the service's stop keeps the user "in use"; the service is gone, so force it.
    try {
      await runAdmin('userdel', ['-f', username]);
    } catch (forced) {
      // Said aloud rather than thrown: a stop() must go on to stop the rest, and a start's own error must win.
      console.warn(`test user ${username} was left behind (remove it with: userdel ${username}): ${forced}`);
    }
  }
}

/**
 * An ed25519 key; one bcrypt round for a passphrase (OpenSSH's default 16 take ~0.1 s here and ~0.3 s in
 * ssh2's bcrypt at every use): the tests check that the passphrase is needed and right, not its cost.
 */
async function keygen(path: string, passphrase: string): Promise<void> {
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', passphrase, '-a', '1', '-C', 'gem-test', '-f', path]);
}

/** A PPK text as PuTTY writes it; only its shape matters (the provider must refuse it by format). */
function puttyKeyText(publicKeyLine: string): string {
  const publicBlob = publicKeyLine.split(' ')[1] ?? '';
  return [
    'PuTTY-User-Key-File-3: ssh-ed25519',
    'Encryption: none',
    'Comment: gem-test',
    'Public-Lines: 2',
    publicBlob.slice(0, 64),
    publicBlob.slice(64),
    'Private-Lines: 1',
    randomBytes(36).toString('base64'),
    `Private-MAC: ${randomBytes(32).toString('hex')}`,
    '',
  ].join('\n');
}

/** Starts sshd on a free port of 127.0.0.1. Throws with the apt command if OpenSSH is not installed. */
export async function startSshd(): Promise<SshdService> {
  if (!existsSync(SSHD))
    throw new Error('openssh-server is not installed: apt-get install -y openssh-server');
  const dir = await mkdtemp(join(tmpdir(), 'gem-sshd-'));
  const root = join(dir, 'home');
  await chmod(dir, 0o755); // the users must be able to reach their home inside it
  const suffix = randomBytes(4).toString('hex');
  const passwordUser = { username: `gemsftp${suffix}`, password: randomBytes(12).toString('hex') };
  const keyUsername = `gemkey${suffix}`;
  const created: string[] = [];
  let child: ChildProcess | undefined;
  let userUid: number | undefined;
  const cleanup = async () => {
    // Every session process must be gone before userdel, which refuses a user that still runs something.
    if (child?.pid !== undefined) await stopTree(child.pid, { uid: userUid });
    for (const user of created.reverse()) await deleteUnixUser(user);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await mkdir(root, { mode: 0o755 });
    await createUnixUser(passwordUser.username, root, passwordUser.password);
    created.push(passwordUser.username);
    await createUnixUser(keyUsername, root, randomBytes(12).toString('hex'), passwordUser.username);
    created.push(keyUsername);
    const { uid, gid } = await unixIds(passwordUser.username);
    userUid = uid;
    await chown(root, uid, gid);
    await chmod(root, 0o755);

    await keygen(join(dir, 'host_key'), '');
    await keygen(join(dir, 'client_key'), '');
    const passphrase = randomBytes(8).toString('hex');
    await keygen(join(dir, 'client_key_encrypted'), passphrase);
    const clientPub = await readFile(join(dir, 'client_key.pub'), 'utf8');
    const encryptedPub = await readFile(join(dir, 'client_key_encrypted.pub'), 'utf8');
    await mkdir(join(dir, 'authorized_keys'));
    await writeFile(join(dir, 'authorized_keys', keyUsername), clientPub + encryptedPub, { mode: 0o644 });
    const { stdout: fingerprintLine } = await run('ssh-keygen', ['-l', '-f', join(dir, 'host_key.pub')]);
    const hostKeyFingerprint = /SHA256:[A-Za-z0-9+/]+/.exec(fingerprintLine)?.[0];
    if (hostKeyFingerprint === undefined)
      throw new Error(`unexpected ssh-keygen -l output: ${fingerprintLine}`);

    const port = await freePort();
    const config = join(dir, 'sshd_config');
    await writeFile(
      config,
      [
        `Port ${port}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${join(dir, 'host_key')}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${join(dir, 'authorized_keys')}/%u`,
        'PasswordAuthentication yes',
        'KbdInteractiveAuthentication no',
        'PubkeyAuthentication yes',
        'UsePAM no',
        'StrictModes no',
        `AllowUsers ${passwordUser.username} ${keyUsername}`,
        'MaxStartups 100',
        'Subsystem sftp internal-sftp',
        '',
      ].join('\n'),
    );
    await mkdir('/run/sshd', { recursive: true, mode: 0o755 });
    child = spawn(SSHD, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr?.on('data', (chunk) => {
      log = (log + chunk).slice(-4000);
    });
    const started = child;
    await waitForPort(port, {
      exited: () => (started.exitCode !== null ? `sshd exited (${started.exitCode}): ${log}` : undefined),
    });
    const pid = started.pid!;
    return {
      host: '127.0.0.1',
      port,
      passwordUser,
      keyUser: {
        username: keyUsername,
        privateKey: await readFile(join(dir, 'client_key'), 'utf8'),
        encryptedPrivateKey: await readFile(join(dir, 'client_key_encrypted'), 'utf8'),
        passphrase,
        puttyPrivateKey: puttyKeyText(clientPub.trim()),
      },
      root,
      hostKeyFingerprint,
      // Sessions run as the test users' own uid, so they are found even once re-parented to init.
      pause: () => signalAll(serviceProcesses(pid, userUid), 'SIGSTOP'),
      resume: () => signalAll(serviceProcesses(pid, userUid), 'SIGCONT'),
      stop: cleanup,
    };
  } catch (error) {
    await cleanup();
    throw error;
  }
}
