// Retries a provider operation on transient failures (network, server hiccups), never on permanent ones.
import { StorageError } from '../../shared/storage/index';
import { abortedError } from './checks';

export interface RetryOptions {
  /** Total tries including the first (default 4). */
  attempts?: number;
  /** Delay before the first retry; doubles each time, with jitter (default 1000 ms). */
  baseDelayMs?: number;
  /** Upper bound of one delay (default 30 s). */
  maxDelayMs?: number;
  signal?: AbortSignal;
  /** Told about each failure that will be retried (for logs and job progress). */
  onRetry?: (error: StorageError, attempt: number, delayMs: number) => void;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortedError(signal.reason));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortedError(signal?.reason));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Calls `fn` until it succeeds, retrying only StorageErrors that are not permanent, with exponential
 * backoff and full jitter. Each retry calls `fn` again, which re-opens its source from the first byte.
 * Anything else (a permanent StorageError, a non-StorageError) is thrown at once; after the last
 * attempt the last error is thrown.
 */
export async function withRetry<T>(
  fn: (attempt: number) => Promise<T>,
  options: RetryOptions = {},
): Promise<T> {
  const attempts = Math.max(1, options.attempts ?? 4);
  const base = options.baseDelayMs ?? 1000;
  const max = options.maxDelayMs ?? 30_000;
  for (let attempt = 1; ; attempt++) {
    if (options.signal?.aborted) throw abortedError(options.signal.reason);
    try {
      return await fn(attempt);
    } catch (error) {
      if (!(error instanceof StorageError) || error.permanent || attempt >= attempts) throw error;
      if (options.signal?.aborted) throw abortedError(options.signal.reason);
      const ceiling = Math.min(max, base * 2 ** (attempt - 1));
      const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
      options.onRetry?.(error, attempt, delay);
      await sleep(delay, options.signal);
    }
  }
}
