/**
 * The legacy B2 configuration of agents before 0.1: a plaintext `settings.json` in the data dir,
 * `{"b2": {"keyId", "applicationKey", "bucket", "prefix"?, "enabled"?, "autoUpload"?}}`. At start it is
 * moved into the S3 destination (provider 'b2', credentials kept, sealed) and the file is removed; if
 * an S3 destination is already configured nothing is moved and the file stays, with a warning.
 * B2's S3 endpoint and region were implied by the old client, so they must be filled in by a person:
 * the S3 section then reports `needsAttention: ['endpoint', 'region']`.
 */
import { z } from 'zod';
import type { Settings } from '../../shared/api/settings';

export const LEGACY_SETTINGS_FILE = 'settings.json';

export const LegacyB2Settings = z.object({
  b2: z.object({
    keyId: z.string().min(1),
    applicationKey: z.string().min(1),
    bucket: z.string().min(1),
    prefix: z.string().optional(),
    enabled: z.boolean().optional(),
    autoUpload: z.boolean().optional(),
  }),
});
export type LegacyB2Settings = z.infer<typeof LegacyB2Settings>;

/** The S3 destination a legacy B2 configuration becomes (endpoint and region left for a person). */
export function migrateLegacyB2(legacy: LegacyB2Settings): Settings['offsite']['s3'] {
  const b2 = legacy.b2;
  return {
    enabled: b2.enabled ?? true,
    provider: 'b2',
    accessKeyId: b2.keyId,
    secretAccessKey: b2.applicationKey,
    bucket: b2.bucket,
    region: '',
    ...(b2.prefix ? { prefix: b2.prefix } : {}),
    forcePathStyle: false,
    autoUpload: b2.autoUpload ?? true,
  };
}
