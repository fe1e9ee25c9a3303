/** Knowing the backups are good: the scheduled verification of every copy, and the key-file check. */
export { headSlot, type PushedCopy, type SlotMetadata, slotDifferences } from './cloud-slot';
export { checkKeysFile, type KeyCheckResult } from './key-check';
export { runVerification, startVerification, type VerificationSummary } from './run';
export { VERIFICATION_CRON, VerificationScheduler } from './schedule';
export {
  activeTargets,
  currentTargetResults,
  type TargetResult,
  type VerificationRun,
  type VerificationState,
  VerificationStateStore,
  type VerificationTarget,
  verificationStateFor,
} from './state';
