// Offsite replication to SFTP, S3-compatible and SMB destinations: what the rest of the agent calls.
export { testConnection } from './connection';
export { parseOffsiteKind, s3Options } from './destinations';
export { type OffsiteServiceOptions, offsiteServiceFor } from './service';
export { uploadBackup } from './transfer';
