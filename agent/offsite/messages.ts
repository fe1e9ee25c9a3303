// Messages a person can act on for each kind of destination failure (Test Connection, jobs, routes).
import { isStorageError, StorageError } from '../../shared/storage/index';
import { AppError } from '../errors';
import {
  DESTINATION_TITLES,
  type DestinationDrift,
  type DestinationSettings,
  destinationLabel,
  type OffsiteKind,
} from './destinations';

/** The one line a person reads for `error` at destination `kind`; the provider's own text stays in details. */
export function describeDestinationError(
  kind: OffsiteKind,
  section: DestinationSettings,
  error: unknown,
): { code: string; message: string } {
  if (error instanceof AppError) return { code: error.code, message: error.message };
  if (!isStorageError(error)) {
    const raw = (error as Error)?.message ?? String(error);
    return { code: 'io', message: otherFailure(kind, section, raw) };
  }
  const where = destinationLabel(kind, section);
  const detail = error.message;
  const s = section as Partial<DestinationSettings<'sftp'> & DestinationSettings<'smb'>> &
    Partial<DestinationSettings<'s3'>>;
  let message: string;
  switch (error.code) {
    case 'auth_failed':
      if (/host key/.test(detail))
        message = `The server's identity changed: ${detail}. If the server was reinstalled, empty its pinned host key in the SFTP settings and save, to trust its new key.`;
      else if (kind === 'sftp' && /passphrase/.test(detail))
        message = 'The private key needs its passphrase, or the passphrase is wrong: check it.';
      else if (kind === 's3')
        message = `The storage refused the access key ID or secret access key: check both keys (and that the key is active).`;
      else if (kind === 'smb')
        message = `${where} refused the username or password: check them (and the domain, if your network uses one).`;
      else
        message = `${s.host} refused the username "${s.username}" with this password or key: check them and try again.`;
      break;
    case 'unreachable':
      message =
        kind === 's3' && / stopped answering during the upload /.test(detail)
          ? givenUpUpload(detail)
          : kind === 's3'
            ? `Cannot reach the storage at ${s.endpoint || 'Amazon S3'}: check the endpoint URL and this machine's network connection.`
            : `Cannot reach ${s.host} on port ${kind === 'sftp' ? s.port || 22 : s.port || 445}: check the host name and port, that the server is running, and that no firewall blocks it.`;
      break;
    case 'path_missing':
      message =
        kind === 'smb'
          ? `The share "${s.share}" does not exist on ${s.host}: check the share name (as the PC or NAS shows it).`
          : `The folder of ${where} does not exist: create it or choose another folder.`;
      break;
    case 'bucket_missing':
      message = `The bucket "${s.bucket}" does not exist: check its name (and region), or create it first.`;
      break;
    case 'permission_denied':
      message =
        kind === 's3'
          ? `The storage denied access to bucket "${s.bucket}": give this key permission to list, write and delete objects in it.`
          : kind === 'sftp'
            ? `The server does not let "${s.username}" create or write the folder ${s.remotePath}: create it on the server and give that user write access, or choose another folder.`
            : `${where} denied "${s.username}" writing to the folder: give that user write access to the share and folder, or choose another folder.`;
      break;
    case 'wrong_region':
      message = `The bucket "${s.bucket}" is not in region "${s.region}" or the endpoint is wrong: set the bucket's real region and its matching endpoint.`;
      break;
    case 'bad_key_format':
      message = /PuTTY/i.test(detail)
        ? 'The private key is in PuTTY format (.ppk); paste it in OpenSSH format instead: convert it with `puttygen key.ppk -O private-openssh -o key` (or PuTTYgen: Conversions > Export OpenSSH key).'
        : 'The private key is not an OpenSSH private key: paste the whole key, including its BEGIN and END lines.';
      break;
    case 'tool_missing':
      message =
        'smbclient is not installed on this machine: install it with `sudo apt-get install -y smbclient`, then test again.';
      break;
    case 'no_space':
      // A server that only says its write failed (SFTP "Failure"): the likely cause, not a certainty.
      message = /may be out of space/.test(detail)
        ? `${where}: ${detail}. Free some space there (or lower the number of backups kept), or raise the quota, then try again.`
        : `${where} is full: free some space there (or lower the number of backups kept).`;
      break;
    case 'integrity':
      message = `A copy at ${where} did not match the local file (${detail}); nothing was kept under its name. Try again; if it repeats, check the server's disk.`;
      break;
    case 'not_found':
      message = detail;
      break;
    case 'aborted':
      message = 'The operation was cancelled.';
      break;
    default:
      message = otherFailure(kind, section, detail);
  }
  return { code: error.code, message };
}

/**
 * An S3 upload given up on a server that stopped answering (S3Provider.put). Before every byte was
 * sent nothing can be under its name; after it (no answer to the Complete in time) the server may still
 * finish storing it, whole: the next sync lists what is there.
 */
function givenUpUpload(detail: string): string {
  if (/: it took all the data, /.test(detail))
    return `The storage at ${detail}, so the upload was given up; the server may still finish storing it, and the backup then appears there whole. Check that the server is running and reachable; the next sync checks for it and uploads it again if it is not there.`;
  return `The storage at ${detail}, so the upload was given up (nothing was stored under its name). Check that the server is running and reachable; the next sync or backup uploads it again.`;
}

/** A connection that opened and then dropped, or never spoke: the system's or the library's words for it. */
const DROPPED =
  /before handshake|connection lost|ECONNRESET|ECONNREFUSED|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EPIPE|socket hang up|timed out|NT_STATUS_(UNSUCCESSFUL|IO_TIMEOUT|CONNECTION_\w+|HOST_UNREACHABLE|NETWORK_UNREACHABLE|PORT_UNREACHABLE)/i;

/**
 * A failure with no code of its own, in words with what to check; the server's or library's own text
 * stays at the end in parentheses (never first: "getConnection: Connection lost before handshake").
 */
function otherFailure(kind: OffsiteKind, section: DestinationSettings, detail: string): string {
  const s = section as Partial<DestinationSettings<'sftp'> & DestinationSettings<'smb'>> &
    Partial<DestinationSettings<'s3'>>;
  if (DROPPED.test(detail)) {
    if (kind === 's3')
      return `The storage at ${s.endpoint || 'Amazon S3'} closed the connection or stopped answering: check the endpoint URL, that the server is running, and this machine's network connection (${detail}).`;
    const port = kind === 'sftp' ? s.port || 22 : s.port || 445;
    const what = kind === 'sftp' ? 'an SFTP (SSH) server' : 'a Windows share (SMB) server';
    return `${s.host} on port ${port} closed the connection or stopped answering: check that ${what} listens on that port, that it is running, and that no firewall or network drops the connection (${detail}).`;
  }
  return `The ${DESTINATION_TITLES[kind]} (${destinationLabel(kind, section)}) reported a problem: check its settings with Test Connection and that the server is running, then try again (${detail}).`;
}

/** The same failure as a StorageError carrying the readable message (what a job records). */
export function destinationError(kind: OffsiteKind, section: DestinationSettings, error: unknown): Error {
  if (error instanceof AppError) return error;
  const { message } = describeDestinationError(kind, section, error);
  if (isStorageError(error))
    return new StorageError(error.code, message, { permanent: error.permanent, cause: error });
  return new StorageError('io', message, { cause: error });
}

/** The failure as an API error: not_found stays 404, anything else at the destination is 503 with the readable message. */
export function destinationAppError(
  kind: OffsiteKind,
  section: DestinationSettings,
  error: unknown,
): AppError {
  if (error instanceof AppError) return error;
  const { code, message } = describeDestinationError(kind, section, error);
  if (code === 'not_found') return new AppError('not_found', message, { cause: error });
  return new AppError('dependency_down', message, { details: { code }, cause: error });
}

/** A destination a job left alone from some step on, and why (in the job's result and the offsite state). */
export interface DestinationSkip {
  reason: DestinationDrift;
  message: string;
}

/** The skip a job reports for a destination turned off (or changed) while it ran. */
export function destinationSkip(
  kind: OffsiteKind,
  reason: DestinationDrift,
  autoUpload = false,
): DestinationSkip {
  const title = `the ${DESTINATION_TITLES[kind]}`;
  const message =
    reason === 'changed'
      ? `skipped: the settings of ${title} were changed during the job (address, folder or credentials); this job uploaded nothing more to and deleted nothing at the place it started with`
      : `skipped: ${title}${autoUpload ? ' (or its auto-upload)' : ''} was turned off during the job; this job uploaded nothing more and deleted nothing there`;
  return { reason, message };
}

/** What a prune reports when it stopped because the number of backups kept was raised while it ran. */
export function keptRaisedMessage(planned: number, now: number): string {
  return `kept: the number of backups kept was raised during the job (from ${planned} to ${now}); this job deleted nothing more`;
}
