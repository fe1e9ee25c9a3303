/** When the nightly DR push runs: 03:00 local time plus a stable per-installation offset inside that hour. */
import { createHash } from 'node:crypto';
import { Cron } from 'croner';

/** Seconds after 03:00 for this installation: spread over the hour so the endpoint never gets all at once. */
export function nightlyOffsetSeconds(installationId: string): number {
  return createHash('sha256').update(`gem-dr-nightly:${installationId}`).digest().readUInt32BE(0) % 3600;
}

/** The croner pattern (with seconds) of an installation's nightly push. */
function nightlyPattern(installationId: string): string {
  const offset = nightlyOffsetSeconds(installationId);
  return `${offset % 60} ${Math.floor(offset / 60)} 3 * * *`;
}

/** The next nightly push after `from`, in `timezone` (undefined: the server's local time zone). */
export function nextNightlyRun(
  installationId: string,
  timezone: string | undefined,
  from = new Date(),
): Date | null {
  return new Cron(nightlyPattern(installationId), {
    paused: true,
    ...(timezone ? { timezone } : {}),
  }).nextRun(from);
}

/** An armed nightly timer: which installation's offset it follows, when it fires next, how to stop it. */
export interface NightlyTimer {
  readonly installationId: string;
  /** The next fire after `from` (default: now). */
  nextRun(from?: Date): Date | null;
  stop(): void;
}

/** Starts the nightly timer of `installationId`; `run` gets the timer that fired. */
export function scheduleNightly(
  installationId: string,
  timezone: string | undefined,
  run: (timer: NightlyTimer) => Promise<void>,
): NightlyTimer {
  const cron = new Cron(
    nightlyPattern(installationId),
    { protect: true, ...(timezone ? { timezone } : {}) },
    async () => {
      await run(timer);
    },
  );
  const timer: NightlyTimer = {
    installationId,
    nextRun: (from) => cron.nextRun(from),
    stop: () => cron.stop(),
  };
  return timer;
}
