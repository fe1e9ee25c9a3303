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
