// The backup destinations the agent can use, and one factory that builds them from plain settings.
import type { StorageProvider } from '../../shared/storage/index';
import { type LocalFolderOptions, LocalFolderProvider } from './local';
import { type S3Options, S3Provider } from './s3';
import { type SftpOptions, SftpProvider } from './sftp';
import { type SmbOptions, SmbProvider } from './smb';

export { BACKUP_NAME_PATTERN, isBackupName } from '../../shared/storage/names';
export { type LocalFolderOptions, LocalFolderProvider } from './local';
export { type RetryOptions, withRetry } from './retry';
export { type S3Options, S3Provider } from './s3';
export { hostKeyFingerprint, type SftpOptions, SftpProvider } from './sftp';
export { type SmbOptions, SmbProvider } from './smb';

export type ProviderKind = 'local' | 'sftp' | 's3' | 'smb';

export interface ProviderSettings {
  local: LocalFolderOptions;
  sftp: SftpOptions;
  s3: S3Options;
  smb: SmbOptions;
}

/** Builds the provider of `kind` from its plain (already decrypted) settings object. */
export function createProvider<K extends ProviderKind>(
  kind: K,
  settings: ProviderSettings[K],
): StorageProvider {
  switch (kind) {
    case 'local':
      return new LocalFolderProvider(settings as LocalFolderOptions);
    case 'sftp':
      return new SftpProvider(settings as SftpOptions);
    case 's3':
      return new S3Provider(settings as S3Options);
    case 'smb':
      return new SmbProvider(settings as SmbOptions);
    default:
      throw new Error(`unknown storage provider kind: ${String(kind)}`);
  }
}
