/**
 * The CLI's progress line in the page's words: the phase table is the page's own (agent/ui/format.js,
 * loaded at run time from beside this module, as the agent serves it), not a copy.
 */
import type { ProgressUnit } from '../jobs/runner';

/** A job's progress as the page's estimator reads it. */
export interface StepProgress {
  phase: string;
  bytesDone: number;
  bytesTotal: number;
  unit?: ProgressUnit;
  /** The step within the phase whose count this is (a restore's safety backup: "verify"). */
  step?: string;
}

interface PageFormat {
  /** A job step in the owner's words ("dump" -> "Exporting the database"), with its own step's if any. */
  phase(name: string, step?: string): string;
  /** An estimator of the current step's time left ("about 40 s left", or '' when it cannot say). */
  timeLeftEstimator(): (progress: StepProgress, now: number) => string;
}

// A URL rather than a literal specifier: the page's module is read where the agent serves it from
// (scripts/build.mjs rewrites import.meta.url to this source file's place), never bundled into dist/.
const format = (await import(new URL('../ui/format.js', import.meta.url).href)) as PageFormat;

/**
 * "Exporting the database 4.1 MiB", "Encrypting and packing the backup 36%", with the step's time
 * left if one is given ("Uploading … 36%, about 40 s left"), or only the words when nothing is counted;
 * a phase's own step is named after it ("Taking a safety backup of the current data: verifying 36%").
 */
export function progressWords(phase: string, done: number, total: number, left = '', step?: string): string {
  const words = format.phase(phase, step) || phase;
  if (total > 0)
    return `${words} ${Math.floor((100 * Math.min(done, total)) / total)}%${left ? `, ${left}` : ''}`;
  if (done > 0) return `${words} ${(done / 1048576).toFixed(1)} MiB`;
  return words;
}

/** The page's estimator of a step's time left (agent/ui/format.js timeLeftEstimator): one per command. */
export function timeLeftEstimator(): (progress: StepProgress, now: number) => string {
  return format.timeLeftEstimator();
}
