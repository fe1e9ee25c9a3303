/** The system's user accounts, from /etc/passwd: who owns a folder, and who runs the embedded cluster. */
import { readFileSync } from 'node:fs';

interface SystemUser {
  name: string;
  uid: number;
  gid: number;
}

/** Every account in /etc/passwd; none when it cannot be read. */
function systemUsers(): SystemUser[] {
  let text: string;
  try {
    text = readFileSync('/etc/passwd', 'utf8');
  } catch {
    return [];
  }
  return text.split('\n').flatMap((line) => {
    const [name, , uid, gid] = line.split(':');
    if (!name || uid === undefined || gid === undefined) return [];
    return [{ name, uid: Number(uid), gid: Number(gid) }];
  });
}

/** The account with this name, if there is one. */
export function userNamed(name: string): SystemUser | undefined {
  return systemUsers().find((user) => user.name === name);
}

/** The name of the account with this uid, or `#<uid>` (as sudo and runuser take it) if it has none. */
export function userNameOf(uid: number): string {
  return systemUsers().find((user) => user.uid === uid)?.name ?? `#${uid}`;
}

/** `word` as a shell reads it back: bare when it holds nothing the shell treats specially, else quoted. */
export function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/**
 * The words that run a command as user `owner` from user `me`, keeping the environment (GEM_DATA_DIR,
 * DATABASE_URL, …): `sudo -E` for root; as root `runuser -u <name> --` (it takes a name only); else
 * `sudo -E -u <name>` (sudo also takes `#<uid>`, for an owner /etc/passwd does not name).
 */
export function runAsOwner(owner: number, me: number): string {
  if (owner === 0) return 'sudo -E';
  const name = userNameOf(owner);
  return me === 0 && !name.startsWith('#')
    ? `runuser -u ${shellWord(name)} --`
    : `sudo -E -u ${shellWord(name)}`;
}
