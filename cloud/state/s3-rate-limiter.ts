// Fixed-window counting of recovery attempts per client address for the Node entry, kept in the bucket.
import { createHash } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import { type UpdateOptions, updateJsonObject } from './s3-conditional';

/**
 * The Durable Object's answers (cloud/state/rate-limiter.ts) over S3: one object per address,
 * `rate/<sha256 of the address>.json` = `{windowStart, count}`, updated with conditional writes so
 * every process serving the bucket counts into the same window. One object per address rather than
 * one per window: the next window's first attempt overwrites the last one, so nothing piles up for
 * an address that comes back, and no lifecycle rule is needed for correctness (a rule expiring
 * `rate/` after a day only tidies the addresses that never come back). The address is hashed: the
 * bucket's listing names no client.
 */
export class S3RecoveryRateLimiter {
  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    private readonly retry: Omit<UpdateOptions, 'what'> = {},
    private readonly now: () => number = Date.now,
  ) {}

  /** Counts one attempt from `address`; false when it is over `limitPerMinute` in this minute. */
  take(address: string, limitPerMinute: number): Promise<boolean> {
    const windowStart = Math.floor(this.now() / 60_000) * 60_000;
    const key = `rate/${createHash('sha256').update(address).digest('hex')}.json`;
    return updateJsonObject(
      this.s3,
      this.bucket,
      key,
      (current) => {
        const count = current?.windowStart === windowStart ? Number(current.count) || 0 : 0;
        // Already at the limit: refused whatever happens, and an attack costs no more writes.
        if (count >= limitPerMinute) return { value: false };
        return { value: true, next: { windowStart, count: count + 1 } };
      },
      { ...this.retry, what: 'counting a recovery attempt' },
    );
  }
}
