/** Names of backup files as they are stored everywhere: what list() shows and what put() accepts. */

/** `gem-backup-YYYY-MM-DD-HHMMSS.tar.gz`; anything else in a destination folder is not ours. */
const BACKUP_NAME_PATTERN = /^gem-backup-\d{4}-\d{2}-\d{2}-\d{6}\.tar\.gz$/;

/** True if `name` is a backup file name (temp names and foreign files are not). */
export function isBackupName(name: string): boolean {
  return BACKUP_NAME_PATTERN.test(name);
}
