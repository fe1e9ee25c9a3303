/** Health of the backups: per-area checks, the job watchdog, and the service that evaluates them. */
export {
  type AreaHealth,
  type AreaSource,
  formatAge,
  HEALTH_AREAS,
  HEALTH_STATUSES,
  type HealthArea,
  type HealthReport,
  type HealthStatus,
  statusRank,
  worst,
} from './model';
export { type HealthOptions, HealthService, healthFor } from './service';
export {
  backupsArea,
  DR_AGE_DAYS,
  diskArea,
  drArea,
  type FreeSpace,
  jobsArea,
  keysArea,
  OVERDUE,
  offsiteArea,
  SCHEDULE_INTERVAL_MS,
  statfsFreeSpace,
  verificationArea,
} from './sources';
export { type HealthState, HealthStateStore } from './state';
export {
  DEFAULT_WATCHDOG_THRESHOLDS,
  JobWatchdog,
  type StalledJob,
  type WatchdogThresholds,
} from './watchdog';
