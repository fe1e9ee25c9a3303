// Offsite replication to SFTP, S3-compatible and SMB destinations: what the rest of the agent calls.
export { type ConnectionTestResult, probeName, testConnection } from './connection';
export {
  DESTINATION_TITLES,
  type DestinationSettings,
  destinationOptions,
  OFFSITE_KINDS,
  type OffsiteKind,
  parseOffsiteKind,
  s3Options,
} from './destinations';
export { describeDestinationError } from './messages';
export {
  type AutoUploadResult,
  OffsiteService,
  type OffsiteServiceOptions,
  offsiteServiceFor,
  offsiteUploadHook,
  type RemoteBackup,
  type SyncResult,
} from './service';
export { type DestinationState, OFFSITE_STATE_FILE, type OffsiteState, OffsiteStateStore } from './state';
export { downloadToCatalog, planRemotePrune, uploadBackup } from './transfer';
