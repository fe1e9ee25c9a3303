/** How the CLI writes sizes and ages for people (scripts get exact bytes and ISO times: `list --json`). */

/** "812.0 KiB", "51.5 MiB": the form `create` and `list` have always printed. */
export function formatSize(bytes: number): string {
  return bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** How long ago `iso` was: "less than a minute ago", "12 min ago", "3 h ago", "4 days ago". */
export function formatAge(iso: string, now = Date.now()): string {
  const age = now - Date.parse(iso);
  if (!Number.isFinite(age)) return `at ${iso}`;
  if (age < 0) return `at ${iso}, in the future by this clock`;
  if (age < MINUTE) return 'less than a minute ago';
  if (age < HOUR) return `${Math.floor(age / MINUTE)} min ago`;
  if (age < 2 * DAY) return `${Math.floor(age / HOUR)} h ago`;
  return `${Math.floor(age / DAY)} days ago`;
}

/** How long until `iso`: "in less than a minute", "in 12 min", "in 9 h", "in 3 days" (a time past: formatAge's words). */
export function formatIn(iso: string, now = Date.now()): string {
  const ahead = Date.parse(iso) - now;
  if (!Number.isFinite(ahead)) return `at ${iso}`;
  if (ahead < 0) return formatAge(iso, now);
  if (ahead < MINUTE) return 'in less than a minute';
  if (ahead < HOUR) return `in ${Math.floor(ahead / MINUTE)} min`;
  if (ahead < 2 * DAY) return `in ${Math.floor(ahead / HOUR)} h`;
  return `in ${Math.floor(ahead / DAY)} days`;
}
