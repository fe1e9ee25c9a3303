/** Reads a backup file end to end: decrypt every chunk, gunzip, untar, check every member against the manifest. */
import { open } from 'node:fs/promises';
import { type Readable, Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import {
  EnvelopeError,
  type EnvelopeHeader,
  type MasterKey,
  stanzaKeyIds,
  unwrapWithMasterKeys,
} from '../../shared/envelope';
import { AppError } from '../errors';
import { createOpenTransform } from '../keys/envelope-node';
import { checkEntryName, checkEntryType, checkLinkTarget, linkedAncestor } from './archive';
import { openBackupFile, scanHeaderOf } from './file-plaintext';
import { createBackupGunzip } from './gunzip';
import {
  MANIFEST_NAME,
  MAX_MANIFEST_BYTES,
  type Manifest,
  type ManifestMember,
  manifestSchema,
} from './manifest';
import { ArchiveHasher } from './member-hasher';

/** Maps an envelope failure to the agent's error, with a message a person can act on. */
export function envelopeToAppError(error: unknown, header?: EnvelopeHeader): unknown {
  if (!(error instanceof EnvelopeError)) return error;
  switch (error.code) {
    case 'unsupported_version':
      // A GEM backup, from a newer agent: not "not a GEM backup file".
      return new AppError('not_a_backup', error.message, { cause: error });
    case 'not_a_backup':
    case 'bad_header':
      return new AppError('not_a_backup', `not a GEM backup file: ${error.message}`, { cause: error });
    case 'no_key': {
      const ids = error.keyIds ?? (header ? stanzaKeyIds(header.stanzas) : []);
      return new AppError(
        'no_key',
        `this backup was made with key ${ids.join(', ') || '(unknown)'}; import that installation's keys file`,
        { cause: error, details: { keyIds: ids } },
      );
    }
    default:
      return new AppError('corrupt_backup', `the backup is damaged: ${error.message}`, {
        cause: error,
        details: { envelopeCode: error.code },
      });
  }
}

/**
 * Reads just the header of a backup file (no key needed), at most HEADER_SCAN_LIMIT bytes of it; throws
 * `not_a_backup` for anything else.
 */
export async function readHeaderOfFile(path: string): Promise<EnvelopeHeader> {
  const handle = await open(path, 'r');
  try {
    const found = await scanHeaderOf(handle);
    if (found) return found.header;
    throw new EnvelopeError('truncated', 'the file ends inside its header');
  } catch (error) {
    throw envelopeToAppError(error);
  } finally {
    await handle.close();
  }
}

export interface ReadOptions {
  keys: MasterKey[];
  signal?: AbortSignal;
  /** Bytes of the backup file consumed so far. */
  onProgress?: (bytesRead: number) => void;
  /** Called once the manifest is read and checked, before any other member. */
  onManifest?: (manifest: Manifest) => Promise<void> | void;
  /** A sink for a member's bytes (restore extraction), given its tar header (mtime); none: the bytes are only hashed. */
  openMember?: (
    member: ManifestMember,
    header: { mtime?: Date | undefined },
  ) => Promise<Writable | undefined>;
  /** Called for each folder entry with its tar header (restore creates it). */
  onDirectory?: (member: ManifestMember, header: { mtime?: Date | undefined }) => Promise<void>;
  /** Called for each symbolic link entry (its target checked against the manifest) with its tar header. */
  onSymlink?: (member: ManifestMember, header: { mtime?: Date | undefined }) => Promise<void>;
  /** Overrides how the file key is found (recovery hands it over directly). */
  resolveFileKey?: (header: EnvelopeHeader) => Promise<Uint8Array>;
}

export interface ReadResult {
  header: EnvelopeHeader;
  manifest: Manifest;
  bytesRead: number;
}

/**
 * Errors of this side, not of the backup's bytes: a sink's write (a full disk, a folder it may not
 * write), a caller's callback (a version check, a disk check). readBackup passes them on as they are.
 */
const ownSideErrors = new WeakSet<object>();

/** Marks what `run` throws as this side's error (see ownSideErrors). */
async function ownSide<T>(run: () => Promise<T> | T): Promise<T> {
  try {
    return await run();
  } catch (error) {
    if (error && typeof error === 'object') ownSideErrors.add(error);
    throw error;
  }
}

/** An error of a system call (EACCES, ENOSPC, EIO...): it has an errno code, not a library's own. */
function isSystemError(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) && !(error instanceof EnvelopeError);
}

function corrupt(message: string): AppError {
  return new AppError('corrupt_backup', `the backup is damaged: ${message}`);
}

async function readSmall(stream: Readable, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += (chunk as Buffer).length;
    if (size > limit) throw corrupt('manifest too large');
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts);
}

/**
 * Streams one member to its sink (if any), counting its bytes. Its sha256 is computed by the
 * ArchiveHasher's worker from the same plaintext (see readBackup), not here.
 */
async function readMember(
  entry: Readable,
  header: { mtime?: Date | undefined },
  member: ManifestMember,
  options: ReadOptions,
): Promise<number> {
  let size = 0;
  const sink = await ownSide(() => options.openMember?.(member, header));
  if (sink) {
    // A system error the sink fails with (its write, fsync or close) is this side's. Not an error it
    // was destroyed with: the pipeline hands the source's own failure (a bad chunk) to every stream.
    sink.once('error', (error: NodeJS.ErrnoException) => {
      if (isSystemError(error)) ownSideErrors.add(error);
    });
    // Stopped before a byte past the manifest's size reaches the sink: what the restore's disk check
    // counted is all it writes.
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        size += chunk.length;
        cb(size > member.size ? tooLong(member) : null, size > member.size ? undefined : chunk);
      },
    });
    await pipeline(entry, counter, sink);
  } else {
    for await (const chunk of entry) {
      size += (chunk as Buffer).length;
      if (size > member.size) throw tooLong(member);
    }
  }
  return size;
}

/** A member with more bytes than its manifest says: refused as soon as it passes that size. */
function tooLong(member: ManifestMember): AppError {
  return corrupt(`member ${member.path} is larger than the manifest's ${member.size} bytes`);
}

/**
 * Reads a backup from `source` (a path or a stream of its bytes): decrypts and authenticates every
 * chunk, checks the manifest comes first and every member's name, type, size and sha256 against it,
 * and that nothing is missing or extra. Optional sinks receive the members (restore).
 */
export async function readBackup(source: string | Readable, options: ReadOptions): Promise<ReadResult> {
  const resolveFileKey =
    options.resolveFileKey ??
    ((header: EnvelopeHeader) => unwrapWithMasterKeys(header.stanzas, options.keys));
  let bytesRead = 0;
  let header: EnvelopeHeader | undefined;
  // Started first: the worker boots (if prepareArchiveHasher did not already) while the header is
  // read and the key unwrapped. It gets every byte of the tar stream: gzip CRC and member sha256.
  const hasher = new ArchiveHasher();
  let stages: Array<Readable | Transform>;
  let headerRead: Promise<EnvelopeHeader>;
  if (typeof source === 'string') {
    // A file: header and key first, then positional reads ahead, decrypted here (file-plaintext.ts).
    try {
      options.signal?.throwIfAborted();
      const opened = await openBackupFile(source, {
        resolveFileKey,
        onProgress: (bytes) => {
          bytesRead = bytes;
          options.onProgress?.(bytes);
        },
      });
      header = opened.header;
      headerRead = Promise.resolve(opened.header);
      stages = [opened.plaintext];
    } catch (error) {
      await hasher.close();
      throw readFailure([error], header, options.signal);
    }
  } else {
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        bytesRead += chunk.length;
        options.onProgress?.(bytesRead);
        cb(null, chunk);
      },
    });
    const opener = createOpenTransform({ resolveFileKey });
    opener.header.then(
      (h) => {
        header = h;
      },
      () => {},
    );
    headerRead = opener.header;
    stages = [source, counter, opener];
  }
  const input = stages[0]!;
  const extract = tar.extract();
  const gunzip = createBackupGunzip(hasher);
  const pumping = pipeline(
    // Stored (level 0) blocks pass as views, no zlib copy: see gunzip.ts.
    [...stages, gunzip, extract],
    options.signal ? { signal: options.signal } : {},
  );

  const consume = async (): Promise<Manifest> => {
    let manifest: Manifest | undefined;
    let expected = new Map<string, ManifestMember>();
    const seen = new Set<string>();
    // Digests come from the worker as it catches up; awaiting each here could stall the stream.
    const digests: Array<{ name: string; expected: string | undefined; sha256: Promise<string> }> = [];
    for await (const entry of extract) {
      const name = checkEntryName(entry.header.name);
      const type = checkEntryType(entry.header.type, entry.header.name);
      // tar-stream counts every byte it was given: an entry's data starts at byteOffset of the tar
      // stream, after its own header block and any pax or GNU long-name blocks before it.
      const start = (entry.header as { byteOffset?: number }).byteOffset;
      if (typeof start !== 'number') throw new Error('tar-stream gave no byteOffset for a member');
      if (!manifest) {
        if (name !== MANIFEST_NAME || type !== 'file') throw corrupt('the first member is not manifest.json');
        // The manifest is not hashed: the worker may hand its bytes back at once (a manifest of
        // many members is larger than the batches it may hold).
        hasher.known(start + (entry.header.size ?? 0));
        const text = await readSmall(entry as unknown as Readable, MAX_MANIFEST_BYTES);
        const parsed = manifestSchema.safeParse(JSON.parse(text.toString('utf8')));
        if (!parsed.success) throw corrupt(`manifest.json is invalid: ${parsed.error.issues[0]?.message}`);
        manifest = parsed.data;
        expected = new Map(manifest.members.map((m) => [m.path, m]));
        refuseUnderLinks(manifest);
        await ownSide(() => options.onManifest?.(manifest!));
        continue;
      }
      const member = expected.get(name);
      if (!member) throw corrupt(`member ${name} is not in the manifest`);
      if (seen.has(name)) throw corrupt(`member ${name} appears twice`);
      if (member.type !== type)
        throw corrupt(`member ${name} is a ${type}, the manifest says ${member.type}`);
      seen.add(name);
      if (type === 'symlink') {
        // A link has no data either; its target text must be the manifest's, byte for byte.
        const target = checkLinkTarget(entry.header.linkname, entry.header.name);
        if (target !== member.target)
          throw corrupt(
            `link ${name} points to ${JSON.stringify(target)}, the manifest says ${JSON.stringify(member.target)}`,
          );
        hasher.known(start);
        await options.onSymlink?.(member, entry.header);
        entry.resume();
        continue;
      }
      if (type === 'directory') {
        // A folder has no data: the bytes before it are headers, so the worker may hand them back.
        // Without this, a run of folders (~16,400 headers: 8 MiB) held every batch and gunzip,
        // waiting for one, hung the read.
        hasher.known(start);
        await ownSide(() => options.onDirectory?.(member, entry.header));
        entry.resume();
        continue;
      }
      // Its tar header says how long it is: one longer than the manifest says is not read at all.
      if ((entry.header.size ?? 0) > member.size) throw tooLong(member);
      const sha256 = hasher.member(start, start + (entry.header.size ?? 0));
      sha256.catch(() => {}); // awaited below, in order
      digests.push({ name, expected: member.sha256, sha256 });
      const size = await readMember(entry as unknown as Readable, entry.header, member, options);
      if (size !== member.size)
        throw corrupt(`member ${name} is ${size} bytes, the manifest says ${member.size}`);
      if (size !== entry.header.size) throw corrupt(`member ${name} is cut short`);
    }
    hasher.known(Number.MAX_SAFE_INTEGER);
    if (!manifest) throw corrupt('the archive is empty');
    const missing = manifest.members.filter((m) => !seen.has(m.path));
    if (missing.length > 0) throw corrupt(`member ${missing[0]!.path} is missing (${missing.length} in all)`);
    for (const { name, expected, sha256 } of digests) {
      if (expected && (await sha256) !== expected) throw corrupt(`member ${name} fails its sha256 check`);
    }
    return manifest;
  };

  const [consumed, pumped] = await Promise.allSettled([
    consume().catch((error) => {
      extract.destroy(error);
      throw error;
    }),
    // The gzip CRC, computed on the worker, is compared before anything is reported good.
    pumping.then(() => gunzip.checked()),
  ]);
  await hasher.close();
  if (consumed.status === 'fulfilled' && pumped.status === 'fulfilled') {
    return { header: header ?? (await headerRead), manifest: consumed.value, bytesRead };
  }
  input.destroy();
  const errors = [consumed, pumped].flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
  throw readFailure(errors, header, options.signal);
}

/**
 * Reads only a backup's manifest (its first member, authenticated with the chunks that hold it): the
 * rest of the file is neither read nor checked. For a size recorded in it, not to judge the backup.
 */
export async function readManifestOf(path: string, keys: ReadOptions['keys']): Promise<Manifest> {
  let manifest: Manifest | undefined;
  const enough = new Error('the manifest is read');
  await readBackup(path, {
    keys,
    onManifest: (m) => {
      manifest = m;
      throw enough;
    },
  }).catch((error: unknown) => {
    if (error !== enough) throw error;
  });
  return manifest!;
}

/**
 * Refuses a manifest listing a member under one of its own links (a link `scripts/x -> /etc` and a
 * file `scripts/x/passwd`), or a link as a folder root: such an archive is hostile, as a backup never
 * holds one. Checked on the manifest, so the order of the archive's entries does not matter.
 */
function refuseUnderLinks(manifest: Manifest): void {
  const links = new Set(manifest.members.filter((m) => m.type === 'symlink').map((m) => m.path));
  if (links.size === 0) return;
  for (const member of manifest.members) {
    const name = JSON.stringify(member.path.slice(0, 200));
    if (member.type === 'symlink' && !member.path.includes('/'))
      throw new AppError(
        'corrupt_backup',
        `unsafe archive entry ${name}: a link where a folder root belongs`,
      );
    const link = linkedAncestor(member.path, links);
    if (link !== undefined)
      throw new AppError('corrupt_backup', `unsafe archive entry ${name}: it lies under the link ${link}`);
  }
}

/** The error readBackup reports for what went wrong: the root cause, as an AppError. */
function readFailure(errors: unknown[], header: EnvelopeHeader | undefined, signal?: AbortSignal): unknown {
  if (signal?.aborted) return new AppError('cancelled', 'the job was cancelled');
  // This side's failure (a full disk under the restore's output, a check that refused) comes first:
  // the stream errors it causes upstream say nothing of the backup.
  const own = errors.find((e) => e && typeof e === 'object' && ownSideErrors.has(e));
  if (own) return own;
  // The root cause wins: an envelope failure (bad chunk) explains the tar error it causes downstream.
  const error =
    errors.find((e) => e instanceof EnvelopeError) ?? errors.find((e) => e instanceof AppError) ?? errors[0];
  if (error instanceof EnvelopeError) return envelopeToAppError(error, header);
  if (error instanceof AppError) return error;
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new AppError('not_found', 'backup file not found');
  if (typeof code === 'string' && code.startsWith('Z_')) return corrupt('the compressed stream is invalid');
  // A system call's error (EACCES, ENOSPC, EIO reading the file, a dropped connection): the machine
  // or the way to the file failed, not the backup's bytes: said as it is.
  if (isSystemError(error)) return error;
  return corrupt((error as Error).message);
}
