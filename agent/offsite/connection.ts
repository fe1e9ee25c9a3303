// Test Connection: a real round trip to a destination (connect, sign in, list, write and remove a probe file).
import { randomBytes } from 'node:crypto';
import type { StorageProvider } from '../../shared/storage/index';
import { AppError } from '../errors';
import { createProvider } from '../providers/index';
import {
  DESTINATION_TITLES,
  type DestinationOptions,
  type DestinationSettings,
  destinationLabel,
  destinationOptions,
  type OffsiteKind,
} from './destinations';
import { describeDestinationError } from './messages';

/** What `POST /api/v1/offsite/:provider/test` answers. */
export interface ConnectionTestResult {
  ok: boolean;
  message: string;
  details: {
    /** The failure's stable code (auth_failed, unreachable, bucket_missing, ...) when not ok. */
    code?: string;
    /** The step that failed: settings, connect (sign in + list), write, check, remove. */
    step?: 'settings' | 'connect' | 'write' | 'check' | 'remove';
    /** The field to fix, for a settings problem. */
    field?: string;
    /** The provider's own words, for support. */
    error?: string;
    /** Backups found at the destination, when it answered. */
    backups?: number;
    /** SFTP: the server's host key (`SHA256:…`), once it was seen and accepted. */
    hostKeyFingerprint?: string;
    durationMs: number;
  };
}

/** A name list() never shows (not a backup name) and put() accepts; random so two tests never collide. */
export function probeName(): string {
  return `gem-connection-test-${randomBytes(6).toString('hex')}.probe`;
}

const PROBE = new TextEncoder().encode('GEM Backup & Restore connection test: safe to delete\n');

/**
 * Tests a destination with the given (possibly unsaved) settings section: sign in, list, then write,
 * stat and remove a small probe object. Never throws; every failure is `{ok: false}` with a message
 * a person can act on.
 */
export async function testConnection<K extends OffsiteKind>(
  kind: K,
  section: DestinationSettings<K>,
  overrides: Partial<DestinationOptions[K]> = {},
): Promise<ConnectionTestResult> {
  const started = Date.now();
  const duration = () => Date.now() - started;
  let options: DestinationOptions[K];
  try {
    options = { ...destinationOptions(kind, section), ...overrides };
  } catch (error) {
    const app = error as AppError;
    return {
      ok: false,
      message: app.message,
      details: {
        code: 'invalid_settings',
        step: 'settings',
        ...(typeof app.details?.['field'] === 'string' ? { field: app.details['field'] } : {}),
        durationMs: duration(),
      },
    };
  }
  // SFTP: the host key accepted, pinned already or trusted on first use, for the page to show.
  let hostKey: string | undefined;
  if (kind === 'sftp') {
    const sftp = options as DestinationOptions['sftp'];
    const record = sftp.onHostKey;
    hostKey = sftp.hostKeyFingerprint;
    sftp.onHostKey = (fingerprint) => {
      hostKey = fingerprint;
      return record?.(fingerprint);
    };
  }
  let provider: StorageProvider | undefined;
  let step: NonNullable<ConnectionTestResult['details']['step']> = 'connect';
  let backups: number | undefined;
  try {
    provider = createProvider(kind, options as never);
    backups = (await provider.list()).length;
    const name = probeName();
    step = 'write';
    await provider.put(name, { size: PROBE.length, open: () => new Blob([PROBE]).stream() });
    step = 'check';
    const stored = await provider.stat(name);
    step = 'remove';
    await provider.delete(name);
    if (stored.size !== PROBE.length)
      throw new AppError('internal', 'the probe file came back with a different size');
    return {
      ok: true,
      message: `Connected to ${DESTINATION_TITLES[kind]} ${destinationLabel(kind, section)}: a test file was written and removed. ${backups} backup${backups === 1 ? '' : 's'} there.`,
      details: { backups, ...(hostKey ? { hostKeyFingerprint: hostKey } : {}), durationMs: duration() },
    };
  } catch (error) {
    const { code, message } = describeDestinationError(kind, section, error);
    return {
      ok: false,
      message,
      details: {
        code,
        step,
        error: (error as Error)?.message ?? String(error),
        ...(backups !== undefined ? { backups } : {}),
        durationMs: duration(),
      },
    };
  } finally {
    await provider?.close?.().catch(() => undefined);
  }
}
