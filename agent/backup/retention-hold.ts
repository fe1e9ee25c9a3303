/**
 * The retention hold (`retention-hold.json` beside the backup records): while it is there, no prune
 * deletes anything, local or offsite. It is set when the backup records (and so the pins) were found
 * damaged and set aside, and ends only when the owner resumes pruning (POST /api/v1/retention/resume).
 */
import { readFile, rm } from 'node:fs/promises';
import { basename } from 'node:path';
import { z } from 'zod';
import { writeSmallFileAtomic } from '../system/atomic-file';
import { withFileUpdateLock } from '../system/json-state';

/** The hold file's shape. */
const HoldFile = z.object({
  since: z.string(),
  reason: z.literal('records_damaged'),
  /** The names of the damaged records files set aside (in the data dir), oldest first. */
  setAside: z.array(z.string()).min(1),
});

/** A hold in force: when it began, the damaged files set aside, and the one sentence the owner reads. */
export interface RetentionHoldInfo {
  since?: string;
  setAside: string[];
  message: string;
}

const CHECK = 'pins may be lost. Check the pins, then resume pruning.';

function heldFor(setAside: string[]): string {
  return `Pruning is paused: the backup records were damaged and set aside as ${setAside.join(', ')}; ${CHECK}`;
}

export class RetentionHold {
  constructor(readonly path: string) {}

  /**
   * The hold in force, or undefined when there is none (no file). A hold file that is damaged or
   * cannot be read holds pruning too: pins are unknown until the owner resumes.
   */
  async get(): Promise<RetentionHoldInfo | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined;
      return {
        setAside: [],
        message: `Pruning is paused: the retention hold file ${basename(this.path)} cannot be read (${code ?? String(error)}); ${CHECK}`,
      };
    }
    const parsed = HoldFile.safeParse(parseJson(text));
    if (!parsed.success) {
      return {
        setAside: [],
        message: `Pruning is paused: the retention hold file ${basename(this.path)} is damaged; ${CHECK}`,
      };
    }
    return {
      since: parsed.data.since,
      setAside: parsed.data.setAside,
      message: heldFor(parsed.data.setAside),
    };
  }

  /** Holds pruning for a damaged records file set aside as `asideName` (added to a hold in force). */
  async hold(asideName: string): Promise<void> {
    await withFileUpdateLock(this.path, async () => {
      const now = await this.get();
      const setAside = [...(now?.setAside ?? []), asideName];
      const file = { since: now?.since ?? new Date().toISOString(), reason: 'records_damaged', setAside };
      await writeSmallFileAtomic(this.path, `${JSON.stringify(file, null, 2)}\n`, 0o600);
    });
  }

  /**
   * Ends the hold (the owner checked the pins); returns the hold that was in force, if any.
   * `beforeChange` is called just before the hold is removed (it may throw: nothing removed).
   */
  async resume(beforeChange?: () => void): Promise<RetentionHoldInfo | undefined> {
    return withFileUpdateLock(this.path, async () => {
      const was = await this.get();
      beforeChange?.();
      await rm(this.path, { force: true });
      return was;
    });
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
