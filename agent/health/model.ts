/** What health reports look like: per-area status with a reason, and the worst of them overall. */

export const HEALTH_STATUSES = ['ok', 'warning', 'failing'] as const;
export type HealthStatus = (typeof HEALTH_STATUSES)[number];

export const HEALTH_AREAS = [
  'backups',
  'offsite',
  'dr',
  'verification',
  'disk',
  'keys',
  'jobs',
  'alerts',
] as const;
export type HealthArea = (typeof HEALTH_AREAS)[number];

/** One area's verdict: a status, a sentence a person can act on, and any details worth showing. */
export interface AreaHealth {
  status: HealthStatus;
  reason: string;
  [detail: string]: unknown;
}

/** What `GET /api/v1/health` returns. */
export interface HealthReport {
  status: HealthStatus;
  checkedAt: string;
  areas: Record<HealthArea, AreaHealth>;
}

/** Computes one area's health at `now`. Each area's source is one small function. */
export type AreaSource = (now: Date) => Promise<AreaHealth>;

const RANK: Record<HealthStatus, number> = { ok: 0, warning: 1, failing: 2 };

/** The worse of the given statuses (ok if none). */
export function worst(statuses: Iterable<HealthStatus>): HealthStatus {
  let result: HealthStatus = 'ok';
  for (const s of statuses) if (RANK[s] > RANK[result]) result = s;
  return result;
}

/** 0 ok, 1 warning, 2 failing: how metrics show a status. */
export function statusRank(status: HealthStatus): number {
  return RANK[status];
}

/**
 * A short human duration: "3 h", "2 days", "45 min". Whole units gone by, rounded down as the CLI's
 * ages are: 60 h is "2 days" on the page and in `gem-backup`, never "3 days" (the overdue threshold).
 */
export function formatAge(ms: number): string {
  // A time a little after the clock (set back since) is just now, never "-3 min".
  if (ms < 0) ms = 0;
  const min = Math.floor(ms / 60_000);
  if (min < 90) return `${min} min`;
  const h = Math.floor(ms / 3_600_000);
  if (h < 48) return `${h} h`;
  return `${Math.floor(ms / 86_400_000)} days`;
}
