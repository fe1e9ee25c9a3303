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

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Stops a service and everything it forked: SIGCONT (in case it was paused), SIGTERM, and SIGKILL
 * for whatever is still there after `graceMs`. Resolves once none of them runs, so that the caller
 * can delete the service's Unix users and files.
 */
export async function stopTree(rootPid: number, graceMs = 3000): Promise<void> {
  const pids = processTree(rootPid);
  for (const signal of ['SIGCONT', 'SIGTERM'] as const) signalTree(rootPid, signal);
  const deadline = Date.now() + graceMs;
  while (pids.some(alive)) {
    if (Date.now() > deadline) {
      for (const pid of pids.filter(alive)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
