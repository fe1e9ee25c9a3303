/** Receiving a backup file from outside (page upload, offsite download): streamed to a temp file, checked, then listed. */
import { stat, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { HeaderScanner, stanzaKeyIds } from '../../shared/envelope';
import type { Agent } from '../agent';
import { AppError } from '../errors';
import { mkdirDurable, writeFileAtomic } from '../system/atomic-file';
import { checkNameFitsHeader } from './catalog';
import { envelopeToAppError, readBackup, readHeaderOfFile } from './reader';

/** Free and total bytes of the file system holding a folder. */
export interface DiskSpace {
  free: number;
  total: number;
}

/** Measures the file system holding `dir` (injectable for tests of a nearly full disk). */
export type SpaceProbe = (dir: string) => Promise<DiskSpace>;

export const statfsSpace: SpaceProbe = async (dir) => {
  const s = await statfs(dir);
  return { free: Number(s.bavail) * Number(s.bsize), total: Number(s.blocks) * Number(s.bsize) };
};

const GiB = 1024 ** 3;

/**
 * Room kept free beside the backups: the embedded database shares their file system and must keep
 * room to grow, so an upload may not take its last 5% (at most 1 GiB of it).
 */
export function uploadReserve(total: number): number {
  return Math.min(GiB, Math.floor(total * 0.05));
}

/**
 * Bytes a file written into `dir` may take: the free space of its file system minus the database's
 * reserve (uploadReserve); `reserve` is that reserve.
 */
export async function usableSpace(
  dir: string,
  probe: SpaceProbe = statfsSpace,
): Promise<{ room: number; reserve: number }> {
  const space = await probe(dir);
  const reserve = uploadReserve(space.total);
  return { room: space.free - reserve, reserve };
}

/**
 * How long an upload through the API may go without a byte arriving before it is ended (and its temp
 * file removed): a sender gone without a word (a laptop asleep, a network that drops) would otherwise
 * hold the temp file, and its disk space, until the agent restarts (its server has no request timeout).
 */
export const uploadTiming = { idleMs: 5 * 60_000 };

/** Free space is measured again after this many bytes, as other writers (the database) use it too. */
const RECHECK_BYTES = 64 * 1024 * 1024;

/** The refusal of a backup that does not fit: `need` says how big it is, `room` what may be used. */
export function noSpace(need: string, room: number): AppError {
  const mb = (n: number) => `${Math.max(0, Math.floor(n / 1048576))} MB`;
  return new AppError(
    'no_space',
    `not enough free disk space to store this backup: ${need}, only ${mb(room)} may be used (some space is kept free for the database); nothing was kept`,
  );
}

export interface ReceivedBackup {
  filename: string;
  size: number;
  keyIds: string[];
  /** True if we hold a key for it and read it end to end; false if it waits for its keys to be imported. */
  verified: boolean;
}

/**
 * Streams `body` into the catalog under `name`. Refused with 507 `no_space` before writing when the
 * declared size does not fit in the free space minus the database's reserve, and stopped when the
 * bytes received pass it (or pass the declared size: 400 `bad_request`); refused with 422 `not_a_backup`
 * as soon as the first bytes are not a backup header. Before the file is listed, its size must match the
 * declared one and its header must parse again; if we hold one of its keys, it is also verified end to
 * end. Any failure leaves nothing behind.
 */
export async function receiveUpload(
  agent: Pick<Agent, 'catalog' | 'keyring'>,
  name: string,
  body: Readable,
  options: {
    declaredSize?: number;
    signal?: AbortSignal;
    onProgress?: (bytes: number) => void;
    space?: SpaceProbe;
    /**
     * Refuse (422, as soon as the header has arrived) a backup whose header's time contradicts the date
     * in `name` (checkNameFitsHeader): a file uploaded by a person, who chose the name.
     */
    nameFitsHeader?: boolean;
    /** Ends the upload (400, nothing kept) when no byte arrives for this long (uploadTiming). */
    idleMs?: number;
  } = {},
): Promise<ReceivedBackup> {
  if (await agent.catalog.exists(name))
    throw new AppError('conflict', `a backup named ${name} already exists`);
  // Refused before a byte is written when it cannot fit beside the database.
  const dir = dirname(agent.catalog.pathOf(name));
  await mkdirDurable(dir);
  const probe = options.space ?? statfsSpace;
  const { room, reserve } = await usableSpace(dir, probe);
  const declared =
    options.declaredSize !== undefined && Number.isFinite(options.declaredSize)
      ? options.declaredSize
      : undefined;
  if (declared !== undefined && declared > room)
    throw noSpace(`it is ${Math.ceil(declared / 1048576)} MB`, room);
  if (room <= 0) throw noSpace('the disk is nearly full', room);

  let received = 0;
  let nextCheck = RECHECK_BYTES;
  let idle: NodeJS.Timeout | undefined;
  // The first bytes are checked as they arrive: anything but a backup's header ends the upload early.
  // Past its limit (HEADER_SCAN_LIMIT), a header still unparsed cannot be a backup's.
  let head: HeaderScanner | undefined = new HeaderScanner();
  const counter = new Transform({
    async transform(chunk: Buffer, _e, cb) {
      try {
        arm();
        received += chunk.length;
        // Never past what it said it is: a sender (a destination's server) that goes on would fill the disk.
        if (declared !== undefined && received > declared)
          throw new AppError(
            'bad_request',
            `the backup is longer than the ${declared} bytes it was announced with; it was stopped and nothing was kept`,
          );
        if (head) {
          const scanned = head.push(chunk);
          if (scanned) {
            head = undefined;
            if (options.nameFitsHeader) checkNameFitsHeader(name, scanned.header.core.createdAt);
          } else if (head.full)
            throw new AppError('not_a_backup', 'not a GEM backup file: its header does not end');
        }
        if (received > room) throw noSpace(`it is over ${Math.floor(room / 1048576)} MB`, room);
        if (received >= nextCheck) {
          nextCheck = received + RECHECK_BYTES;
          const now = await probe(dir);
          if (now.free < reserve) throw noSpace('the disk filled up while it was received', room - received);
        }
        options.onProgress?.(received);
        cb(null, chunk);
      } catch (error) {
        cb(envelopeToAppError(error) as Error);
      }
    },
  });
  // Re-armed by every chunk; once the body has ended (the checks below take their time) no longer.
  const arm = () => {
    if (options.idleMs === undefined) return;
    clearTimeout(idle);
    idle = setTimeout(
      () =>
        counter.destroy(
          new AppError(
            'bad_request',
            `the upload stopped: nothing arrived for ${options.idleMs! / 1000} s; nothing was kept: send it again`,
          ),
        ),
      options.idleMs,
    ).unref();
  };
  // Ended either way, the counter closes (a write that failed before it was piped: the timer is unref'd).
  counter.on('close', () => clearTimeout(idle));
  arm();
  let result: ReceivedBackup | undefined;
  const kept = await writeFileAtomic(agent.catalog.pathOf(name), [body, counter], {
    ...(options.signal ? { signal: options.signal } : {}),
    mode: 0o600,
    check: async (temp) => {
      const size = (await stat(temp)).size;
      if (declared !== undefined && size !== declared) {
        throw new AppError('bad_request', `the upload was cut short: received ${size} of ${declared} bytes`);
      }
      const header = await readHeaderOfFile(temp);
      const keyIds = stanzaKeyIds(header.stanzas);
      const held = new Set(agent.keyring.masterKeys.map((k) => k.id));
      const verified = keyIds.some((id) => held.has(id));
      if (verified)
        await readBackup(temp, {
          keys: agent.keyring.masterKeys,
          ...(options.signal ? { signal: options.signal } : {}),
        });
      result = { filename: name, size, keyIds, verified };
    },
    // Another upload of the same name may have landed since the first look: never replaced (409 below).
    exclusive: true,
  }).catch((error: NodeJS.ErrnoException) => {
    if (error instanceof AppError) throw error;
    if (error.code === 'ENOSPC')
      throw new AppError('no_space', 'the disk is full: free some space and try again');
    if (error.code === 'ECONNRESET' || error.message === 'aborted') {
      throw new AppError('bad_request', 'the upload was interrupted; nothing was kept');
    }
    throw error;
  });
  if (!kept) throw new AppError('conflict', `a backup named ${name} already exists`);
  if (result?.verified)
    await agent.catalog.updateRecord(name, { verifiedAt: new Date().toISOString(), verifyResult: 'ok' });
  return result!;
}
