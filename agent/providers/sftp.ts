// An SFTP server (OpenSSH or any SFTP v3 server) as a backup destination, over ssh2-sftp-client.
import { createHash, randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Client, SFTPWrapper, Stats } from 'ssh2';
import SftpClient from 'ssh2-sftp-client';
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
import {
  abortedError,
  asStorageError,
  assertObjectName,
  CLEANUP_TIMEOUT_MS,
  downloadStream,
  isOwnTempName,
  NETWORK_CODES,
  SourceCheck,
  sweepTakes,
  tempNameFor,
  throwIfAborted,
  tryCleanup,
} from './checks';
import { CHECK_TIMEOUT_MS, type Lease, SharedConnection } from './shared-connection';
import { ListBound, type ListLimits } from './smb';

export interface SftpOptions {
  host: string;
  /** Default 22. */
  port?: number;
  username: string;
  password?: string;
  /** OpenSSH-format private key text (PuTTY .ppk keys are refused with 'bad_key_format'). */
  privateKey?: string;
  passphrase?: string;
  /** Folder for the backups, absolute or relative to the user's home; created on put if missing. */
  remotePath: string;
  /** Pinned host key, as `ssh-keygen -lf` prints it (`SHA256:base64`); any other key is refused. */
  hostKeyFingerprint?: string;
  /**
   * Trust on first use: with no key pinned, called once with the server's key after the first successful
   * sign-in; that key is then pinned for this provider's later connections. A StorageError it throws
   * refuses the connection (a pin saved elsewhere meanwhile that is not this key); any other failure is
   * ignored (the key could not be saved: it is offered again at the next connection).
   */
  onHostKey?: (fingerprint: string) => void | Promise<void>;
  /**
   * Connect and handshake timeout (default 20 s), and again for the SFTP service to answer once signed
   * in; a frozen server fails after it as 'unreachable'. Keepalives
   * go every timeout/2 (at most 10 s), so a server that freezes mid-transfer fails after about 3 of them.
   */
  timeoutMs?: number;
  /**
   * How long the server may take to answer one SFTP request (default REQUEST_TIMEOUT_MS, 60 s), or, while
   * an upload's writes or a download's reads are in flight, between two answers. A server that answers
   * keepalives but no request (its sftp-server stuck on a dead mount or a failing disk) fails then as
   * 'unreachable', and the connection is closed.
   */
  requestTimeoutMs?: number;
  /** Use posix-rename@openssh.com when the server offers it (default true); false forces plain SFTP rename. */
  posixRename?: boolean;
  /** How far a listing is read before it is refused (default LIST_LIMITS: 10 000 answers, 100 000 names). */
  listLimits?: ListLimits;
  /**
   * How long the connection stays open once no operation uses it, for the next one (default IDLE_CLOSE_MS,
   * 5 s). Unused more than CHECK_AFTER_IDLE_MS (1 s), it must answer a realpath within CHECK_TIMEOUT_MS
   * (3 s, or timeoutMs if shorter) before it is used again: one that froze meanwhile is replaced.
   */
  idleCloseMs?: number;
  /** Test hooks. */
  faults?: {
    /**
     * Runs right before the new copy is renamed in: on the plain-rename path after the old copy was moved
     * aside, and before an exclusive put's rename. Not on the posix-rename path.
     */
    beforeReplace?: () => Promise<void>;
  };
  /** Provider id shown in results (default `sftp`). */
  id?: string;
}

const PUTTY_HINT = 'key is in PuTTY format; convert with: puttygen key.ppk -O private-openssh -o key';
/** SFTP v3 status codes (draft-ietf-secsh-filexfer-02). */
const SFTP_NO_SUCH_FILE = 2;
const SFTP_PERMISSION_DENIED = 3;
/** SSH_FX_FAILURE: OpenSSH's answer to a write that failed on its side (ENOSPC, EDQUOT, EIO...). */
const SFTP_FAILURE = 4;

/** SHA256 fingerprint of a raw host key, formatted like `ssh-keygen -lf`. */
export function hostKeyFingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

interface Session {
  client: SftpClient;
  sftp: SFTPWrapper;
}

/** How long a server may take to answer one SFTP request (SftpOptions.requestTimeoutMs), as S3's requests. */
export const REQUEST_TIMEOUT_MS = 60_000;

/** How long a server may leave a request unanswered, and the server's `host:port` to name when it does. */
interface AnswerLimit {
  ms: number;
  server: string;
}

/**
 * A request the server left unanswered past its limit. The connection it was sent on is taken for dead
 * (its operation fails and the connection is closed): a request sent after it would wait as long again,
 * as OpenSSH's sftp-server answers a session's requests one after another.
 */
class UnansweredError extends StorageError {}

function unanswered(limit: AnswerLimit): StorageError {
  return new UnansweredError(
    'unreachable',
    `${limit.server} did not answer an SFTP request within ${limit.ms / 1000} s`,
  );
}

/** ssh2's connection under an ssh2-sftp-client. */
function sshOf(client: SftpClient): Client {
  return (client as unknown as { client: Client }).client;
}

/**
 * Failures that say nothing about the connection: the server's own answer to a request (no such file,
 * no permission, name taken). Any other failure retires the connection it happened on.
 */
const SERVER_ANSWERS = new Set<string>(['not_found', 'permission_denied', 'exists']);

/** Bytes of WRITE requests kept in flight: OpenSSH's sftp keeps 64 × 32 KiB; a round trip per request is what made uploads slow. */
export const WRITE_WINDOW_BYTES = 4 * 1024 * 1024;

/**
 * Writes a stream of chunks to an open remote file with many WRITE requests in flight at increasing
 * offsets (ssh2's own write waits for each ack before sending the next piece of a buffer). Each piece is
 * at most the server's write limit; the first failed write fails the whole upload, and `signal` firing
 * fails it as 'aborted' (the pipeline's own signal ends nothing while it waits for the server's answers).
 */
async function writePipelined(
  sftp: SFTPWrapper,
  handle: Buffer,
  chunks: AsyncIterable<Buffer>,
  limit: AnswerLimit,
  signal: AbortSignal | undefined,
  onSent?: (bytes: number) => void,
): Promise<void> {
  const piece = Math.max(
    32 * 1024,
    Math.min(256 * 1024, (sftp as unknown as { _maxWriteLen?: number })._maxWriteLen ?? 32 * 1024),
  );
  const maxInFlight = Math.max(1, Math.floor(WRITE_WINDOW_BYTES / piece));
  let inFlight = 0;
  let offset = 0;
  let failure: unknown;
  let wake: (() => void) | undefined;
  const wakeUp = () => {
    const waiter = wake;
    wake = undefined;
    waiter?.();
  };
  // While writes are in flight the server must answer one of them within the limit (a slow link answers
  // them one after another, never the whole window at once).
  let silence: NodeJS.Timeout | undefined;
  const watch = () => {
    clearTimeout(silence);
    silence =
      inFlight > 0
        ? setTimeout(() => {
            failure ??= unanswered(limit);
            wakeUp();
          }, limit.ms)
        : undefined;
  };
  const settle = (error: unknown) => {
    inFlight--;
    if (error && failure === undefined) failure = error;
    watch();
    wakeUp();
  };
  const until = async (ready: () => boolean) => {
    while (!ready() && failure === undefined) await new Promise<void>((resolve) => (wake = resolve));
    if (failure !== undefined) throw failure;
  };
  const onAbort = () => {
    failure ??= abortedError(signal?.reason);
    wakeUp();
  };
  if (signal?.aborted) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for await (const chunk of chunks) {
      const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
      for (let at = 0; at < buffer.length; at += piece) {
        await until(() => inFlight < maxInFlight);
        const part = buffer.subarray(at, Math.min(buffer.length, at + piece));
        inFlight++;
        if (inFlight === 1) watch();
        sftp.write(handle, part, 0, part.length, offset, settle);
        offset += part.length;
        onSent?.(offset);
      }
    }
    await until(() => inFlight === 0);
  } finally {
    clearTimeout(silence);
    signal?.removeEventListener('abort', onAbort);
  }
}

/** Bytes sent between two early flushes of an upload (EarlyFlush). */
export const EARLY_FLUSH_BYTES = 8 * 1024 * 1024;

function hasFsync(sftp: SFTPWrapper): boolean {
  return (
    (sftp as unknown as { _extensions: Record<string, string> })._extensions['fsync@openssh.com'] === '1'
  );
}

/**
 * Has the server write an upload's bytes to its disk while later ones are still on their way, so the
 * upload's own fsync at the end finds only the last few MiB to write instead of the whole file (on the
 * benchmark's disk that fsync alone was 0.1-0.2 s of a 0.8 s upload of 51 MB). A second SFTP channel on
 * the same connection holds the temp file open and sends fsync@openssh.com for it every EARLY_FLUSH_BYTES
 * sent, one at a time: the upload's own channel never waits for them. Best effort only: if the channel
 * cannot be opened or a flush fails, nothing changes. Durability still comes from the final fsync on the
 * upload's own handle, which also reports any write error (Linux reports a writeback error to every
 * descriptor that was open when it happened).
 */
class EarlyFlush {
  private side: SFTPWrapper | undefined;
  private handle: Buffer | undefined;
  private running: Promise<void> | undefined;
  private nextAt = EARLY_FLUSH_BYTES;
  private done = false;

  constructor(
    client: Client,
    path: string,
    private readonly limit: AnswerLimit,
  ) {
    new Promise<SFTPWrapper>((resolve, reject) =>
      client.sftp((error, side) => (error ? reject(error) : resolve(side))),
    )
      .then(async (side) => {
        this.side = side;
        if (this.done || !hasFsync(side)) return this.end();
        const handle = await call<Buffer>((cb) => side.open(path, 'r', cb), limit);
        if (!this.done) this.handle = handle;
        else await call<void>((cb) => side.close(handle, cb as never), limit).finally(() => this.end());
      })
      .catch(() => undefined);
  }

  /** The upload has sent `bytes`: start a flush if another EARLY_FLUSH_BYTES went and none is running. */
  sent(bytes: number): void {
    if (bytes < this.nextAt || this.running || this.done || !this.side || !this.handle) return;
    const { side, handle } = this;
    this.nextAt = bytes + EARLY_FLUSH_BYTES;
    this.running = call<void>((cb) => side.ext_openssh_fsync(handle, cb as never), this.limit)
      .catch(() => undefined)
      .finally(() => {
        this.running = undefined;
      });
  }

  /**
   * All bytes sent: waits for a running flush, then closes the side channel. Never throws, and never
   * waits for a channel that is still opening (it closes itself once open).
   */
  async finish(): Promise<void> {
    this.done = true;
    await this.running;
    const { side, handle } = this;
    this.handle = undefined;
    if (side && handle)
      await call<void>((cb) => side.close(handle, cb as never), this.limit).catch(() => undefined);
    if (side) this.end();
  }

  private end(): void {
    try {
      this.side?.end();
    } catch {
      // already closed with its connection
    }
  }

  /** The upload failed: stop flushing; the connection's end closes the channel. */
  abandon(): void {
    this.done = true;
  }
}

/**
 * One SFTP request; with a `limit`, one the server leaves unanswered that long fails as 'unreachable'.
 * `signal` firing first ends the wait as 'aborted' (the operation's lease then retires the connection).
 */
function call<T>(
  run: (callback: (error: Error | null | undefined, value: T) => void) => void,
  limit?: AnswerLimit,
  signal?: AbortSignal,
): Promise<T> {
  return new Promise((resolve, reject) => {
    throwIfAborted(signal);
    const onAbort = () => reject(abortedError(signal?.reason));
    signal?.addEventListener('abort', onAbort, { once: true });
    const timer = limit && setTimeout(() => reject(unanswered(limit)), limit.ms);
    run((error, value) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (error) reject(error);
      else resolve(value);
    });
  });
}

/** `request` (an ssh2-sftp-client call, one or a few SFTP requests), failed as call() fails it. */
function answered<T>(request: Promise<T>, limit: AnswerLimit, signal?: AbortSignal): Promise<T> {
  return call<T>(
    (done) => {
      request.then(
        (value) => done(undefined, value),
        (error: Error) => done(error, undefined as T),
      );
    },
    limit,
    signal,
  );
}

/**
 * `stream`'s chunks for downloadStream, each of which the server must send within `limit` of being waited
 * for (a reader that takes its time may), else it fails as 'unreachable', or as 'aborted' once `signal`
 * fires; `failed` is called first on any failure. (Destroying the stream would not end the wait: ssh2 ends
 * it once the server answers its CLOSE.)
 */
function answeredChunks(
  stream: Readable,
  limit: AnswerLimit,
  signal: AbortSignal | undefined,
  failed: () => void,
): AsyncIterable<Buffer> {
  const chunks = stream[Symbol.asyncIterator]();
  return {
    [Symbol.asyncIterator]: () => ({
      next: () =>
        answered(chunks.next(), limit, signal).catch((error: unknown) => {
          failed();
          throw error;
        }),
      return: () => chunks.return?.() ?? Promise.resolve({ done: true, value: undefined }),
    }),
  };
}

/** SSH_FX_EOF: READDIR's answer once a folder has no more entries. */
const SFTP_EOF = 1;

/** A file or folder of a READDIR answer, as list() and sweepTemp() read it. */
interface FolderEntry {
  name: string;
  /** A plain file (the long name starts with `-`, as `ls -l` prints it). */
  file: boolean;
  size: number;
  /** Milliseconds since the epoch. */
  modifyTime: number;
}

/**
 * Reads the folder `dir` one READDIR answer at a time and returns the entries `keep` takes: at most
 * MAX_LISTED_NAMES of them from at most MAX_LIST_PAGES answers (ListBound), so a server that sends an
 * endless folder gets a clear error instead of the agent's memory. Stops once `signal` fires, an answer
 * still awaited included.
 */
async function readFolder(
  sftp: SFTPWrapper,
  dir: string,
  where: string,
  keep: (entry: FolderEntry) => boolean,
  signal: AbortSignal | undefined,
  limits: ListLimits | undefined,
  limit: AnswerLimit,
): Promise<FolderEntry[]> {
  const handle = await call<Buffer>((done) => sftp.opendir(dir, done), limit, signal);
  const bound = new ListBound(where, limits);
  const kept: FolderEntry[] = [];
  let dead = false;
  try {
    for (;;) {
      throwIfAborted(signal);
      const answer = await call<{ filename: string; longname: string; attrs: Stats }[] | undefined>(
        (done) =>
          sftp.readdir(handle, (error, list) =>
            (error as { code?: unknown } | undefined)?.code === SFTP_EOF
              ? done(undefined, undefined)
              : done(error, list as never),
          ),
        limit,
        signal,
      );
      if (answer === undefined) break;
      bound.page(true);
      for (const item of answer) {
        const entry: FolderEntry = {
          name: item.filename,
          file: item.longname.startsWith('-'),
          size: item.attrs.size,
          modifyTime: item.attrs.mtime * 1000,
        };
        if (!keep(entry)) continue;
        bound.name();
        kept.push(entry);
      }
    }
  } catch (error) {
    dead = error instanceof UnansweredError;
    throw error;
  } finally {
    // A dead connection is closed next, handle and all.
    if (!dead)
      await call<void>((done) => sftp.close(handle, done as never), limit, signal).catch(() => undefined);
  }
  return kept;
}

/** Stores backups on an SFTP server: temp name, pipelined writes, fsync, rename, stat to confirm the size. */
export class SftpProvider implements StorageProvider {
  readonly id: string;
  /** Exclusive: plain SFTP rename, which refuses a taken name (see put). */
  readonly properties: ProviderProperties = { atomicReplace: true, exclusivePut: true };
  private readonly options: SftpOptions;
  private readonly dir: string;
  /** The key pinned in the options, or the one trusted on first use. */
  private pinned: string | undefined;
  /** The connection this provider's operations share (see session). */
  private readonly connection: SharedConnection<Session>;
  private readonly limit: AnswerLimit;

  constructor(options: SftpOptions) {
    this.options = options;
    this.id = options.id ?? 'sftp';
    this.dir = posix.normalize(options.remotePath.trim() === '' ? '.' : options.remotePath.trim());
    this.pinned = options.hostKeyFingerprint?.trim() || undefined;
    this.limit = {
      ms: options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
      server: `${options.host}:${options.port ?? 22}`,
    };
    this.connection = new SharedConnection<Session>(
      {
        open: (signal) => this.connect(signal),
        watch: ({ client, sftp }, lost) => {
          sshOf(client).on('error', lost).on('end', lost).on('close', lost);
          sftp.on('close', lost);
        },
        end: ({ client }, broken) => {
          const ssh = sshOf(client);
          if (broken) {
            ssh.destroy();
            return;
          }
          // A server that froze meanwhile never closes its side: ours would stay half-closed for ever
          // (ssh2's destroy() leaves a socket alone once it was ended).
          const socket = (ssh as unknown as { _sock?: { destroy(): void } })._sock;
          const closing = setTimeout(() => socket?.destroy(), options.timeoutMs ?? 20_000).unref();
          ssh.once('close', () => clearTimeout(closing));
          void client.end().catch(() => undefined);
        },
        // The cheapest request the server must answer itself (no file is opened).
        check: async ({ sftp }) => {
          await call<string>((done) => sftp.realpath('.', done));
        },
      },
      {
        idleMs: options.idleCloseMs,
        // Never longer than the provider's own timeout (a test's short one included).
        checkTimeoutMs: Math.min(CHECK_TIMEOUT_MS, options.timeoutMs ?? CHECK_TIMEOUT_MS),
      },
    );
  }

  /**
   * A new connection, its host key checked (pinned, or trusted on first use). `signal` firing before it
   * is ready ends it at once as 'aborted'.
   */
  private async connect(signal: AbortSignal): Promise<Session> {
    const { privateKey } = this.options;
    const pinned = this.pinned;
    if (privateKey !== undefined && /^\s*PuTTY-User-Key-File-/.test(privateKey)) {
      throw new StorageError('bad_key_format', PUTTY_HINT);
    }
    let seenHostKey: string | undefined;
    // The library's default global listeners print to the console; failures reach us through each call.
    const quiet = { error: () => {}, end: () => {}, close: () => {} };
    const client = new (SftpClient as unknown as new (name: string, callbacks: object) => SftpClient)(
      this.id,
      quiet,
    );
    try {
      const sftp = await this.sftpAnswered(client, signal, {
        host: this.options.host,
        port: this.options.port ?? 22,
        username: this.options.username,
        password: this.options.password,
        privateKey,
        passphrase: this.options.passphrase,
        readyTimeout: this.options.timeoutMs ?? 20_000,
        // A server that freezes mid-transfer is noticed after ~3 missed keepalives, on the same scale as the timeout.
        keepaliveInterval: Math.min(
          10_000,
          Math.max(250, Math.floor((this.options.timeoutMs ?? 20_000) / 2)),
        ),
        keepaliveCountMax: 3,
        hostVerifier: (key: Buffer) => {
          seenHostKey = hostKeyFingerprint(key);
          return pinned === undefined || seenHostKey === pinned;
        },
      });
      if (pinned === undefined && seenHostKey !== undefined) {
        await Promise.resolve(this.options.onHostKey?.(seenHostKey)).catch((error: unknown) => {
          if (error instanceof StorageError) throw error;
        });
        this.pinned = seenHostKey;
      }
      return { client, sftp };
    } catch (error) {
      await client.end().catch(() => undefined);
      if (pinned !== undefined && seenHostKey !== undefined && seenHostKey !== pinned) {
        throw new StorageError(
          'auth_failed',
          `the server's host key ${seenHostKey} is not the pinned ${pinned}; refusing to connect`,
          { cause: error },
        );
      }
      throw this.classify(error);
    }
  }

  /**
   * client.connect(), whose SFTP channel must answer within timeoutMs of the sign-in: readyTimeout bounds
   * only the SSH handshake, and a server whose SFTP service hangs (a home on a dead network mount, a shell
   * start-up file waiting for input) still answers keepalives, so nothing else would end the wait.
   * `signal` firing meanwhile destroys the connection, half-done handshake and all.
   */
  private sftpAnswered(
    client: SftpClient,
    signal: AbortSignal,
    config: SftpClient.ConnectOptions,
  ): Promise<SFTPWrapper> {
    const ssh = sshOf(client);
    const timeoutMs = this.options.timeoutMs ?? 20_000;
    let timer: NodeJS.Timeout | undefined;
    let onAbort = () => {};
    return new Promise<SFTPWrapper>((resolve, reject) => {
      onAbort = () => {
        reject(abortedError(signal.reason));
        ssh.destroy();
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      ssh.once('ready', () => {
        timer = setTimeout(() => {
          reject(
            new StorageError(
              'unreachable',
              `${this.options.host}:${this.options.port ?? 22} signed in but its SFTP service did not answer within ${timeoutMs / 1000} s`,
            ),
          );
          ssh.destroy();
        }, timeoutMs);
      });
      client.connect(config).then((sftp) => resolve(sftp as unknown as SFTPWrapper), reject);
    }).finally(() => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    });
  }

  /**
   * Runs `run` on the connection this provider's operations share (SharedConnection): operations that
   * overlap or follow within idleCloseMs pay one handshake. A failure other than the server's answer to
   * a request (SERVER_ANSWERS) retires that connection, so that a broken one never serves the next
   * operation. With `retry` (reads), one that failed because the connection it reused had been dropped
   * meanwhile runs once more on a new connection. `signal` firing retires the connection too.
   */
  private async session<T>(
    options: { signal?: AbortSignal | undefined; retry?: boolean },
    run: (session: Session, lease: Lease<Session>) => Promise<T>,
  ): Promise<T> {
    const { value, lease } = await this.held(options, run);
    lease.release();
    return value;
  }

  /** session(), but the lease is still held when it resolves: the caller releases it (a download). */
  private async held<T>(
    options: { signal?: AbortSignal | undefined; retry?: boolean },
    run: (session: Session, lease: Lease<Session>) => Promise<T>,
  ): Promise<{ value: T; lease: Lease<Session> }> {
    for (let attempt = 1; ; attempt++) {
      const lease = await this.connection.acquire(options.signal);
      try {
        return { value: await run(lease.connection, lease), lease };
      } catch (error) {
        const failure = this.classify(error);
        lease.release(!SERVER_ANSWERS.has(failure.code));
        const dropped = lease.reused && lease.lost() && !options.signal?.aborted;
        if (options.retry && attempt === 1 && dropped) continue;
        throw failure;
      }
    }
  }

  /** Ends the shared connection once no operation uses it (an operation after this opens a new one). */
  async close(): Promise<void> {
    this.connection.close();
  }

  /** Maps ssh2 / SFTP failures to StorageError codes. */
  private classify(error: unknown, what = this.dir, signal?: AbortSignal): StorageError {
    if (error instanceof StorageError) return error;
    const err = error as { code?: unknown; level?: string; message?: string };
    const message = String(err?.message ?? error);
    if (err?.code === SFTP_NO_SUCH_FILE || err?.code === 'ENOENT') {
      return new StorageError('not_found', `${what} does not exist on the server`, { cause: error });
    }
    if (err?.code === SFTP_PERMISSION_DENIED || err?.code === 'EACCES') {
      return new StorageError('permission_denied', `the server refused access to ${what}`, { cause: error });
    }
    if (err?.level === 'client-authentication' || /authentication methods failed/i.test(message)) {
      return new StorageError('auth_failed', 'the server refused the username, password or key', {
        cause: error,
      });
    }
    if (/passphrase|decrypt/i.test(message)) {
      return new StorageError('auth_failed', 'the private key passphrase is missing or wrong', {
        cause: error,
      });
    }
    if (/cannot parse privatekey|unsupported key format/i.test(message)) {
      return new StorageError('bad_key_format', 'the private key is not an OpenSSH private key', {
        cause: error,
      });
    }
    if (
      (typeof err?.code === 'string' && NETWORK_CODES.has(err.code)) ||
      err?.level === 'client-socket' ||
      err?.level === 'client-timeout' ||
      /timed out|refused connection|address lookup|reset the connection|not connected|no response/i.test(
        message,
      )
    ) {
      return new StorageError(
        'unreachable',
        `cannot reach ${this.options.host}:${this.options.port ?? 22}: ${message}`,
        {
          cause: error,
        },
      );
    }
    if (/no space|quota/i.test(message))
      return new StorageError('no_space', 'the server is out of space', { cause: error });
    return asStorageError(error, signal);
  }

  /**
   * A WRITE the server refused. OpenSSH says only "Failure" (SSH_FX_FAILURE) for a full disk or a
   * quota reached, so that is named as the likely cause; anything else is classified as usual.
   */
  private writeFailed(error: unknown, name: string): StorageError {
    const err = error as { code?: unknown; message?: string };
    if (err?.code === SFTP_FAILURE || /no space|quota/i.test(String(err?.message ?? ''))) {
      return new StorageError(
        'no_space',
        `the server failed to write ${name}: it may be out of space or over quota (it answered "${String(err?.message ?? error)}")`,
        { cause: error },
      );
    }
    return this.classify(error, name);
  }

  private path(name: string): string {
    return posix.join(this.dir, name);
  }

  private async ensureDir(client: SftpClient, signal: AbortSignal | undefined): Promise<void> {
    if (!(await this.folderExists(client, signal)))
      await answered(client.mkdir(this.dir, true), this.limit, signal);
  }

  /**
   * Whether the backup folder exists yet. A file in its place is refused by name: the server's answer to
   * using it as a folder ("no such file") would say it does not exist.
   */
  private async folderExists(client: SftpClient, signal?: AbortSignal): Promise<boolean> {
    const kind = await answered(client.exists(this.dir), this.limit, signal);
    if (kind === '-') {
      throw new StorageError(
        'io',
        `the backup ${this.where()} is a file, not a folder: choose another folder, or move the file away`,
        { permanent: true },
      );
    }
    return kind !== false;
  }

  async put(
    name: string,
    source: BackupSource,
    options: Pick<PutOptions, 'signal' | 'onProgress' | 'exclusive' | 'tempTag'> = {},
  ): Promise<StoredObject> {
    assertObjectName(name);
    throwIfAborted(options.signal);
    const { signal } = options;
    const exclusive = options.exclusive ?? false;
    return this.session({ signal }, async ({ client, sftp }, lease) => {
      await this.ensureDir(client, signal).catch((error) => {
        throw this.classify(error, this.dir);
      });
      const temp = this.path(tempNameFor(name, options.tempTag));
      const final = this.path(name);
      const check = new SourceCheck(options.onProgress);
      const handle = await call<Buffer>(
        (done) => sftp.open(temp, 'w', { mode: 0o600 }, done),
        this.limit,
        signal,
      );
      let handleOpen = true;
      const fsync = hasFsync(sftp);
      const early =
        fsync && source.size > 2 * EARLY_FLUSH_BYTES
          ? new EarlyFlush(sshOf(client), temp, this.limit)
          : undefined;
      // The server's answer to a failed WRITE: the pipeline itself reports only the abort it caused.
      let writeFailure: unknown;
      try {
        await pipeline(
          Readable.fromWeb(source.open() as never),
          check,
          (chunks: AsyncIterable<Buffer>) =>
            writePipelined(
              sftp,
              handle,
              chunks,
              this.limit,
              signal,
              early && ((bytes) => early.sent(bytes)),
            ).catch((error: unknown) => {
              writeFailure = error;
              throw error;
            }),
          signal ? { signal } : {},
        );
        check.verify(source);
        await early?.finish();
        // Ask the server to flush to disk before the rename makes the backup visible.
        if (fsync) await call<void>((done) => sftp.ext_openssh_fsync(handle, done as never), this.limit);
        handleOpen = false;
        await call<void>((done) => sftp.close(handle, done as never), this.limit);
        throwIfAborted(signal);
        if (exclusive) await this.renameExclusive(sftp, temp, final, name);
        else await this.rename(sftp, temp, final);
      } catch (error) {
        early?.abandon();
        // The early flush's second channel still holds the temp file open: only the connection's end
        // closes it, so this connection serves no later operation (even after a server's plain refusal).
        if (early) lease.retire();
        await this.removeTemp(sftp, handleOpen ? handle : undefined, temp, lease);
        if (writeFailure !== undefined && !signal?.aborted) throw this.writeFailed(writeFailure, name);
        throw this.classify(error, name, signal);
      }
      const stats = await call<Stats>((done) => sftp.stat(final, done), this.limit);
      if (stats.size !== source.size) {
        throw new StorageError(
          'integrity',
          `${name} is ${stats.size} bytes on the server, expected ${source.size}`,
        );
      }
      return {
        name,
        size: stats.size,
        modifiedAt: new Date(stats.mtime * 1000).toISOString(),
        sha256: check.sha256(),
      };
    });
  }

  /**
   * A failed put() removes its temp file, bounded in time: on the same connection, else on a fresh
   * one (the first may be what broke: it is retired). A server that is down or frozen keeps it until
   * sweepTemp().
   */
  private async removeTemp(
    sftp: SFTPWrapper,
    handle: Buffer | undefined,
    temp: string,
    lease: Lease<Session>,
  ): Promise<void> {
    const unlink = (on: SFTPWrapper) =>
      call<void>((done) => on.unlink(temp, done as never), this.limit).catch((error) => {
        if (error?.code !== SFTP_NO_SUCH_FILE) throw error;
      });
    await tryCleanup(
      async () => {
        if (handle)
          await call<void>((done) => sftp.close(handle, done as never), this.limit).catch(() => undefined);
        await unlink(sftp).catch(() => {
          lease.retire();
          return this.session({}, (fresh) => unlink(fresh.sftp));
        });
      },
      Math.min(CLEANUP_TIMEOUT_MS, this.options.timeoutMs ?? 20_000),
    );
  }

  /** Removes our own `.tmp-gem-backup-…` files from the backup folder (see StorageProvider.sweepTemp). */
  async sweepTemp(options: TempSweepOptions = {}): Promise<TempSweepResult> {
    throwIfAborted(options.signal);
    return this.session({ signal: options.signal }, async ({ client, sftp }) => {
      if (!(await this.folderExists(client, options.signal))) return { removed: [] };
      const removed: string[] = [];
      const leftovers = await readFolder(
        sftp,
        this.dir,
        this.where(),
        (entry) =>
          entry.file && isOwnTempName(entry.name) && sweepTakes(entry.name, entry.modifyTime, options),
        options.signal,
        this.options.listLimits,
        this.limit,
      );
      for (const entry of leftovers) {
        throwIfAborted(options.signal);
        const removal = call<void>(
          (done) => sftp.unlink(this.path(entry.name), done as never),
          this.limit,
          options.signal,
        );
        await removal.then(
          () => removed.push(entry.name),
          (error) => {
            if (error?.code !== SFTP_NO_SUCH_FILE) throw error; // gone meanwhile is fine
          },
        );
      }
      return { removed };
    });
  }

  /**
   * Plain SFTP v3 rename, which the server refuses when the target exists (OpenSSH links the new name,
   * or checks and renames, in one request): 'exists' when the name turns out taken, nothing replaced.
   */
  private async renameExclusive(sftp: SFTPWrapper, from: string, to: string, name: string): Promise<void> {
    await this.options.faults?.beforeReplace?.();
    try {
      await call<void>((done) => sftp.rename(from, to, done as never), this.limit);
    } catch (error) {
      // Unanswered, the rename may yet happen: the name says nothing.
      if (error instanceof StorageError) throw error;
      const taken = await call<Stats>((done) => sftp.stat(to, done), this.limit).then(
        () => true,
        () => false,
      );
      if (taken) throw new StorageError('exists', `${name} already exists on the server`);
      throw error;
    }
  }

  /**
   * posix-rename replaces atomically. Plain SFTP v3 rename refuses an existing target, so the old copy
   * is first renamed aside (a name neither list() nor sweepTemp() touches), the new one renamed in, then
   * the old one removed; if the new one cannot take its place the old one is put back. At every moment
   * a good copy exists under the final or the aside name.
   */
  private async rename(sftp: SFTPWrapper, from: string, to: string): Promise<void> {
    const extensions = (sftp as unknown as { _extensions: Record<string, string> })._extensions;
    if (this.options.posixRename !== false && extensions['posix-rename@openssh.com'] === '1') {
      await call<void>((done) => sftp.ext_openssh_rename(from, to, done as never), this.limit);
      return;
    }
    const aside = posix.join(
      posix.dirname(to),
      `.replaced-${posix.basename(to)}.${randomBytes(4).toString('hex')}`,
    );
    const movedAside = await call<void>((done) => sftp.rename(to, aside, done as never), this.limit).then(
      () => true,
      (error) => {
        if (error?.code === SFTP_NO_SUCH_FILE) return false; // nothing to replace
        throw error;
      },
    );
    try {
      await this.options.faults?.beforeReplace?.();
      await call<void>((done) => sftp.rename(from, to, done as never), this.limit);
    } catch (error) {
      if (movedAside)
        await call<void>((done) => sftp.rename(aside, to, done as never), this.limit).catch(() => undefined);
      throw error;
    }
    if (movedAside)
      await call<void>((done) => sftp.unlink(aside, done as never), this.limit).catch(() => undefined);
  }

  async get(name: string, options: { signal?: AbortSignal } = {}): Promise<ReadableStream<Uint8Array>> {
    assertObjectName(name);
    throwIfAborted(options.signal);
    const { lease } = await this.held({ signal: options.signal, retry: true }, ({ sftp }) =>
      call<Stats>((done) => sftp.stat(this.path(name), done), this.limit, options.signal).catch((error) => {
        throw this.classify(error, name);
      }),
    );
    // Cancelled while the server answered the stat: nothing is read, the connection is given back.
    if (options.signal?.aborted) {
      lease.release(false);
      throw abortedError(options.signal.reason);
    }
    const stream = lease.connection.sftp.createReadStream(this.path(name), { highWaterMark: 256 * 1024 });
    let failed = false;
    // Reported through downloadStream; this stops late ones crashing and retires the connection it failed on.
    stream.on('error', () => {
      failed = true;
    });
    if (options.signal) options.signal.addEventListener('abort', () => stream.destroy(), { once: true });
    // The connection is held as long as the download: released when the reader finishes, fails or cancels.
    return downloadStream(
      answeredChunks(stream, this.limit, options.signal, () => {
        failed = true;
      }),
      (error) => this.classify(error, name, options.signal),
      () => {
        stream.destroy();
        lease.release(failed);
      },
    );
  }

  async stat(name: string, options: { signal?: AbortSignal } = {}): Promise<StoredObject> {
    assertObjectName(name);
    throwIfAborted(options.signal);
    const { signal } = options;
    return this.session({ signal, retry: true }, async ({ sftp }) => {
      const stats = await call<Stats>((done) => sftp.stat(this.path(name), done), this.limit, signal).catch(
        (error) => {
          throw this.classify(error, name);
        },
      );
      if (!stats.isFile()) throw new StorageError('not_found', `${name} is not a file`);
      return { name, size: stats.size, modifiedAt: new Date(stats.mtime * 1000).toISOString() };
    });
  }

  async list(options: { signal?: AbortSignal } = {}): Promise<StoredObject[]> {
    throwIfAborted(options.signal);
    return this.session({ signal: options.signal, retry: true }, async ({ client, sftp }) => {
      if (!(await this.folderExists(client, options.signal))) return [];
      const entries = await readFolder(
        sftp,
        this.dir,
        this.where(),
        (entry) => entry.file && isBackupName(entry.name),
        options.signal,
        this.options.listLimits,
        this.limit,
      );
      return entries.map((entry) => ({
        name: entry.name,
        size: entry.size,
        modifiedAt: new Date(entry.modifyTime).toISOString(),
      }));
    });
  }

  /** The folder, for a listing's errors: `folder F on HOST:PORT`. */
  private where(): string {
    return `folder ${this.dir} on ${this.options.host}:${this.options.port ?? 22}`;
  }

  async delete(name: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    assertObjectName(name);
    throwIfAborted(options.signal);
    const { signal } = options;
    await this.session({ signal }, async ({ sftp }) => {
      const removal = call<void>((done) => sftp.unlink(this.path(name), done as never), this.limit, signal);
      await removal.catch((error) => {
        throw this.classify(error, name);
      });
    });
  }
}
