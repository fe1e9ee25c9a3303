/** The verification schedule (croner, 04:00 after the nightly backup): re-armed on settings changes, one catch-up after downtime. */
import { Cron } from 'croner';
import type { VerificationSchedule } from '../../shared/api/settings';
import type { Agent } from '../agent';
import { describeError } from '../errors';
import type { Job } from '../jobs/runner';
import { startVerification } from './run';
import { verificationStateFor } from './state';

/** 04:00: after the 02:00 backups and the 03:00 maintenance and DR push; weekly on Sundays, monthly on the 1st. */
const VERIFICATION_CRON: Record<VerificationSchedule, string> = {
  daily: '0 0 4 * * *',
  weekly: '0 0 4 * * 0',
  monthly: '0 0 4 1 * *',
};

export class VerificationScheduler {
  private timer: Cron | undefined;
  /** Whether arm() ran once: the timer then says whether the schedule was on before a settings change. */
  private armedOnce = false;
  private unsubscribe: (() => void) | undefined;
  private readonly inFlight = new Set<Promise<Job | undefined>>();

  constructor(
    private readonly agent: Agent,
    private readonly options: { now?: () => Date } = {},
  ) {}

  /** Arms the schedule; if a slot passed since the last run (or since it was armed), runs once now. */
  async start(): Promise<void> {
    this.arm();
    this.unsubscribe = this.agent.settings.subscribe(() => this.arm());
    const v = this.agent.settings.get().verification;
    if (!v.enabled) return;
    const store = verificationStateFor(this.agent);
    const state = await store.get();
    const now = this.options.now?.() ?? new Date();
    if (!state.armedAt) {
      await store.update((s) => {
        s.armedAt = now.toISOString();
      });
      return;
    }
    // From the last run, or from when it was turned on if that came later (arm).
    const since = new Date(
      Math.max(Date.parse(state.lastRun?.startedAt ?? state.armedAt), Date.parse(state.armedAt)),
    );
    const next = new Cron(VERIFICATION_CRON[v.schedule], { paused: true, ...this.tz() }).nextRun(since);
    if (next && next <= now) {
      this.agent.log.info('catching up a verification missed while the agent was down');
      this.track(this.fire());
    }
  }

  private tz(): { timezone?: string } {
    const tz = this.agent.settings.get().autoBackup.timezone;
    return tz ? { timezone: tz } : {};
  }

  /**
   * (Re)creates the timer; marks the schedule armed if it never was, so a later-enabled one gets its
   * catch-up, and armed from now when turned on again after being off (the slots it was off for are
   * not caught up).
   */
  arm(): void {
    const turnedOn = this.armedOnce && this.timer === undefined;
    this.armedOnce = true;
    this.timer?.stop();
    this.timer = undefined;
    const v = this.agent.settings.get().verification;
    if (!v.enabled) return;
    const now = this.options.now?.() ?? new Date();
    const marked = verificationStateFor(this.agent)
      .update((s) => {
        s.armedAt = turnedOn ? now.toISOString() : (s.armedAt ?? now.toISOString());
      })
      .catch((error: unknown) => this.agent.log.warn('could not mark the verification armed', { error }));
    this.track(marked.then(() => undefined));
    this.timer = new Cron(VERIFICATION_CRON[v.schedule], { ...this.tz(), protect: true }, () => {
      this.track(this.fire());
    });
  }

  nextRunAt(): Date | null {
    return this.timer?.nextRun() ?? null;
  }

  /** Starts a verification job and waits for it to end (a failure is recorded in its state, never thrown). */
  async fire(): Promise<Job | undefined> {
    try {
      const job = await startVerification(this.agent);
      return await this.agent.jobs.waitFor(job.id);
    } catch (error) {
      this.agent.log.warn('the scheduled verification could not start', { error: describeError(error) });
      return undefined;
    }
  }

  async settled(): Promise<void> {
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight]);
  }

  private track(run: Promise<Job | undefined>): void {
    this.inFlight.add(run);
    void run.finally(() => this.inFlight.delete(run));
  }

  stop(): void {
    this.unsubscribe?.();
    this.timer?.stop();
    this.timer = undefined;
  }
}
