/**
 * A lock file so that the agent and the CLI never run two mutating jobs at once on the same data dir;
 * the same lock files guard the service, the cluster's start and each state file's update.
 *
 * A holder in another PID namespace (the agent in one container, `docker run … gem-backup restore` in
 * another, on one data dir) cannot be checked by its pid from here: its pid names no process, or an
 * unrelated one, in ours. Every holder refreshes its lock file's mtime while it holds it (a
 * heartbeat), and such a holder counts as alive while its lock file is fresh.
 */
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { link, open, readdir, unlink, utimes, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { AppError } from '../errors';
import { createLogger } from '../log';

/** What a lock file (and a takeover claim) holds: who, and a nonce naming this one taking. */
interface Holder {
  pid: number;
  /**
   * The holder process's start (field 22 of /proc/<pid>/stat) and the kernel's boot id: a pid alone
   * may name another process once the holder died (after a container restart, say). Absent where
   * /proc is not readable, and in lock files of earlier versions.
   */
  started?: string;
  boot?: string;
  /**
   * The holder's PID namespace (`pid:[<inode>]`, from /proc/self/ns/pid): a holder in another one is
   * judged by its lock file's freshness, not its pid. Absent where unreadable and in older lock files.
   */
  ns?: string;
  nonce: string;
  what: string;
  since: string;
}

/** A lock file as read: its identity (nonce, or a hash for files without one) and its holder. */
interface Seen {
  id: string;
  holder: Partial<Holder> | undefined;
  /** How long ago the file was last modified (written, or refreshed by its holder's heartbeat). */
  ageMs: number;
}

/**
 * Timing of the heartbeat: a holder refreshes its lock file's mtime every `heartbeatMs`; a holder in
 * another PID namespace whose lock file is older than `foreignMaxAgeMs` is dead. Mutable for tests.
 */
export const lockTiming = { heartbeatMs: 15_000, foreignMaxAgeMs: 120_000 };

/** Takeovers of a lock whose holder ran in another PID namespace are logged (they rest on a timeout). */
const log = createLogger({ level: 'warn', base: { component: 'job-lock' } });

/** Nonces of the locks and takeover claims this process holds now (a same-pid holder not here is dead). */
const held = new Set<string>();
/** Per lock path, the tail of this process's acquire attempts: they run one after another. */
const queues = new Map<string, Promise<unknown>>();

/** When process `pid` started (clock ticks after boot), from /proc; undefined if that cannot be read. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (the command) is in parentheses and may hold spaces: count the fields after it.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function bootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** This process's PID namespace, e.g. `pid:[4026531836]`; undefined if /proc cannot tell. */
function pidNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return undefined;
  }
}

const BOOT = bootId();
const STARTED = processStart(process.pid);
const NS = pidNamespace();

/** True if `holder` ran in another PID namespace than ours on this same kernel: its pid means nothing here. */
function foreign(holder: Partial<Holder>): boolean {
  return typeof holder.ns === 'string' && NS !== undefined && holder.ns !== NS;
}

/**
 * A holder is dead when its process is known gone (ESRCH; EPERM means it runs as another user), or
 * when its pid now names another process: the kernel was booted again, or the process with that pid
 * started at another time than the holder. A holder in another PID namespace (same boot) is alive
 * while its file (`ageMs` old) is fresher than `lockTiming.foreignMaxAgeMs`: its heartbeat refreshes it.
 */
function alive(holder: Partial<Holder> | undefined, ageMs: number): boolean {
  if (!holder || typeof holder.pid !== 'number') return false;
  if (typeof holder.boot === 'string' && BOOT !== undefined && holder.boot !== BOOT) return false;
  if (foreign(holder)) return ageMs <= lockTiming.foreignMaxAgeMs;
  if (holder.pid === process.pid) return typeof holder.nonce === 'string' && held.has(holder.nonce);
  if (typeof holder.started === 'string') {
    const started = processStart(holder.pid);
    if (started !== undefined && started !== holder.started) return false;
  }
  try {
    process.kill(holder.pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** Reads a lock-like file (content and age from one open file); undefined if there is none. */
async function look(path: string): Promise<Seen | undefined> {
  let text: string;
  let ageMs: number;
  try {
    const handle = await open(path, 'r');
    try {
      text = await handle.readFile('utf8');
      ageMs = Date.now() - (await handle.stat()).mtimeMs;
    } finally {
      await handle.close();
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const hash = createHash('sha256').update(text).digest('hex').slice(0, 24);
  let holder: Partial<Holder> | undefined;
  try {
    const parsed = JSON.parse(text) as unknown;
    if (parsed && typeof parsed === 'object') holder = parsed as Partial<Holder>;
  } catch {
    holder = undefined;
  }
  if (!holder) return { id: `h${hash}`, holder: undefined, ageMs };
  return { id: typeof holder.nonce === 'string' ? holder.nonce : `h${hash}`, holder, ageMs };
}

/** Unreadable content younger than this may be an older version's writer between create and write. */
const GARBAGE_GRACE_MS = 5_000;

function stale(seen: Seen): boolean {
  if (!seen.holder) return seen.ageMs > GARBAGE_GRACE_MS;
  return !alive(seen.holder, seen.ageMs);
}

/**
 * Creates `path` holding `holder` in one step: the content is written to a temp file first and then
 * hard-linked to `path`, so nobody ever sees the file empty. False if `path` exists.
 */
async function createWithContent(path: string, holder: Holder): Promise<boolean> {
  const temp = `${path}.${holder.nonce}.tmp`;
  try {
    // Inside the try: a full disk fails the write after the file was created (empty), and that
    // temp must go too.
    await writeFile(temp, JSON.stringify(holder), { mode: 0o600, flag: 'wx' });
    try {
      await link(temp, path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw error;
    }
    return true;
  } finally {
    await unlink(temp).catch(() => {});
  }
}

/** A takeover claim is `<lock>.takeover-<id>`: `id` names the lock (or the claim) it claims. */
const CLAIM = 'takeover-';

/**
 * Removes what dead processes left of the lock at `path`: its temp files (`<lock>.<nonce>.tmp`, a
 * takeover claim's `<lock>.takeover-<id>.<nonce>.tmp`), left between writing and removing one (a
 * crash), and its spent takeover claims (see removeSpentClaims). A live writer's temp is left alone:
 * its content names a live holder, or (unreadable) it is younger than the grace a writer needs.
 * Returns the names removed.
 */
export async function removeAbandonedLockFiles(path: string): Promise<string[]> {
  const dir = dirname(path);
  const prefix = `${basename(path)}.`;
  const removed: string[] = [];
  const claims: string[] = [];
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    if (!name.endsWith('.tmp')) {
      if (name.startsWith(`${prefix}${CLAIM}`)) claims.push(name);
      continue;
    }
    const seen = await look(join(dir, name)).catch(() => undefined);
    if (!seen || !stale(seen)) continue;
    await unlink(join(dir, name)).catch(() => {});
    removed.push(name);
  }
  return [...removed, ...(await removeSpentClaims(path, claims))];
}

/**
 * Removes the takeover claims among `names` whose taker died and whose target (the lock or the claim
 * with that id) is gone: a taker that died after removing the lock, before its claims, leaves them,
 * and no takeover ever looks at them again. Ids are nonces, never used again, so such a claim is
 * nobody's. One whose target is still there stays: the takeover of that lock removes it, and removing
 * it here would let a second taker in beside a live one claiming over it (see claimTakeover). Claims
 * over a claim removed go in the next round.
 */
async function removeSpentClaims(path: string, names: string[]): Promise<string[]> {
  const dir = dirname(path);
  const target = (name: string) => name.slice(`${basename(path)}.${CLAIM}`.length);
  const removed: string[] = [];
  let left = names;
  for (let round = 0; round < 9 && left.length > 0; round++) {
    const claims = await Promise.all(
      left.map(async (name) => ({ name, seen: await look(join(dir, name)).catch(() => undefined) })),
    );
    // The lock last: one gone after its claims were read is gone for good (its id never comes back).
    // One that cannot be read may be any lock: its claims stay.
    const lock = await look(path).catch(() => null);
    if (lock === null) break;
    const present = new Set([lock?.id, ...claims.map((c) => c.seen?.id)]);
    const spent = claims.filter((c) => c.seen && stale(c.seen) && !present.has(target(c.name)));
    if (spent.length === 0) break;
    for (const { name } of spent) {
      await unlink(join(dir, name)).catch(() => {});
      removed.push(name);
    }
    left = left.filter((name) => !spent.some((c) => c.name === name));
  }
  return removed;
}

function newHolder(what: string): Holder {
  return {
    pid: process.pid,
    ...(STARTED !== undefined ? { started: STARTED } : {}),
    ...(BOOT !== undefined ? { boot: BOOT } : {}),
    ...(NS !== undefined ? { ns: NS } : {}),
    nonce: randomUUID(),
    what,
    since: new Date().toISOString(),
  };
}

/**
 * The right to remove the stale lock named `id`: whoever creates `<lock>.takeover-<id>` first holds
 * it. A claim whose own holder died is itself claimed the same way (one level deeper), so a crash
 * mid-takeover never leaves the lock stuck. Returns the claim files made (to clean up) or undefined
 * when a live process is taking it over already.
 */
async function claimTakeover(lockPath: string, id: string, depth = 0): Promise<string[] | undefined> {
  if (depth > 8) return undefined;
  const claimPath = `${lockPath}.${CLAIM}${id}`;
  const claim = newHolder('takeover');
  held.add(claim.nonce);
  if (await createWithContent(claimPath, claim)) return [claimPath];
  held.delete(claim.nonce);
  const other = await look(claimPath);
  if (!other) return claimTakeover(lockPath, id, depth + 1);
  if (!stale(other)) return undefined;
  const deeper = await claimTakeover(lockPath, other.id, depth + 1);
  return deeper ? [claimPath, ...deeper] : undefined;
}

/**
 * Removes the lock at `path` if it still is the stale one named `id`. Safe against contenders: only
 * the holder of the takeover claim on `id` may remove it, and it re-reads the lock first (nobody
 * else can remove a lock with that id, so the re-read stays true until the unlink).
 */
async function removeStale(path: string, id: string): Promise<void> {
  const claims = await claimTakeover(path, id);
  if (!claims) return;
  try {
    const now = await look(path);
    if (now?.id === id && stale(now)) {
      await unlink(path).catch(() => {});
      if (now.holder && foreign(now.holder))
        log.warn(
          `took over the lock ${path}: its holder (${now.holder.what ?? 'unknown'}, process ${now.holder.pid}) ran in another PID namespace (another container) and has not refreshed the lock for ${Math.round(now.ageMs / 1000)} s, so it is taken as stopped`,
          { lock: path, holderPid: now.holder.pid, holderNamespace: now.holder.ns },
        );
    }
  } finally {
    // The lock no longer holds `id` (removed, or someone else's), so these claims are spent.
    for (const c of claims.reverse()) {
      const mine = await look(c).catch(() => undefined);
      if (mine?.holder?.nonce) held.delete(mine.holder.nonce);
      await unlink(c).catch(() => {});
    }
  }
}

function refusal(seen: Seen | undefined): AppError {
  const h = seen?.holder;
  if (!h) return new AppError('job_running', 'another job is running; try again when it ends');
  const who = foreign(h)
    ? `, process ${h.pid} in another PID namespace (another container)`
    : h.pid === process.pid
      ? ''
      : `, process ${h.pid}`;
  return new AppError(
    'job_running',
    `another job is running (${h.what ?? 'unknown'}${who}); try again when it ends`,
  );
}

/**
 * Refreshes the mtime of the lock at `path` while it is ours (nonce `nonce`) every
 * `lockTiming.heartbeatMs`: that freshness is what a process in another PID namespace goes by. Unref'd,
 * so it never keeps a process alive; stopped at release.
 */
function startHeartbeat(path: string, nonce: string): NodeJS.Timeout {
  const timer = setInterval(() => {
    void (async () => {
      const now = await look(path).catch(() => undefined);
      if (now?.holder?.nonce !== nonce) return;
      const at = new Date();
      await utimes(path, at, at).catch(() => {});
    })();
  }, lockTiming.heartbeatMs);
  timer.unref();
  return timer;
}

async function tryAcquire(path: string, what: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const me = newHolder(what);
    held.add(me.nonce);
    if (await createWithContent(path, me)) {
      let released = false;
      const heartbeat = startHeartbeat(path, me.nonce);
      return async () => {
        if (released) return;
        released = true;
        clearInterval(heartbeat);
        // Only our own lock is removed: a lock taken by someone else since is left alone.
        const now = await look(path).catch(() => undefined);
        if (now?.holder?.nonce === me.nonce && now.holder.pid === process.pid)
          await unlink(path).catch(() => {});
        held.delete(me.nonce);
      };
    }
    held.delete(me.nonce);
    const seen = await look(path);
    if (!seen) continue; // released meanwhile: try again
    if (!stale(seen)) throw refusal(seen);
    await removeStale(path, seen.id);
  }
  throw new AppError('job_running', 'could not take the job lock; try again');
}

/** Takes the lock or throws `job_running`; a lock left by a dead process is taken over. */
export async function acquireLock(path: string, what: string): Promise<() => Promise<void>> {
  const before = queues.get(path) ?? Promise.resolve();
  const mine = before.then(
    () => tryAcquire(path, what),
    () => tryAcquire(path, what),
  );
  const tail = mine.catch(() => {});
  queues.set(path, tail);
  void tail.then(() => {
    if (queues.get(path) === tail) queues.delete(path);
  });
  return mine;
}

/**
 * Removes the lock at `path` if its holder is dead (a crash), by the same safe takeover rule, and the
 * lock's temp files and spent takeover claims dead processes left; true if a live process (or this one) holds it.
 */
export async function clearStaleLock(path: string): Promise<boolean> {
  await removeAbandonedLockFiles(path);
  const seen = await look(path).catch(() => undefined);
  if (!seen) return false;
  if (!stale(seen)) return true;
  await removeStale(path, seen.id);
  return false;
}

/** True while another live process holds the lock at `path` (EPERM counts as alive). */
export async function heldByOtherProcess(path: string): Promise<boolean> {
  const seen = await look(path).catch(() => undefined);
  if (!seen?.holder) return false;
  if (!foreign(seen.holder) && seen.holder.pid === process.pid) return false;
  return alive(seen.holder, seen.ageMs);
}

/** This process's PID namespace (`pid:[<inode>]`), recorded with what it does; undefined where /proc cannot tell. */
export const PID_NAMESPACE = NS;

/** This process's start (see processStart), recorded with what it does: a reused pid names a process started at another time. */
export const PROCESS_STARTED = STARTED;

/**
 * True while the lock at `path` is held by process `pid` of PID namespace `ns` (another container's):
 * there its pid says nothing, so the lock's heartbeat does (fresh within `lockTiming.foreignMaxAgeMs`).
 */
export async function heldInNamespace(path: string, pid: number, ns: string): Promise<boolean> {
  const seen = await look(path).catch(() => undefined);
  if (!seen?.holder || seen.holder.pid !== pid || seen.holder.ns !== ns) return false;
  return alive(seen.holder, seen.ageMs);
}

/** The pid the lock at `path` names as its holder; undefined when there is no lock or its content is unreadable. */
export async function lockHolderPid(path: string): Promise<number | undefined> {
  const seen = await look(path).catch(() => undefined);
  return typeof seen?.holder?.pid === 'number' ? seen.holder.pid : undefined;
}

/**
 * Runs `work` holding the job lock, waiting (up to `waitMs`) while another job holds it: for work
 * that runs inside a non-exclusive job but must not overlap a mutating one (the DR push's
 * temporary backup, which would otherwise race a scheduled backup or maintenance for the lock).
 */
export async function withJobLock<T>(
  path: string,
  what: string,
  work: () => Promise<T>,
  options: { signal?: AbortSignal; waitMs?: number; pollMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (options.waitMs ?? 30 * 60_000);
  for (;;) {
    options.signal?.throwIfAborted();
    try {
      const release = await acquireLock(path, what);
      try {
        return await work();
      } finally {
        await release();
      }
    } catch (error) {
      if (!(error instanceof AppError && error.code === 'job_running') || Date.now() >= deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 5_000));
    }
  }
}
