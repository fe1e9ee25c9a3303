// A Windows / Samba share as a backup destination, driven through smbclient (no SMB library needed).
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { readdir, readFile, readlink, realpath, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { isOneLine, ONE_LINE_RULE } from '../../shared/api/settings';
import type {
  BackupSource,
  ProviderProperties,
  PutOptions,
  StorageProvider,
  StoredObject,
  TempSweepOptions,
  TempSweepResult,
} from '../../shared/storage/index';
import { StorageError } from '../../shared/storage/index';
import { isBackupName } from '../../shared/storage/names';
import { observeProgram } from '../system/spawn';
import {
  abortedError,
  assertObjectName,
  CLEANUP_TIMEOUT_MS,
  downloadStream,
  hashFile,
  isOwnTempName,
  SourceCheck,
  sweepTakes,
  tempNameFor,
  throwIfAborted,
  tryCleanup,
} from './checks';
import { type AuthFile, smbTempDir, writeAuthFile } from './smb-temp';

export interface SmbOptions {
  host: string;
  /** Default 445. */
  port?: number;
  share: string;
  username: string;
  password: string;
  domain?: string;
  /** Folder inside the share, e.g. `/gem/`; created on put if missing. */
  remotePath?: string;
  /** Seconds smbclient waits for the server per request (default 30). */
  timeoutSeconds?: number;
  /** Provider id shown in results (default `smb`). */
  id?: string;
  /**
   * How smbclient is run: the program and any arguments before smbclient's own (default
   * `['smbclient']`). Never from settings; tests run it under `stdbuf` to give it another stdin buffer.
   */
  command?: readonly [string, ...string[]];
}

const SMBCLIENT = ['smbclient'] as const;

/**
 * The most backup names a listing takes, and the most pages (requests) it makes: a destination holds a
 * few hundred of our backups, so a listing past these is a server that misbehaves or a folder that is not
 * ours. Refused with a clear error instead of paging (and growing in memory) without end. The S3, SFTP and
 * SMB listings share them; they live here because this module is always loaded (./s3 and ./sftp are
 * loaded only when a destination uses them, see ./index).
 */
export const MAX_LISTED_NAMES = 100_000;
export const MAX_LIST_PAGES = 10_000;

/**
 * Counts a listing's pages and names against MAX_LIST_PAGES and MAX_LISTED_NAMES, and refuses a
 * continuation token the server already gave (its listing would go round for ever). `where` names the
 * folder in the errors (permanent: asking again gets the same answer).
 */
/** How far a listing is read before it is refused (the defaults; a test gives smaller ones). */
export interface ListLimits {
  pages: number;
  names: number;
}

export const LIST_LIMITS: ListLimits = { pages: MAX_LIST_PAGES, names: MAX_LISTED_NAMES };

export class ListBound {
  private pages = 0;
  private names = 0;
  private readonly tokens = new Set<string>();

  constructor(
    private readonly where: string,
    private readonly limits: ListLimits = LIST_LIMITS,
  ) {}

  /**
   * One more page fetched; `more` if another follows, `next` the token (or marker) the server gave for
   * it, where it gives one.
   */
  page(more: boolean, next?: string): void {
    this.pages += 1;
    if (next !== undefined) {
      if (this.tokens.has(next)) {
        throw new StorageError(
          'io',
          `the listing of ${this.where} does not end: the server gave the same continuation token twice. The server is not working correctly: check it (or its S3 compatibility)`,
          { permanent: true },
        );
      }
      this.tokens.add(next);
    }
    if (more && this.pages >= this.limits.pages) {
      throw new StorageError(
        'io',
        `the listing of ${this.where} did not end after ${this.limits.pages.toLocaleString('en')} pages, far more than a backup folder takes: check the server, or give GEM a folder of its own`,
        { permanent: true },
      );
    }
  }

  /** One more name taken. */
  name(): void {
    this.names += 1;
    if (this.names > this.limits.names) throw tooManyNames(this.where, this.limits.names);
  }
}

/** The error of a listing past `limit` (MAX_LISTED_NAMES) backup names. */
export function tooManyNames(where: string, limit = MAX_LISTED_NAMES): StorageError {
  return new StorageError(
    'io',
    `the listing of ${where} holds more than ${limit.toLocaleString('en')} backups, far more than a destination of GEM holds (a few hundred); it was not read further: check the server, or give GEM a folder of its own`,
    { permanent: true },
  );
}

/**
 * The most output a `-c` run of smbclient is read to (a listing, a stat, a delete): about 700 000 lines
 * of `ls`, past the MAX_LISTED_NAMES a listing takes. A server that lists without end is cut off here
 * with a clear error, before the agent's memory is.
 */
const MAX_RUN_OUTPUT = 64 * 1024 * 1024;

/** What put() checks the source with: the sha256 of what was read, and a check against the declared size and sha256. */
interface FileCheck {
  sha256(): string;
  verify(source: { size: number; sha256?: string }): void;
}
/**
 * One entry of smbclient's `ls`: name, attribute letters, size, write time. The attributes are any of
 * smbclient's letters, upper case (`D` a folder, `A`, `H`...) and lower case (`s` sparse, `o` offline,
 * `r` reparse point, `c` compressed...: what Windows deduplication, tiering and compression set).
 */
const LS_LINE = /^ {2}(.+?)\s+([A-Za-z]*)\s+(\d+)\s+(\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4})$/;
const AUTH = [
  'LOGON_FAILURE',
  'WRONG_PASSWORD',
  'ACCOUNT_DISABLED',
  'ACCOUNT_LOCKED_OUT',
  'PASSWORD_EXPIRED',
  'NO_SUCH_USER',
];
const UNREACHABLE = [
  'CONNECTION_REFUSED',
  'HOST_UNREACHABLE',
  'NETWORK_UNREACHABLE',
  'IO_TIMEOUT',
  'CONNECTION_RESET',
  'CONNECTION_DISCONNECTED',
  'CONNECTION_ABORTED',
  'END_OF_FILE',
];
const MISSING = ['OBJECT_NAME_NOT_FOUND', 'NO_SUCH_FILE', 'OBJECT_PATH_NOT_FOUND', 'NOT_FOUND'];
/** What the server answers when a folder of a path is missing, or is a file (see refuseFileAsFolder). */
const NO_FOLDER = [...MISSING, 'NOT_A_DIRECTORY'];
/**
 * What sweepTemp() lists, in one smbclient run: our temp files (backups' and the probe's) and Test
 * Connection's probe. isOwnTempName then picks ours; a look-alike the patterns match stays.
 */
const SWEEP_PATTERNS = ['.tmp-gem-*', 'gem-connection-test-*'];

interface RunResult {
  output: string;
  statuses: string[];
}

/** Quotes one smbclient command argument; the -c parser splits commands at ';' and knows no escapes. */
function quote(path: string): string {
  if (/[";\u0000-\u001f]/.test(path))
    throw new StorageError('io', `path not usable with smbclient: ${path}`, { permanent: true });
  return `"${path}"`;
}

/** The size and write time of each `allinfo` in smbclient's output, in order. */
function parseAllinfo(output: string): { size: number; modifiedAt?: string }[] {
  const infos: { size: number; modifiedAt?: string }[] = [];
  let modifiedAt: string | undefined;
  for (const line of output.split('\n')) {
    const written = /^write_time:\s+(.+)$/.exec(line);
    if (written) {
      const date = new Date(written[1]!.trim());
      modifiedAt = Number.isNaN(date.getTime()) ? undefined : date.toISOString();
    }
    const stream = /^stream: \[::\$DATA\], (\d+) bytes$/.exec(line.trimEnd());
    if (stream) {
      infos.push({ size: Number(stream[1]), ...(modifiedAt ? { modifiedAt } : {}) });
      modifiedAt = undefined;
    }
  }
  return infos;
}

/** The NT_STATUS codes in smbclient's output, in order. */
function statusesIn(output: string): string[] {
  return [...output.matchAll(/NT_STATUS_([A-Z_]+)/g)].map((match) => match[1]!);
}

/** What a failure to start or run smbclient is, as a StorageError. */
function spawnFailure(error: unknown, signal: AbortSignal | undefined): StorageError {
  if (error instanceof StorageError) return error;
  if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
    return new StorageError('tool_missing', 'smbclient is not installed: apt-get install -y smbclient', {
      cause: error,
    });
  }
  if (signal?.aborted) return abortedError(error);
  return new StorageError('io', `smbclient could not run: ${String(error)}`, { cause: error });
}

/**
 * Bytes of each command line written to a session. smbclient polls stdin and then fgets() a line from
 * stdio's buffer, which glibc sizes to the pipe's block size (the page size: 4 KiB here, 64 KiB on some
 * ARM kernels): lines that came in the same read() as the first wait there unseen until more input
 * arrives. A line whose length is a multiple of the buffer ends exactly where a read ends, so the next
 * line stays in the pipe and wakes smbclient. 64 KiB is a multiple of every page size Linux uses up to
 * that; smbclient reads such a line as the command and then blank pieces (fgets into BUFSIZ, 8 KiB),
 * which it skips.
 */
const SESSION_LINE_BYTES = 64 * 1024;
/** The longest command: it must lie in the first BUFSIZ piece fgets() hands smbclient. */
const MAX_COMMAND_BYTES = 4096;
/** A command with known output (the share's current folder, printed without a server round trip). */
const SENTINEL = 'pwd';
const SENTINEL_LINE = /^Current directory is .*\n/m;

/** One step's output: what smbclient printed for its commands, before the sentinel's line. */
interface StepResult extends RunResult {
  /** smbclient ended before the sentinel (a refused login, a dropped connection): the output is all there was. */
  ended: boolean;
}

/**
 * One smbclient process whose commands come on its stdin, a step at a time: step() writes commands
 * and a sentinel and resolves with their output once the sentinel's line is printed, so the caller
 * can check what happened before it decides the next step. Ending stdin ends smbclient; nothing
 * not yet written runs, so if the agent dies between steps smbclient exits without the later ones.
 */
class SmbSession {
  private text = '';
  /** Where in `text` the next step's output starts. */
  private mark = 0;
  private exited = false;
  private failure: unknown;
  private readonly watchers = new Set<() => void>();

  constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    private readonly signal: AbortSignal | undefined,
    /** Removes the auth file: once smbclient answered a step it has read it, so it goes then, or at the end. */
    private forgetAuth: (() => Promise<void>) | undefined,
  ) {
    const take = (chunk: string) => {
      this.text += chunk;
      this.notify();
    };
    child.stdout.setEncoding('utf8').on('data', take);
    child.stderr.setEncoding('utf8').on('data', take);
    child.stdin.on('error', () => {}); // smbclient gone (refused login): its exit reports it
    child.on('error', (error) => {
      this.failure = error;
      this.notify();
    });
    child.on('close', () => {
      this.exited = true;
      this.notify();
    });
  }

  /** smbclient's process id (or that of the program `command` runs it under); undefined if it never started. */
  get pid(): number | undefined {
    return this.child.pid;
  }

  private notify(): void {
    for (const watcher of [...this.watchers]) watcher();
  }

  /**
   * Writes `commands` and the sentinel; resolves with their output once the sentinel's line is printed,
   * or with what there was if smbclient ended first. `timeoutMs` (none: smbclient's own per-request
   * timeout bounds a transfer of any length) kills smbclient and rejects.
   */
  step(commands: string[], timeoutMs?: number): Promise<StepResult> {
    const lines = [...commands, SENTINEL].map((command) => {
      const bytes = Buffer.byteLength(command);
      if (bytes >= MAX_COMMAND_BYTES || /[\r\n]/.test(command))
        throw new StorageError('io', 'smbclient command too long', { permanent: true });
      return `${command}${' '.repeat(SESSION_LINE_BYTES - 1 - bytes)}\n`;
    });
    if (!this.exited) this.child.stdin.write(lines.join(''));
    const done = this.until(() => {
      const rest = this.text.slice(this.mark);
      const sentinel = SENTINEL_LINE.exec(rest);
      if (sentinel) {
        this.mark += sentinel.index + sentinel[0].length;
        const output = rest.slice(0, sentinel.index);
        return { output, statuses: statusesIn(output), ended: false };
      }
      if (!this.exited) return undefined;
      this.mark = this.text.length;
      return { output: rest, statuses: statusesIn(rest), ended: true };
    }, timeoutMs);
    // Gone before the caller writes the next step: a kill during that step leaves no password behind.
    return done.finally(() => this.releaseAuth());
  }

  private async releaseAuth(): Promise<void> {
    const forget = this.forgetAuth;
    this.forgetAuth = undefined;
    await forget?.().catch(() => {});
  }

  /** Ends stdin and waits (at most `timeoutMs`, then kills) for smbclient to exit; never throws. */
  async close(timeoutMs: number): Promise<void> {
    this.child.stdin.end();
    await this.until(() => (this.exited || this.failure !== undefined ? true : undefined), timeoutMs).catch(
      () => {},
    );
    await this.releaseAuth();
  }

  private until<T>(found: () => T | undefined, timeoutMs?: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (settle: () => void) => {
        clearTimeout(timer);
        this.watchers.delete(check);
        this.signal?.removeEventListener('abort', onAbort);
        settle();
      };
      const check = () => {
        const value = found();
        if (value !== undefined) finish(() => resolve(value));
        else if (this.failure !== undefined) finish(() => reject(spawnFailure(this.failure, this.signal)));
      };
      // The spawn's signal kills smbclient; a step waiting for it ends now.
      const onAbort = () => finish(() => reject(abortedError(this.signal?.reason)));
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.child.kill('SIGKILL');
          finish(() =>
            reject(new StorageError('unreachable', `smbclient did not answer within ${timeoutMs / 1000} s`)),
          );
        }, timeoutMs);
      }
      if (this.signal?.aborted) return onAbort();
      this.signal?.addEventListener('abort', onAbort, { once: true });
      this.watchers.add(check);
      check();
    });
  }
}

/**
 * Hashes a local file (the source's localPath) for a check against the source's declared size and
 * sha256. A plain read loop: it shares two cores with smbclient and smbd, so no stream machinery. It
 * reports no progress: hashing ends long before the upload does (see watchReads for that).
 */
async function checkLocalFile(path: string, signal: AbortSignal | undefined): Promise<FileCheck> {
  let hashed: { sha256: string; bytes: number };
  try {
    hashed = await hashFile(path, { signal });
  } catch (error) {
    if (signal?.aborted) throw abortedError(error);
    throw new StorageError('io', `reading the backup failed: ${String(error)}`, { cause: error });
  }
  const { sha256, bytes } = hashed;
  return {
    sha256: () => sha256,
    verify(source) {
      if (bytes !== source.size) {
        throw new StorageError('integrity', `source gave ${bytes} bytes, expected ${source.size}`);
      }
      if (source.sha256 !== undefined && sha256 !== source.sha256.toLowerCase()) {
        throw new StorageError('integrity', 'source sha256 does not match the declared sha256');
      }
    },
  };
}

/** How often put() looks how far smbclient has read the file it uploads. */
const PROGRESS_POLL_MS = 250;

/** `pid` and the processes under it (a `command` wrapper that does not exec smbclient). */
async function processTree(pid: number): Promise<number[]> {
  const children = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  const below = await Promise.all(
    children
      .split(' ')
      .filter((child) => /^\d+$/.test(child))
      .map((child) => processTree(Number(child))),
  );
  return [pid, ...below.flat()];
}

/** The /proc fdinfo path of a descriptor that one of the processes from `pid` down holds open on `file`. */
async function findReader(pid: number, file: string): Promise<string | undefined> {
  for (const member of await processTree(pid)) {
    for (const fd of await readdir(`/proc/${member}/fd`).catch(() => [] as string[])) {
      const link = await readlink(`/proc/${member}/fd/${fd}`).catch(() => undefined);
      if (link === file) return `/proc/${member}/fdinfo/${fd}`;
    }
  }
  return undefined;
}

/**
 * Reports how many bytes of the local file `local` smbclient (process `pid`) has read so far: what it
 * read is what it has sent or is sending, unlike our own hashing of the file, which ends long before
 * the upload. The descriptor is found once (the one whose /proc/<pid>/fd link is the file; looked for
 * again only if it closes), then the `pos:` of its /proc fdinfo is read every PROGRESS_POLL_MS. Only a
 * position that grew is reported, so a server that stops answering stops the reports and a stall
 * guard sees it. Without /proc (not Linux) or with a smbclient that reads the file by pread(), nothing
 * is reported while the upload runs: progress then jumps to the end once the upload checked out, and a
 * stall guard shorter than the whole upload takes it for a dead server. Returns stop().
 */
function watchReads(pid: number | undefined, local: string, onRead: (bytes: number) => void): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  if (pid === undefined) return () => {};
  const file = realpath(local).catch(() => local);
  let fdinfo: string | undefined;
  let reported = 0;
  const look = async () => {
    try {
      fdinfo ??= await findReader(pid, await file);
      if (fdinfo === undefined) return;
      const position = Number(/^pos:\s+(\d+)/m.exec(await readFile(fdinfo, 'utf8'))?.[1]);
      if (position > reported && !stopped) {
        reported = position;
        onRead(position);
      }
    } catch {
      fdinfo = undefined; // closed: its number may come back for another file, so it is looked for again
    }
  };
  const tick = () => {
    void look().finally(() => {
      if (stopped) return;
      timer = setTimeout(tick, PROGRESS_POLL_MS);
      timer.unref(); // never what keeps the agent running
    });
  };
  timer = setTimeout(tick, PROGRESS_POLL_MS);
  timer.unref();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/**
 * Stores backups on an SMB share: put under a temp name and check it, then rename it to the final
 * name, in one smbclient session fed step by step; a local file is put as it is (hashed meanwhile),
 * any other source is spooled and checked first. Progress is what smbclient has read of the file it
 * puts (watchReads); get() streams smbclient's output as it arrives.
 */
export class SmbProvider implements StorageProvider {
  readonly id: string;
  /** Exclusive: the final rename without `-f`, which the server refuses for a taken name. */
  readonly properties: ProviderProperties = { atomicReplace: true, exclusivePut: true };
  private readonly options: SmbOptions;
  private readonly folders: string[];

  constructor(options: SmbOptions) {
    this.options = options;
    this.id = options.id ?? 'smb';
    this.folders = (options.remotePath ?? '/gem/')
      .split(/[/\\]+/)
      .filter((part) => part !== '' && part !== '.');
    for (const folder of this.folders) quote(folder);
  }

  private path(name: string): string {
    return [...this.folders, name].join('/');
  }

  /**
   * Writes the 0600 auth file smbclient reads the password from (never the command line, so not in `ps`).
   * smbclient drops the blanks a value there begins with: a password that begins with a space or tab goes
   * to a 0600 file of its own instead, which smbclient reads as it is (PASSWD_FILE, see spawnClient).
   */
  private writeAuthFile(): Promise<AuthFile> {
    const { username, password, domain } = this.options;
    const ownFile = /^[ \t]/.test(password);
    const lines = [`username = ${username}`, ...(ownFile ? [] : [`password = ${password}`])];
    if (domain) lines.push(`domain = ${domain}`);
    // Settings refuse them (ONE_LINE_RULE); a value with a line break would write lines of its own.
    if (![...lines, password].every(isOneLine)) {
      throw new StorageError('io', `the SMB user name, password or domain ${ONE_LINE_RULE}`, {
        permanent: true,
      });
    }
    return writeAuthFile(lines, ownFile ? password : undefined);
  }

  private connectArgs(authFile: string): string[] {
    return [
      `//${this.options.host}/${this.options.share}`,
      '-p',
      String(this.options.port ?? 445),
      '-m',
      'SMB3',
      '-A',
      authFile,
      '-t',
      String(this.options.timeoutSeconds ?? 30),
    ];
  }

  /**
   * Starts smbclient (as `command` says) with `args` and the credentials of `auth`, its messages in the C
   * locale that the parsers read.
   */
  private spawnClient(
    args: string[],
    auth: AuthFile,
    signal: AbortSignal | undefined,
  ): ChildProcessWithoutNullStreams {
    const [program, ...prefix] = this.options.command ?? SMBCLIENT;
    const child = spawn(program, [...prefix, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C', ...(auth.passwordFile ? { PASSWD_FILE: auth.passwordFile } : {}) },
      signal,
    });
    observeProgram(child, program, [...prefix, ...args]);
    return child;
  }

  /** Runs smbclient once with `commands` (`-c`); the password is in a 0600 auth file. */
  private async run(commands: string[], signal?: AbortSignal): Promise<RunResult> {
    throwIfAborted(signal);
    const auth = await this.writeAuthFile();
    try {
      const args = [...this.connectArgs(auth.file), '-c', commands.join('; ')];
      const { output, code } = await new Promise<{ output: string; code: number | null }>(
        (resolve, reject) => {
          const child = this.spawnClient(args, auth, signal);
          child.stdin.on('error', () => {}).end(); // -c: no input
          let text = '';
          const take = (chunk: string) => {
            if (text.length + chunk.length > MAX_RUN_OUTPUT) {
              child.kill('SIGKILL');
              reject(
                new StorageError(
                  'io',
                  `smbclient printed more than ${MAX_RUN_OUTPUT / 1024 / 1024} MiB for ${commands[0]?.split(' ')[0]} in ${this.where()}, far more than a backup folder lists (a few hundred backups); it was stopped: check the server, or give GEM a folder of its own`,
                  { permanent: true },
                ),
              );
              return;
            }
            text += chunk;
          };
          child.stdout.setEncoding('utf8').on('data', take);
          child.stderr.setEncoding('utf8').on('data', take);
          child.on('error', reject);
          child.on('close', (exitCode) => resolve({ output: text, code: exitCode }));
        },
      );
      const statuses = statusesIn(output);
      if (code !== 0 && statuses.length === 0) {
        throw new StorageError('io', `smbclient failed (${code}): ${output.trim().slice(-300)}`, {
          permanent: false,
        });
      }
      return { output, statuses };
    } catch (error) {
      throw spawnFailure(error, signal);
    } finally {
      await rm(auth.dir, { recursive: true, force: true });
    }
  }

  /** Opens one smbclient session fed on its stdin (see SmbSession); the caller must close() it. */
  private async openSession(signal?: AbortSignal): Promise<SmbSession> {
    throwIfAborted(signal);
    const auth = await this.writeAuthFile();
    try {
      // -E: smbclient's messages on stderr, which it does not buffer, so each step's output arrives as it is printed.
      const child = this.spawnClient([...this.connectArgs(auth.file), '-E'], auth, signal);
      return new SmbSession(child, signal, () => rm(auth.dir, { recursive: true, force: true }));
    } catch (error) {
      await rm(auth.dir, { recursive: true, force: true });
      throw spawnFailure(error, signal);
    }
  }

  /** Throws the StorageError for the first NT_STATUS in the output that is not in `ignore`. */
  private check(result: RunResult, what: string, ignore: string[] = []): void {
    const status = result.statuses.find((entry) => !ignore.includes(entry));
    if (status === undefined) return;
    const target = `//${this.options.host}/${this.options.share}`;
    if (AUTH.includes(status))
      throw new StorageError('auth_failed', `${target} refused the username or password`);
    if (status === 'BAD_NETWORK_NAME')
      throw new StorageError('path_missing', `share ${target} does not exist`);
    if (status === 'ACCESS_DENIED')
      throw new StorageError('permission_denied', `${target} denied access to ${what}`);
    if (UNREACHABLE.includes(status) || /Connection to .* failed/.test(result.output)) {
      throw new StorageError(
        'unreachable',
        `cannot reach ${target} on port ${this.options.port ?? 445} (NT_STATUS_${status})`,
      );
    }
    if (MISSING.includes(status)) throw new StorageError('not_found', `${what} does not exist on ${target}`);
    if (status === 'DISK_FULL' || status === 'QUOTA_EXCEEDED')
      throw new StorageError('no_space', `${target} is full`);
    throw new StorageError('io', `smbclient: NT_STATUS_${status} for ${what}`);
  }

  /**
   * Throws, naming it, when a folder of the backup folder's path is a file on the share: the server's
   * answer to using it as a folder ("path not found") would otherwise say the folder does not exist, or
   * that it holds no backups. Asked only once such an answer came.
   */
  private async refuseFileAsFolder(signal: AbortSignal | undefined): Promise<void> {
    const paths = this.folders.map((_, index) => this.folders.slice(0, index + 1).join('/'));
    if (paths.length === 0) return;
    const listing = await this.run(
      paths.map((path) => `ls ${quote(path)}`),
      signal,
    );
    // A listing of a name lists that entry; parseListing keeps the entries that are not folders.
    const files = new Set(this.parseListing(listing.output).map((entry) => entry.name));
    const file = paths.find((path) => files.has(path.slice(path.lastIndexOf('/') + 1)));
    if (file === undefined) return;
    throw new StorageError(
      'io',
      `/${file} on //${this.options.host}/${this.options.share} is a file, not a folder: choose another folder, or move the file away`,
      { permanent: true },
    );
  }

  private mkdirCommands(): string[] {
    return this.folders.map((_, index) => `mkdir ${quote(this.folders.slice(0, index + 1).join('/'))}`);
  }

  async put(
    name: string,
    source: BackupSource,
    options: Pick<PutOptions, 'signal' | 'onProgress' | 'exclusive' | 'tempTag'> = {},
  ): Promise<StoredObject> {
    assertObjectName(name);
    const { signal, tempTag } = options;
    const exclusive = options.exclusive ?? false;
    throwIfAborted(signal);
    if (source.localPath !== undefined) {
      // smbclient reads the file itself; it is hashed on the other core meanwhile and checked before we answer.
      const hashing = checkLocalFile(source.localPath, signal);
      hashing.catch(() => {}); // awaited below; a failed put must not also report it unhandled
      return this.putFile(name, source, source.localPath, hashing, {
        exclusive,
        tempTag,
        signal,
        onProgress: options.onProgress,
      });
    }
    // smbclient uploads from a file: spool and check first, so a bad source never reaches the share.
    const spool = await smbTempDir('spool');
    const local = join(spool, 'backup');
    try {
      const check = new SourceCheck(options.onProgress);
      try {
        await pipeline(
          Readable.fromWeb(source.open() as never),
          check,
          createWriteStream(local, { mode: 0o600 }),
          signal ? { signal } : {},
        );
      } catch (error) {
        if (signal?.aborted) throw abortedError(error);
        throw new StorageError('io', `reading the backup failed: ${String(error)}`, { cause: error });
      }
      check.verify(source);
      // Spooling reported the source's bytes; smbclient's reads of the spool then repeat the size, which
      // says nothing new but keeps a stall guard from taking the upload for a dead server.
      const onProgress = options.onProgress && (() => options.onProgress?.(source.size));
      return await this.putFile(name, source, local, Promise.resolve(check), {
        exclusive,
        tempTag,
        signal,
        onProgress,
      });
    } finally {
      await rm(spool, { recursive: true, force: true });
    }
  }

  /**
   * One smbclient session, driven a step at a time on its stdin. Step one makes the folders, puts the
   * file under a temp name and reads the temp's size back; smbclient carries on after a failed command,
   * so nothing in that step may touch the final name (a put that failed half way would be renamed into
   * it). Only once the temp's size and the local file's sha256 checked out is step two written: rename
   * over the final name (`-f`: the new copy is good, so it may replace a backup of the same name) and
   * read the final size back. A failure writes no more steps and removes the temp file; the final name
   * holds the previous backup or the checked copy. If the agent dies between the steps, smbclient sees
   * its stdin end and exits without renaming; the temp is left for sweepTemp().
   */
  private async putFile(
    name: string,
    source: BackupSource,
    local: string,
    hashing: Promise<FileCheck>,
    options: {
      /** Refuse a taken final name ('exists') instead of replacing it. */
      exclusive: boolean;
      tempTag: string | undefined;
      signal: AbortSignal | undefined;
      onProgress: ((bytes: number) => void) | undefined;
    },
  ): Promise<StoredObject> {
    const { exclusive, signal, onProgress } = options;
    const temp = this.path(tempNameFor(name, options.tempTag));
    const final = this.path(name);
    const timeoutMs = (this.options.timeoutSeconds ?? 30) * 1000;
    let renamed = false;
    let session: SmbSession | undefined;
    try {
      session = await this.openSession(signal);
      // The sign-in alone first: once it is answered smbclient has read the auth file, which then goes
      // (SmbSession), so the password neither waits in the temp dir for the whole upload nor stays there
      // if the agent is killed during it.
      const login = await session.step([], timeoutMs);
      this.check(login, name);
      if (login.ended) throw this.endedEarly(login);
      // The bytes smbclient read of the file, short of the whole: all of it is reported only once the
      // share holds it (the temp's size checked below); reading the last byte is not having sent it.
      const stopWatching = onProgress
        ? watchReads(session.pid, local, (bytes) => onProgress(Math.min(bytes, Math.max(source.size - 1, 0))))
        : () => {};
      let result: StepResult;
      try {
        // No deadline for the put: its length depends on the file and the link; smbclient's own
        // per-request timeout (-t) ends a transfer the server stopped answering.
        result = await session.step([
          ...this.mkdirCommands(),
          `put ${quote(local)} ${quote(temp)}`,
          `allinfo ${quote(temp)}`,
        ]);
      } finally {
        stopWatching();
      }
      // Statuses of the login, the mkdirs, the put and the temp's allinfo; an existing folder (a name
      // collision) is no failure, but one that may not be made is (else the put's "path not found" hides why).
      const putStatuses = result.output
        .split('\n')
        .filter((line) => !/OBJECT_NAME_COLLISION making remote directory/.test(line))
        .flatMap((line) => statusesIn(line));
      if (putStatuses.some((status) => NO_FOLDER.includes(status))) await this.refuseFileAsFolder(signal);
      this.check({ output: result.output, statuses: putStatuses }, name);
      if (result.ended) throw this.endedEarly(result);
      const uploaded = parseAllinfo(result.output)[0];
      if (uploaded?.size !== source.size) {
        throw new StorageError(
          'integrity',
          `${name} is ${uploaded?.size ?? 'missing'} bytes on the share, expected ${source.size}`,
        );
      }
      onProgress?.(source.size);
      const check = await hashing;
      check.verify(source);
      throwIfAborted(signal);
      // Exclusive: without -f the server refuses a taken name in the rename itself (no look before).
      const moved = await session.step(
        [`rename ${quote(temp)} ${quote(final)}${exclusive ? '' : ' -f'}`, `allinfo ${quote(final)}`],
        timeoutMs,
      );
      if (exclusive && moved.statuses.includes('OBJECT_NAME_COLLISION')) {
        throw new StorageError(
          'exists',
          `${name} already exists on //${this.options.host}/${this.options.share}`,
        );
      }
      this.check(moved, name);
      if (moved.ended) throw this.endedEarly(moved);
      // No status at all: the rename happened and the final name is the checked copy.
      renamed = true;
      const stored = parseAllinfo(moved.output)[0];
      if (stored?.size !== source.size) {
        throw new StorageError(
          'integrity',
          `${name} is ${stored?.size ?? 'missing'} bytes on the share, expected ${source.size}`,
        );
      }
      // Done: smbclient's logoff and exit (~20 ms) need not hold up the answer; close() reaps it.
      void session.close(timeoutMs);
      session = undefined;
      return { name, size: stored.size, modifiedAt: stored.modifiedAt, sha256: check.sha256() };
    } catch (error) {
      // smbclient ends (no further step written) before the cleanup's own session starts.
      await session?.close(timeoutMs);
      session = undefined;
      // A cancelled or failed put may have left part of the temp file; a down share keeps it for
      // sweepTemp(). The final name is removed only if the rename surely made it and its size is wrong.
      const doomed = [`del ${quote(temp)}`, ...(renamed && !signal?.aborted ? [`del ${quote(final)}`] : [])];
      await tryCleanup((cleanup) => this.run(doomed, cleanup), Math.min(CLEANUP_TIMEOUT_MS, timeoutMs));
      if (signal?.aborted && !(error instanceof StorageError && error.code === 'aborted')) {
        throw abortedError(error);
      }
      throw error;
    }
  }

  /** The error for a session that ended before its step's sentinel without an NT_STATUS saying why. */
  private endedEarly(result: RunResult): StorageError {
    return new StorageError('io', `smbclient ended early: ${result.output.trim().slice(-300)}`, {
      permanent: false,
    });
  }

  /**
   * Streams the object as smbclient reads it: `allinfo` then `get <remote> -` in one run, with -E so its
   * messages go to stderr and stdout carries the file's bytes alone. The call answers once allinfo told
   * the size (a missing object rejects here, mapped as every other call's errors); the stream then ends
   * with an error if smbclient reports a failure, exits badly or gave other than that many bytes.
   * Nothing is copied locally, so a reader that wants the first KiB costs about that; cancelling the
   * stream (or the signal) kills smbclient.
   */
  async get(name: string, options: { signal?: AbortSignal } = {}): Promise<ReadableStream<Uint8Array>> {
    assertObjectName(name);
    const { signal } = options;
    throwIfAborted(signal);
    const auth = await this.writeAuthFile();
    let authGone = false;
    const forgetAuth = () => {
      if (authGone) return;
      authGone = true;
      void rm(auth.dir, { recursive: true, force: true }).catch(() => {});
    };
    const remote = quote(this.path(name));
    let child: ChildProcessWithoutNullStreams;
    try {
      child = this.spawnClient(
        [...this.connectArgs(auth.file), '-E', '-c', `allinfo ${remote}; get ${remote} -`],
        auth,
        signal,
      );
    } catch (error) {
      forgetAuth();
      throw spawnFailure(error, signal);
    }
    child.stdin.on('error', () => {}).end(); // -c: no input
    let messages = '';
    let failure: unknown;
    let exitCode: number | null | undefined;
    const watchers = new Set<() => void>();
    const notify = () => {
      for (const watcher of [...watchers]) watcher();
    };
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      messages += chunk;
      notify();
    });
    child.on('error', (error) => {
      failure = error;
      notify();
    });
    child.on('close', (code) => {
      exitCode = code;
      notify();
    });
    const until = <T>(found: () => T | undefined) =>
      new Promise<T>((resolve, reject) => {
        const check = () => {
          let value: T | undefined;
          try {
            value = found();
          } catch (error) {
            watchers.delete(check);
            return reject(error);
          }
          if (value !== undefined) {
            watchers.delete(check);
            resolve(value);
          } else if (failure !== undefined) {
            watchers.delete(check);
            reject(spawnFailure(failure, signal));
          }
        };
        watchers.add(check);
        check();
      });
    const end = () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      child.stdout.destroy();
      forgetAuth();
    };
    // The size allinfo printed, and where in the messages the transfer's own start.
    let head: { size: number; after: number };
    try {
      head = await until(() => {
        const lines = messages.slice(0, messages.lastIndexOf('\n') + 1);
        const size = parseAllinfo(lines)[0]?.size;
        if (size !== undefined) return { size, after: lines.length };
        if (exitCode === undefined) return undefined;
        // Ended without the size: the status says why (a missing object is not_found).
        this.check({ output: messages, statuses: statusesIn(messages) }, name);
        throw new StorageError('io', `smbclient failed (${exitCode}): ${messages.trim().slice(-300)}`, {
          permanent: false,
        });
      });
    } catch (error) {
      end();
      throw spawnFailure(error, signal);
    }
    forgetAuth(); // smbclient logged in: it has read the auth file
    const exited = until(() => exitCode);
    exited.catch(() => {}); // awaited once the bytes are through; a cancelled read never asks
    const check = (result: RunResult) => this.check(result, name);
    async function* bytes(): AsyncGenerator<Uint8Array> {
      let received = 0;
      for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
        received += chunk.length;
        yield chunk;
      }
      const code = await exited;
      const rest = messages.slice(head.after);
      check({ output: rest, statuses: statusesIn(rest) });
      if (code !== 0) {
        throw new StorageError('io', `smbclient failed (${code}): ${rest.trim().slice(-300)}`, {
          permanent: false,
        });
      }
      if (received !== head.size) {
        throw new StorageError('integrity', `${name} gave ${received} bytes, the share said ${head.size}`);
      }
    }
    // A cancel kills smbclient first: a read still waiting on it (a stalled server) then ends at once.
    const reading = bytes();
    const chunks: AsyncIterable<Uint8Array> = {
      [Symbol.asyncIterator]: () => ({
        next: () => reading.next(),
        return: async () => {
          end();
          return reading.return(undefined);
        },
      }),
    };
    return downloadStream(
      chunks,
      (error) =>
        signal?.aborted
          ? abortedError(error)
          : error instanceof StorageError
            ? error
            : new StorageError('io', String(error), { cause: error }),
      end,
    );
  }

  async stat(name: string, options: { signal?: AbortSignal } = {}): Promise<StoredObject> {
    assertObjectName(name);
    const result = await this.run([`ls ${quote(this.path(name))}`], options.signal);
    this.check(result, name);
    const entry = this.parseListing(result.output).find((object) => object.name === name);
    if (!entry) throw new StorageError('not_found', `${name} does not exist on the share`);
    return entry;
  }

  async list(options: { signal?: AbortSignal } = {}): Promise<StoredObject[]> {
    const result = await this.run([`ls ${quote(this.path('*'))}`], options.signal);
    // A folder nothing was written to yet holds no backups (one that is a file is named as such).
    if (result.statuses.some((status) => NO_FOLDER.includes(status)))
      await this.refuseFileAsFolder(options.signal);
    if (result.statuses.some((status) => MISSING.includes(status))) return [];
    this.check(result, this.folders.join('/') || '/');
    const backups = this.parseListing(result.output).filter((entry) => isBackupName(entry.name));
    if (backups.length > MAX_LISTED_NAMES) throw tooManyNames(this.where());
    return backups;
  }

  /** The folder, for a listing's errors: `folder F of //HOST/SHARE`. */
  private where(): string {
    return `folder /${this.folders.join('/')} of //${this.options.host}/${this.options.share}`;
  }

  async delete(name: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.stat(name, options);
    this.check(await this.run([`del ${quote(this.path(name))}`], options.signal), name);
  }

  /**
   * Removes our own leftovers from the backup folder (see StorageProvider.sweepTemp and isOwnTempName):
   * put()'s `.tmp-gem-…` temp files and Test Connection's `gem-connection-test-….probe`.
   */
  async sweepTemp(options: TempSweepOptions = {}): Promise<TempSweepResult> {
    const { signal } = options;
    const listing = await this.run(
      SWEEP_PATTERNS.map((pattern) => `ls ${quote(this.path(pattern))}`),
      signal,
    );
    // A pattern with no match (or no folder yet) is reported as a missing file: nothing of that kind to
    // sweep, while the other pattern's listing still counts.
    this.check(listing, this.folders.join('/') || '/', MISSING);
    const removed: string[] = [];
    for (const entry of this.parseListing(listing.output)) {
      if (!isOwnTempName(entry.name) || !sweepTakes(entry.name, entry.modifiedAt, options)) continue;
      const deleted = await this.run([`del ${quote(this.path(entry.name))}`], signal);
      if (deleted.statuses.some((status) => MISSING.includes(status))) continue; // gone meanwhile
      this.check(deleted, entry.name);
      removed.push(entry.name);
    }
    return { removed };
  }

  private parseListing(output: string): StoredObject[] {
    const objects: StoredObject[] = [];
    for (const line of output.split('\n')) {
      const match = LS_LINE.exec(line.trimEnd());
      if (!match || match[2]!.includes('D')) continue;
      const modified = new Date(match[4]!);
      objects.push({
        name: match[1]!,
        size: Number(match[3]),
        modifiedAt: Number.isNaN(modified.getTime()) ? undefined : modified.toISOString(),
      });
    }
    return objects;
  }
}
