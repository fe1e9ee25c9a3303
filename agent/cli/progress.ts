/**
 * The CLI's progress line in the page's words: the phase table is the page's own (agent/ui/format.js,
 * loaded at run time from beside this module, as the agent serves it), not a copy.
 */

interface PageFormat {
  /** A job step in the owner's words ("dump" -> "Exporting the database"). */
  phase(name: string): string;
}

// A URL rather than a literal specifier: the page's module is read where the agent serves it from
// (scripts/build.mjs rewrites import.meta.url to this source file's place), never bundled into dist/.
const format = (await import(new URL('../ui/format.js', import.meta.url).href)) as PageFormat;

/** "Exporting the database 4.1 MiB", "Encrypting and packing the backup 36%", or only the words when nothing is counted. */
export function progressWords(phase: string, done: number, total: number): string {
  const words = format.phase(phase) || phase;
  if (total > 0) return `${words} ${Math.floor((100 * Math.min(done, total)) / total)}%`;
  if (done > 0) return `${words} ${(done / 1048576).toFixed(1)} MiB`;
  return words;
}
