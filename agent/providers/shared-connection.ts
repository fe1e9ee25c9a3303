// One connection shared by a provider's operations that overlap or follow closely: reading the headers of
// twenty remote backups then costs one SSH handshake (~135 ms on loopback, more to a real host) instead of twenty.
import { abortedError, throwIfAborted } from './checks';

/** How long an unused connection is kept open for the next operation (SftpOptions.idleCloseMs). */
export const IDLE_CLOSE_MS = 5_000;
/**
 * How long a kept connection may sit unused before the next operation has it prove it still answers
 * (ConnectionHooks.check): operations that follow closely (a burst of header reads) pay no round trip.
 */
export const CHECK_AFTER_IDLE_MS = 1_000;
/** How long a kept connection's check waits for the answer before the connection counts as frozen. */
export const CHECK_TIMEOUT_MS = 3_000;

export interface SharedConnectionOptions {
  /** How long an unused connection is kept open (default IDLE_CLOSE_MS). */
  idleMs?: number | undefined;
  /** Unused this long, a connection is checked before it is used again (default CHECK_AFTER_IDLE_MS). */
  checkAfterIdleMs?: number | undefined;
  /** A check unanswered this long retires the connection (default CHECK_TIMEOUT_MS). */
  checkTimeoutMs?: number | undefined;
}

/** What the keeper needs of a kind of connection. */
export interface ConnectionHooks<T> {
  /**
   * Opens a new connection. Once `signal` fires no operation waits for it any more (their jobs were
   * cancelled): it rejects and leaves nothing open, a half-done handshake included.
   */
  open(signal: AbortSignal): Promise<T>;
  /** Calls `lost` when the connection closes or fails by itself (the server dropped it, keepalives unanswered). */
  watch(connection: T, lost: () => void): void;
  /** Ends a connection nothing uses any more: politely, or at once when `broken` (it may be frozen). Never throws. */
  end(connection: T, broken: boolean): void;
  /**
   * One cheap request that resolves once the server answers it: asked of a connection left unused for
   * checkAfterIdleMs before it is used again. One that froze meanwhile (network gone, no reset) would
   * otherwise be noticed only by keepalives, tens of seconds later, with the operation waiting on it.
   */
  check?(connection: T): Promise<void>;
}

/** One operation's use of the shared connection; released exactly once (later calls do nothing). */
export interface Lease<T> {
  readonly connection: T;
  /** The connection was open before this operation asked for it (an earlier one opened it). */
  readonly reused: boolean;
  /** Whether the connection has closed or failed by itself since it was opened. */
  lost(): boolean;
  /** No later operation gets this connection (it failed under this one); it ends once released. */
  retire(): void;
  /** Done with it. `broken`: it failed in a way that may have left it unusable, so it is retired. */
  release(broken?: boolean): void;
}

interface Kept<T> {
  opening: Promise<T>;
  opened: boolean;
  /** Fired when it ends while still opening (see ConnectionHooks.open). */
  abandon: AbortController;
  /** Leases held now. */
  users: number;
  /** No new lease gets it; it ends once its last lease is released. */
  retired: boolean;
  /** Ended at once rather than politely. */
  broken: boolean;
  lost: boolean;
  ended: boolean;
  idle?: NodeJS.Timeout;
  /** When its last lease was released (unset while held). */
  idleSince?: number | undefined;
  /** The check under way (see proven): operations that ask for the connection meanwhile wait for it. */
  checking?: Promise<boolean> | undefined;
}

/**
 * Keeps one connection for the operations of one provider, so never across different options (host,
 * user, key, pinned host key): open while any operation holds it and `idleMs` after the last one (an
 * unref'd timer, which never keeps the process alive), then ended. A connection that closes by itself,
 * fails under an operation, or whose operation's signal fires (it may be waiting on a frozen server) is
 * retired: the operations still on it finish or fail there, and the next one opens a new connection. One
 * left unused for checkAfterIdleMs must answer a check before it is used again, or it is retired too.
 */
export class SharedConnection<T> {
  private current: Kept<T> | undefined;

  private readonly idleMs: number;
  private readonly checkAfterIdleMs: number;
  private readonly checkTimeoutMs: number;

  constructor(
    private readonly hooks: ConnectionHooks<T>,
    options: SharedConnectionOptions = {},
  ) {
    this.idleMs = options.idleMs ?? IDLE_CLOSE_MS;
    this.checkAfterIdleMs = options.checkAfterIdleMs ?? CHECK_AFTER_IDLE_MS;
    this.checkTimeoutMs = options.checkTimeoutMs ?? CHECK_TIMEOUT_MS;
  }

  /**
   * The current connection (checked first if it was left unused for a while), or a new one; rejects as
   * `open` does. Retired if `signal` fires while held; firing while it opens or is checked, it rejects
   * as 'aborted' at once, and a connection still opening that no one else waits for is abandoned.
   */
  async acquire(signal?: AbortSignal): Promise<Lease<T>> {
    throwIfAborted(signal);
    let kept: Kept<T>;
    let reused: boolean;
    let connection: T;
    for (;;) {
      kept = this.current && !this.current.retired ? this.current : this.open();
      reused = kept.opened;
      kept.users += 1;
      clearTimeout(kept.idle);
      let proven: boolean;
      try {
        connection = await untilAborted(kept.opening, signal);
        proven = !reused || (await untilAborted(Promise.resolve(this.proven(kept, connection)), signal));
      } catch (error) {
        this.release(kept, true);
        throw error;
      }
      if (proven) break;
      // Frozen while unused: retired (ended at once when no one holds it), and a new connection tried.
      this.release(kept, true);
    }
    const onAbort = () => this.retire(kept, true);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    let released = false;
    return {
      connection,
      reused,
      lost: () => kept.lost,
      retire: () => this.retire(kept, true),
      release: (broken = false) => {
        if (released) return;
        released = true;
        signal?.removeEventListener('abort', onAbort);
        this.release(kept, broken);
      },
    };
  }

  /**
   * Whether a reused connection may serve: at once if it was in use or unused only briefly, else once it
   * answered the check within checkTimeoutMs. One check serves every operation that asks meanwhile.
   */
  private proven(kept: Kept<T>, connection: T): boolean | Promise<boolean> {
    if (kept.checking) return kept.checking;
    const unusedFor = kept.idleSince === undefined ? 0 : Date.now() - kept.idleSince;
    kept.idleSince = undefined;
    const check = this.hooks.check;
    if (!check || unusedFor < this.checkAfterIdleMs) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('no answer')), this.checkTimeoutMs);
    });
    kept.checking = Promise.race([Promise.resolve().then(() => check(connection)), timeout]).then(
      () => true,
      () => false,
    );
    void kept.checking.finally(() => {
      clearTimeout(timer);
      kept.checking = undefined;
    });
    return kept.checking;
  }

  /** Ends the connection as soon as no operation holds it; a later operation opens a new one. */
  close(): void {
    if (this.current) this.retire(this.current, false);
  }

  private open(): Kept<T> {
    const abandon = new AbortController();
    const kept: Kept<T> = {
      opening: this.hooks.open(abandon.signal),
      opened: false,
      abandon,
      users: 0,
      retired: false,
      broken: false,
      lost: false,
      ended: false,
    };
    this.current = kept;
    // Registered before any acquire awaits the opening, so the watch is set before a lease is handed out.
    kept.opening.then(
      (connection) => {
        kept.opened = true;
        this.hooks.watch(connection, () => {
          kept.lost = true;
          this.retire(kept, true);
        });
      },
      () => this.retire(kept, true),
    );
    return kept;
  }

  private release(kept: Kept<T>, broken: boolean): void {
    kept.users -= 1;
    if (broken) this.retire(kept, true);
    else if (kept.users > 0) return;
    else if (kept.retired) this.end(kept);
    else {
      kept.idleSince = Date.now();
      kept.idle = setTimeout(() => this.retire(kept, false), this.idleMs);
      kept.idle.unref();
    }
  }

  private retire(kept: Kept<T>, broken: boolean): void {
    if (broken) kept.broken = true;
    kept.retired = true;
    if (this.current === kept) this.current = undefined;
    clearTimeout(kept.idle);
    if (kept.users === 0) this.end(kept);
  }

  private end(kept: Kept<T>): void {
    if (kept.ended) return;
    kept.ended = true;
    if (!kept.opened) kept.abandon.abort();
    kept.opening.then(
      (connection) => this.hooks.end(connection, kept.broken),
      () => undefined,
    );
  }
}

/** `promise`, or 'aborted' as soon as `signal` fires (the promise itself goes on). */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  let onAbort = () => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(abortedError(signal.reason));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([promise, aborted]).finally(() => signal.removeEventListener('abort', onAbort));
}
