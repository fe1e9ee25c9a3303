/**
 * The SMB destination's local temp folders: the 0600 file smbclient reads its password from (`-A`:
 * never the command line, so never in `ps`), and the spool of a backup that comes as a stream. Each is
 * named after the process that made it (`gem-smb-auth.p<pid>.XXXXXX`) and removed when done; one a
 * killed process left (a password, or a whole backup, in the temp dir) goes at the next agent's start.
 */
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isAbandonedTemp } from '../system/atomic-file';

const PREFIXES = { auth: 'gem-smb-auth.', spool: 'gem-smb-spool.' } as const;
/** What earlier versions named them (`gem-smb-XXXXXX`, `gem-smb-spool-XXXXXX`, no owner): removed once this old. */
const UNOWNED = /^gem-smb-(spool-)?[A-Za-z0-9]{6}$/;
const UNOWNED_MAX_AGE_MS = 3600_000;

/** A new temp folder of this process (mode 0700, as mkdtemp makes it). */
export function smbTempDir(kind: keyof typeof PREFIXES): Promise<string> {
  return mkdtemp(join(tmpdir(), `${PREFIXES[kind]}p${process.pid}.`));
}

export interface AuthFile {
  dir: string;
  file: string;
}

/** Writes `lines` to a new 0600 auth file; remove its `dir` once smbclient has read it. */
export async function writeAuthFile(lines: string[]): Promise<AuthFile> {
  const dir = await smbTempDir('auth');
  const file = join(dir, 'auth');
  try {
    await writeFile(file, `${lines.join('\n')}\n`, { mode: 0o600 });
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  return { dir, file };
}

/**
 * Removes what a killed process left in the temp dir: the folders of a process that no longer runs,
 * and unowned ones of earlier versions after an hour. Returns the names removed.
 */
export async function removeAbandonedSmbTemp(root = tmpdir()): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(root).catch(() => [] as string[])) {
    const owned = Object.values(PREFIXES).some((prefix) => name.startsWith(prefix));
    let abandoned = owned && isAbandonedTemp(name);
    if (!owned && UNOWNED.test(name)) {
      const info = await stat(join(root, name)).catch(() => undefined);
      abandoned = !!info?.isDirectory() && Date.now() - info.mtimeMs > UNOWNED_MAX_AGE_MS;
    }
    if (!abandoned) continue;
    // Another user's folder (the sticky temp dir) cannot be removed: it is theirs to sweep.
    await rm(join(root, name), { recursive: true, force: true }).then(
      () => removed.push(name),
      () => {},
    );
  }
  return removed;
}
