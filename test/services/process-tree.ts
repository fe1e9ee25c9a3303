// Signals a service process and every process it forked (sshd and smbd fork one child per connection).
import { readdirSync, readFileSync } from 'node:fs';

function pids(): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number);
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined; // the process ended while we looked
  }
}

/** The pid and all its descendants, parents first, read from /proc. */
function processTree(rootPid: number): number[] {
  const children = new Map<number, number[]>();
  for (const pid of pids()) {
    const stat = read(`/proc/${pid}/stat`);
    if (stat === undefined) continue;
    // The command name may hold spaces and parentheses; the parent pid is the 2nd field after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = children.get(ppid) ?? [];
    list.push(pid);
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

/** Every process running as `uid` (a throwaway test user's sessions, whoever their parent now is). */
function processesOfUid(uid: number): number[] {
  return pids().filter((pid) => {
    const status = read(`/proc/${pid}/status`);
    // Real, effective, saved or filesystem uid: smbd sessions keep root as real uid and switch the others.
    const ids = /^Uid:\s+(.*)$/m.exec(status ?? '')?.[1]?.split(/\s+/) ?? [];
    return ids.includes(String(uid));
  });
}

/**
 * A service's processes: the tree under `rootPid`, plus (when given) everything running as `uid`, since
 * a session process whose parent exited is re-parented to init and leaves the tree.
 */
export function serviceProcesses(rootPid: number, uid?: number): number[] {
  const tree = processTree(rootPid);
  if (uid === undefined) return tree;
  return [...new Set([...tree, ...processesOfUid(uid)])];
}

/** Sends `signal` to each pid, ignoring ones that already ended. */
export function signalAll(list: number[], signal: NodeJS.Signals): void {
  for (const pid of list) {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

function alive(pid: number): boolean {
  const stat = read(`/proc/${pid}/stat`);
  return stat !== undefined && stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
}

/**
 * Stops a service and everything it forked: SIGCONT (in case it was paused), SIGTERM, and SIGKILL
 * for whatever is still there after `graceMs`. Resolves once none of them runs, so that the caller
 * can delete the service's Unix users and files.
 */
export async function stopTree(
  rootPid: number,
  options: { uid?: number; graceMs?: number } = {},
): Promise<void> {
  const deadline = Date.now() + (options.graceMs ?? 3000);
  const list = () => serviceProcesses(rootPid, options.uid).filter(alive);
  signalAll(list(), 'SIGCONT');
  signalAll(list(), 'SIGTERM');
  for (;;) {
    const remaining = list();
    if (remaining.length === 0) return;
    if (Date.now() > deadline) {
      signalAll(remaining, 'SIGKILL');
      await new Promise((resolve) => setTimeout(resolve, 100));
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
