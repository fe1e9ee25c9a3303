// Signals a service process and every process it forked (sshd and smbd fork one child per connection).
import { readdirSync, readFileSync } from 'node:fs';

/** The pid and all its descendants, parents first, read from /proc. */
export function processTree(rootPid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // the process ended while we looked
    }
    // The command name may hold spaces and parentheses; the parent pid is the 2nd field after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(entry));
    children.set(ppid, list);
  }
  const result: number[] = [];
  const queue = [rootPid];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    result.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return result;
}

/** Sends `signal` to the pid and its descendants, ignoring ones that already ended. */
export function signalTree(rootPid: number, signal: NodeJS.Signals): void {
  for (const pid of processTree(rootPid)) {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}
