/** Cloud DR in the agent: the service (status, push, nightly, opt-out, recovery) and its parts. */
export { DrClient, type DrFaults } from './client';
export { chooseEscrowKey, escrowHeader } from './escrow';
export { DEFAULT_TUNING, type PushResult, type PushTuning, pushToCloud, REUSE_MAX_AGE_MS } from './push';
export { abandonRecovery, type RecoverFaults, type RecoverResult, recoverFromCloud } from './recover';
export { nextNightlyRun, nightlyOffsetSeconds, nightlyPattern } from './schedule';
export { DrService, type DrServiceOptions, type DrStatus, drServiceFor } from './service';
export type { DrPushRecord, DrState } from './state';
export {
  normalizeInstallationId,
  RecoveryInstallationId,
  type UnfinishedRecovery,
  UnfinishedRecoveryFile,
} from './unfinished';
