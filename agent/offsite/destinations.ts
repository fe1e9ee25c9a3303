// The three offsite destinations: their names, and provider options built from a settings section (S3 presets checked).
import {
  AWS_ENDPOINT_RULE,
  bareHost,
  ENDPOINT_CREDENTIALS_RULE,
  endpointHoldsCredentials,
  isAwsEndpoint,
  type Settings,
} from '../../shared/api/settings';
import { AppError } from '../errors';
import type { S3Options } from '../providers/s3';
import type { SftpOptions } from '../providers/sftp';
import type { SmbOptions } from '../providers/smb';

export const OFFSITE_KINDS = ['sftp', 's3', 'smb'] as const;
export type OffsiteKind = (typeof OFFSITE_KINDS)[number];

/** A destination's settings section, secrets in plain text. */
export type DestinationSettings<K extends OffsiteKind = OffsiteKind> = Settings['offsite'][K];

export interface DestinationOptions {
  sftp: SftpOptions;
  s3: S3Options;
  smb: SmbOptions;
}

/** What the product calls each destination in messages. */
export const DESTINATION_TITLES: Record<OffsiteKind, string> = {
  sftp: 'SFTP server',
  s3: 'S3 storage',
  smb: 'Windows share (SMB)',
};

/** The destination named in a URL; anything else is a 404. */
export function parseOffsiteKind(value: string): OffsiteKind {
  if ((OFFSITE_KINDS as readonly string[]).includes(value)) return value as OffsiteKind;
  throw new AppError('not_found', `no offsite destination "${value}": use sftp, s3 or smb`);
}

/** A settings problem a person must fix, naming the field (422 from a route, a failed test otherwise). */
function fieldError(kind: OffsiteKind, field: string, message: string): AppError {
  const path = `offsite.${kind}.${field}`;
  return new AppError('unprocessable', message, {
    details: { field: path, issues: [{ field: path, message }] },
  });
}

function required(kind: OffsiteKind, value: string | undefined, field: string, label: string): string {
  const text = value?.trim() ?? '';
  if (!text) throw fieldError(kind, field, `Enter the ${label}.`);
  return text;
}

/** A host as ssh2 and smbclient take it (bareHost). */
function hostOf(kind: OffsiteKind, value: string | undefined, label: string): string {
  return bareHost(required(kind, value, 'host', label));
}

/**
 * The S3 options of a section under its provider preset: AWS takes no endpoint; B2 needs its
 * `https://s3.<region>.backblazeb2.com` endpoint with the same region; Wasabi's endpoint is filled in
 * from the region; MinIO always uses path-style URLs; Other needs an endpoint.
 */
export function s3Options(s3: DestinationSettings<'s3'>): S3Options {
  const bucket = required('s3', s3.bucket, 'bucket', 'bucket name');
  const accessKeyId = required('s3', s3.accessKeyId, 'accessKeyId', 'access key ID');
  const secretAccessKey = required('s3', s3.secretAccessKey, 'secretAccessKey', 'secret access key');
  let endpoint = s3.endpoint?.trim() || undefined;
  // Settings saved before the rule: refused here, before the endpoint reaches a message.
  if (endpoint && endpointHoldsCredentials(endpoint)) {
    throw fieldError('s3', 'endpoint', `The endpoint URL ${ENDPOINT_CREDENTIALS_RULE}.`);
  }
  let region = s3.region.trim();
  let forcePathStyle = s3.forcePathStyle;
  switch (s3.provider) {
    case 'aws':
      if (endpoint && !isAwsEndpoint(endpoint)) throw fieldError('s3', 'endpoint', AWS_ENDPOINT_RULE);
      region = required('s3', region, 'region', "bucket's region (e.g. eu-central-1)");
      break;
    case 'b2': {
      if (!endpoint) {
        throw fieldError(
          's3',
          'endpoint',
          'Backblaze B2 needs its S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com (shown on the bucket’s page).',
        );
      }
      const match = /^https:\/\/s3\.([a-z0-9-]+)\.backblazeb2\.com\/?$/i.exec(endpoint);
      if (!match) {
        throw fieldError(
          's3',
          'endpoint',
          `"${endpoint}" is not a Backblaze B2 S3 endpoint: it looks like https://s3.<region>.backblazeb2.com.`,
        );
      }
      const endpointRegion = match[1]!.toLowerCase();
      if (!region) region = endpointRegion;
      if (region !== endpointRegion) {
        throw fieldError(
          's3',
          'region',
          `The region "${region}" does not match the endpoint's region "${endpointRegion}": use ${endpointRegion}.`,
        );
      }
      break;
    }
    case 'wasabi': {
      region = required('s3', region, 'region', "bucket's region (e.g. us-east-1)");
      const expected = `https://s3.${region}.wasabisys.com`;
      if (!endpoint) endpoint = expected;
      const match = /^https:\/\/s3\.([a-z0-9-]+)\.wasabisys\.com\/?$/i.exec(endpoint);
      if (match && match[1]!.toLowerCase() !== region.toLowerCase()) {
        throw fieldError(
          's3',
          'endpoint',
          `The Wasabi endpoint must match the bucket's region: use ${expected} (or change the region).`,
        );
      }
      break;
    }
    case 'minio':
      endpoint = required('s3', endpoint, 'endpoint', 'MinIO server address (e.g. http://nas.local:9000)');
      region ||= 'us-east-1';
      forcePathStyle = true;
      break;
    default:
      endpoint = required('s3', endpoint, 'endpoint', 'endpoint URL of the S3-compatible service');
      region ||= 'us-east-1';
  }
  return {
    ...(endpoint ? { endpoint } : {}),
    region,
    bucket,
    ...(s3.prefix?.trim() ? { prefix: s3.prefix.trim() } : {}),
    accessKeyId,
    secretAccessKey,
    forcePathStyle,
    id: 's3',
  };
}

function sftpOptions(sftp: DestinationSettings<'sftp'>): SftpOptions {
  const host = hostOf('sftp', sftp.host, 'server’s host name');
  const username = required('sftp', sftp.username, 'username', 'username');
  const remotePath = required('sftp', sftp.remotePath, 'remotePath', 'remote folder');
  const auth = sftp.auth;
  const base = {
    host,
    port: sftp.port || 22,
    username,
    remotePath,
    ...(sftp.hostKeyFingerprint ? { hostKeyFingerprint: sftp.hostKeyFingerprint } : {}),
    id: 'sftp',
  };
  if (auth && 'privateKey' in auth && auth.privateKey) {
    return {
      ...base,
      privateKey: auth.privateKey,
      ...(auth.passphrase ? { passphrase: auth.passphrase } : {}),
    };
  }
  if (auth && 'password' in auth && auth.password) return { ...base, password: auth.password };
  throw fieldError('sftp', 'auth', 'Enter the password or paste the private key.');
}

function smbOptions(smb: DestinationSettings<'smb'>): SmbOptions {
  return {
    host: hostOf('smb', smb.host, 'host name of the PC or NAS'),
    share: required('smb', smb.share, 'share', 'share name').replace(/^[\\/]+|[\\/]+$/g, ''),
    username: required('smb', smb.username, 'username', 'username'),
    password: required('smb', smb.password, 'password', 'password'),
    ...(smb.domain?.trim() ? { domain: smb.domain.trim() } : {}),
    remotePath: smb.remotePath?.trim() || '/gem/',
    ...(smb.port ? { port: smb.port } : {}),
    id: 'smb',
  };
}

/** The provider options of a destination's section; throws a 422 naming the field that is missing or wrong. */
export function destinationOptions<K extends OffsiteKind>(
  kind: K,
  section: DestinationSettings<K>,
): DestinationOptions[K] {
  switch (kind) {
    case 'sftp':
      return sftpOptions(section as DestinationSettings<'sftp'>) as DestinationOptions[K];
    case 's3':
      return s3Options(section as DestinationSettings<'s3'>) as DestinationOptions[K];
    default:
      return smbOptions(section as DestinationSettings<'smb'>) as DestinationOptions[K];
  }
}

/** Where a destination points, for messages: `sftp://host:22/path`, `s3://bucket/prefix`, `//host/share/path`. */
export function destinationLabel(kind: OffsiteKind, section: DestinationSettings): string {
  if (kind === 'sftp') {
    const s = section as DestinationSettings<'sftp'>;
    return `${s.host}:${s.port || 22} (folder ${s.remotePath})`;
  }
  if (kind === 's3') {
    const s = section as DestinationSettings<'s3'>;
    return `bucket ${s.bucket}${s.prefix ? `/${s.prefix.replace(/^\/+/, '')}` : ''}`;
  }
  const s = section as DestinationSettings<'smb'>;
  return `//${s.host}/${s.share}${s.remotePath || '/gem/'}`;
}

/** Why a job stops touching a destination it started with: turned off, or now pointing elsewhere / other credentials. */
export type DestinationDrift = 'turned_off' | 'changed';

/**
 * Compares the section a job started with to the current one: 'turned_off' if the destination (or,
 * with `autoUpload`, its auto-upload) is now off; 'changed' if anything that says where it is or who
 * signs in differs (host, port, bucket, endpoint, folder, share, username, password, key...; compared
 * as the provider options, so whitespace alone is no change); undefined while it is the same place.
 * A host key pinned meanwhile where the job started with none is the first connection's own pin, no change.
 */
export function destinationDrift<K extends OffsiteKind>(
  kind: K,
  started: DestinationSettings<K>,
  current: DestinationSettings<K>,
  options: { autoUpload?: boolean } = {},
): DestinationDrift | undefined {
  if (!current.enabled || (options.autoUpload && !current.autoUpload)) return 'turned_off';
  const pinnedAtStart =
    kind === 'sftp' && Boolean((started as DestinationSettings<'sftp'>).hostKeyFingerprint);
  const identity = (section: DestinationSettings<K>): string | undefined => {
    try {
      const { hostKeyFingerprint, ...rest } = destinationOptions(kind, section) as DestinationOptions[K] & {
        hostKeyFingerprint?: string;
      };
      return canonicalJson(pinnedAtStart ? { ...rest, hostKeyFingerprint } : rest);
    } catch {
      return undefined; // incomplete now: not the place the job started with
    }
  };
  const before = identity(started);
  const now = identity(current);
  return before !== undefined && before === now ? undefined : 'changed';
}

/** JSON with sorted keys and no undefined fields, so two equal option sets compare equal as text. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(
          Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)),
        )
      : v,
  );
}
