/**
 * The SMB destination's local temp folders: the 0600 file smbclient reads its password from (`-A`:
 * never the command line, so never in `ps`), and the spool of a backup that comes as a stream. Each is
 * named after the process that made it (`gem-smb-auth.p<pid>.XXXXXX`) and removed when done; one a
 * killed process left (a password, or a whole backup, in the temp dir) goes at the next agent's start.
 */
import { lstat, mkdtemp, readdir, rm, rmdir, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processAlive } from '../system/atomic-file';

const PREFIXES = { auth: 'gem-smb-auth.', spool: 'gem-smb-spool.' } as const;
/** `gem-smb-auth.p<pid>.XXXXXX` or `gem-smb-spool.p<pid>.XXXXXX`, as smbTempDir makes them. */
const OWNED = /^gem-smb-(auth|spool)\.p(\d+)\.[A-Za-z0-9]{6}$/;
/** What earlier versions named them (`gem-smb-XXXXXX`, `gem-smb-spool-XXXXXX`, no owner): removed once this old. */
const UNOWNED = /^gem-smb-(spool-)?[A-Za-z0-9]{6}$/;
const UNOWNED_MAX_AGE_MS = 3600_000;
/** The only files these folders ever hold: the auth file, the password file and the spooled backup. */
const KNOWN_FILES = ['auth', 'password', 'backup'];

/** A new temp folder of this process (mode 0700, as mkdtemp makes it). */
export function smbTempDir(kind: keyof typeof PREFIXES): Promise<string> {
  return mkdtemp(join(tmpdir(), `${PREFIXES[kind]}p${process.pid}.`));
}

export interface AuthFile {
  dir: string;
  file: string;
  /** The 0600 file holding only the password, when it is given (smbclient reads it as PASSWD_FILE). */
  passwordFile?: string;
}

/**
 * Writes `lines` to a new 0600 auth file, and `password` if given to a 0600 file of its own beside it;
 * remove their `dir` once smbclient has read them.
 */
export async function writeAuthFile(lines: string[], password?: string): Promise<AuthFile> {
  const dir = await smbTempDir('auth');
  const file = join(dir, 'auth');
  const passwordFile = password === undefined ? undefined : join(dir, 'password');
  try {
    await writeFile(file, `${lines.join('\n')}\n`, { mode: 0o600 });
    if (passwordFile) await writeFile(passwordFile, `${password}\n`, { mode: 0o600 });
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  return { dir, file, ...(passwordFile ? { passwordFile } : {}) };
}

/**
 * Removes what a killed process left in the temp dir: the folders of a process that no longer runs,
 * and unowned ones of earlier versions after an hour. Only a real folder of this user (lstat: never
 * through a symlink) with a name of ours, and in it only the files it is known to hold, then the
 * folder if that left it empty: nothing recursive in a directory every user can write to. Returns
 * the names removed.
 */
export async function removeAbandonedSmbTemp(root = tmpdir()): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(root).catch(() => [] as string[])) {
    const owner = OWNED.exec(name);
    if (!owner && !UNOWNED.test(name)) continue;
    const folder = join(root, name);
    const info = await lstat(folder).catch(() => undefined);
    if (!info?.isDirectory() || info.uid !== process.getuid?.()) continue;
    const abandoned = owner
      ? !processAlive(Number(owner[2]))
      : Date.now() - info.mtimeMs > UNOWNED_MAX_AGE_MS;
    if (!abandoned) continue;
    for (const file of KNOWN_FILES) await unlink(join(folder, file)).catch(() => {});
    // A folder holding anything else is not one of ours as we made it: left alone.
    await rmdir(folder).then(
      () => removed.push(name),
      () => {},
    );
  }
  return removed;
}
