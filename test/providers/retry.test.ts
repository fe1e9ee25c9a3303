// withRetry: transient storage failures are retried with a fresh source, permanent ones are not.
import { describe, expect, it } from 'vitest';
import { withRetry } from '../../agent/providers/retry';
import { StorageError } from '../../shared/storage/index';

describe('withRetry', () => {
  it('retries a transient failure and returns the later success', async () => {
    const seen: number[] = [];
    const result = await withRetry(
      async (attempt) => {
        seen.push(attempt);
        if (attempt < 3) throw new StorageError('unreachable', 'down');
        return 'stored';
      },
      { attempts: 4, baseDelayMs: 1 },
    );
    expect(result).toBe('stored');
    expect(seen).toEqual([1, 2, 3]);
  });

  it('does not retry a permanent failure', async () => {
    let calls = 0;
    const run = withRetry(
      async () => {
        calls += 1;
        throw new StorageError('auth_failed', 'wrong password');
      },
      { attempts: 5, baseDelayMs: 1 },
    );
    await expect(run).rejects.toMatchObject({ code: 'auth_failed' });
    expect(calls).toBe(1);
  });

  it('gives up after the last attempt with the last error', async () => {
    let calls = 0;
    const run = withRetry(
      async () => {
        calls += 1;
        throw new StorageError('io', `failure ${calls}`);
      },
      { attempts: 3, baseDelayMs: 1 },
    );
    await expect(run).rejects.toThrow('failure 3');
    expect(calls).toBe(3);
  });

  it("stops waiting with 'aborted' when the signal fires", async () => {
    const controller = new AbortController();
    const run = withRetry(
      async () => {
        controller.abort();
        throw new StorageError('unreachable', 'down');
      },
      { attempts: 3, baseDelayMs: 60_000, signal: controller.signal },
    );
    await expect(run).rejects.toMatchObject({ code: 'aborted' });
  });
});
