// The backup destinations the agent can use, and one factory that builds them from plain settings.
import type {
  BackupSource,
  ProviderProperties,
  StorageProvider,
  StoredObject,
  TempSweepOptions,
  TempSweepResult,
} from '../../shared/storage/index';
import { type LocalFolderOptions, LocalFolderProvider } from './local';
import type { S3Options } from './s3';
import type { SftpOptions } from './sftp';
import { type SmbOptions, SmbProvider } from './smb';

// S3 and SFTP are imported from their own modules (./s3, ./sftp) where a class is needed: re-exporting
// them here would load the AWS SDK and ssh2 into every agent, whether a destination uses them or not.
export type { S3Options } from './s3';
export type { SftpOptions } from './sftp';
export type { SmbOptions } from './smb';

type ProviderKind = 'local' | 'sftp' | 's3' | 'smb';

interface ProviderSettings {
  local: LocalFolderOptions;
  sftp: SftpOptions;
  s3: S3Options;
  smb: SmbOptions;
}

/**
 * A provider whose module is imported on its first operation. Loading the AWS SDK (client-s3 +
 * lib-storage) or ssh2-sftp-client adds 16-17 MB of RSS each to a process (measured under tsx);
 * most installations use one destination or none.
 */
class LazyProvider implements StorageProvider {
  readonly id: string;
  private loaded?: StorageProvider;
  private loading?: Promise<StorageProvider>;

  constructor(
    id: string,
    private readonly load: () => Promise<StorageProvider>,
    /** What the real provider will say, asked before its module is loaded (uploadBackup asks first). */
    private readonly expected: ProviderProperties = { atomicReplace: true },
  ) {
    this.id = id;
  }

  /** The real provider's properties once loaded; before that, the expected ones. */
  get properties(): ProviderProperties {
    return this.loaded?.properties ?? this.expected;
  }

  private provider(): Promise<StorageProvider> {
    this.loading ??= this.load().then((provider) => {
      this.loaded = provider;
      return provider;
    });
    return this.loading;
  }

  async put(
    name: string,
    source: BackupSource,
    options?: { signal?: AbortSignal; onProgress?: (bytes: number) => void },
  ): Promise<StoredObject> {
    return (await this.provider()).put(name, source, options);
  }

  async get(name: string, options?: { signal?: AbortSignal }): Promise<ReadableStream<Uint8Array>> {
    return (await this.provider()).get(name, options);
  }

  async stat(name: string, options?: { signal?: AbortSignal }): Promise<StoredObject> {
    return (await this.provider()).stat(name, options);
  }

  async list(options?: { signal?: AbortSignal }): Promise<StoredObject[]> {
    return (await this.provider()).list(options);
  }

  async delete(name: string, options?: { signal?: AbortSignal }): Promise<void> {
    return (await this.provider()).delete(name, options);
  }

  async sweepTemp(options?: TempSweepOptions): Promise<TempSweepResult> {
    const provider = await this.provider();
    if (!provider.sweepTemp) return { removed: [] };
    return provider.sweepTemp(options);
  }

  async close(): Promise<void> {
    // Nothing to release if no operation ever ran.
    if (!this.loading) return;
    await (await this.loading).close?.();
  }
}

/** Builds the provider of `kind` from its plain (already decrypted) settings object. */
export function createProvider<K extends ProviderKind>(
  kind: K,
  settings: ProviderSettings[K],
): StorageProvider {
  switch (kind) {
    case 'local':
      return new LocalFolderProvider(settings as LocalFolderOptions);
    case 'sftp': {
      const options = settings as SftpOptions;
      return new LazyProvider(
        options.id ?? 'sftp',
        async () => new (await import('./sftp')).SftpProvider(options),
        { atomicReplace: true, exclusivePut: true },
      );
    }
    case 's3': {
      const options = settings as S3Options;
      return new LazyProvider(options.id ?? 's3', async () => new (await import('./s3')).S3Provider(options));
    }
    case 'smb':
      return new SmbProvider(settings as SmbOptions);
    default:
      throw new Error(`unknown storage provider kind: ${String(kind)}`);
  }
}
