// Fixed-window request counting for recovery, one Durable Object per client address.
import { DurableObject } from 'cloudflare:workers';

/** Counts recovery attempts of one client address per minute; answers whether this one may proceed. */
export class RecoveryRateLimiter extends DurableObject {
  async take(limitPerMinute: number): Promise<boolean> {
    const windowStart = Math.floor(Date.now() / 60_000) * 60_000;
    const state = (await this.ctx.storage.get<{ windowStart: number; count: number }>('w')) ?? {
      windowStart,
      count: 0,
    };
    if (state.windowStart !== windowStart) {
      state.windowStart = windowStart;
      state.count = 0;
    }
    state.count += 1;
    await this.ctx.storage.put('w', state);
    await this.ctx.storage.setAlarm(windowStart + 120_000);
    return state.count <= limitPerMinute;
  }

  /** The window is over: nothing to keep for this address. */
  async alarm(): Promise<void> {
    await this.ctx.storage.deleteAll();
  }
}
