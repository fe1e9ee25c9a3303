/** Creating a backup: dump + folders + manifest -> tar -> gzip -> envelope -> temp file -> verify -> rename. */

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { generateFileKey, newCore, wrapForMasterKey } from '../../shared/envelope';
import { dataPaths } from '../config';
import { AppError, isNoSpace } from '../errors';
import type { JobContext } from '../jobs/runner';
import { createSealTransform } from '../keys/envelope-node';
import type { Keyring } from '../keys/keyring';
import { ownDatabaseSize } from '../restore/database';
import { TEMP_PREFIX, writeFileAtomic } from '../system/atomic-file';
import type { PgConnection, PostgresTools } from '../system/postgres-tools';
import { AGENT_VERSION } from '../version';
import type { FolderRoot } from './archive';
import type { BackupCatalog, BackupInfo } from './catalog';
import { dumpDatabase } from './dump';
import { type SnapshotMember, snapshotFolder } from './folders';
import { DUMP_NAME, MANIFEST_NAME, type Manifest } from './manifest';
import { BOOT_BATCHES, prepareArchiveHasher } from './member-hasher';
import { readBackup } from './reader';

/**
 * gzip framing around an already compressed dump: level 0 (stored) costs almost nothing, where
 * compressing again would cost a core for ~1 % (DESIGN.md, "Where the time goes").
 */
export const GZIP_LEVEL = 0;

/** zlib output buffer: 1 MiB instead of 16 KiB, so the sealer gets few large writes (bench/RESULTS.md). */
export const GZIP_CHUNK_SIZE = 1 << 20;

/**
 * Plaintext bytes per envelope chunk of new backups: 1 MiB rather than the format's 64 KiB default,
 * as per-chunk work (a decipher, a tag, small buffers) dominated verify at 64 KiB. Readers take the
 * size from each file's header, so older files stay readable.
 */
export const BACKUP_CHUNK_SIZE = 1 << 20;

export interface BackupSources {
  conn: PgConnection;
  tools: PostgresTools;
  scriptsDir: string;
  configDir: string;
}

export interface CreateBackupDeps {
  keyring: Keyring;
  catalog: BackupCatalog;
  sources: BackupSources;
  workDir: string;
}

/** What a backup needs, taken from an opened agent; `overrides` replaces a part (another keyring, other sources). */
export function backupDeps(
  agent: { keyring: Keyring; catalog: BackupCatalog; sources: BackupSources; paths: { work: string } },
  overrides: Partial<CreateBackupDeps> = {},
): CreateBackupDeps {
  return {
    keyring: agent.keyring,
    catalog: agent.catalog,
    sources: agent.sources,
    workDir: agent.paths.work,
    ...overrides,
  };
}

export interface CreateBackupOptions {
  kind?: 'manual' | 'scheduled' | 'safety' | 'dr';
  label?: string;
  now?: Date;
  /** Envelope chunk size (default BACKUP_CHUNK_SIZE); tests set it small to get many chunks. */
  chunkSize?: number;
  /** Called with the backup's name before anything is written under it (a restore records its safety backup's). */
  beforeWrite?: (name: string) => Promise<void>;
}

async function readGemVersion(configDir: string): Promise<string | undefined> {
  try {
    const parsed = JSON.parse(await readFile(join(configDir, 'gem.json'), 'utf8')) as { version?: unknown };
    return typeof parsed.version === 'string' ? parsed.version : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What a backup does with a folder that does not exist. A configured folder (GEM_SCRIPTS_DIR /
 * GEM_CONFIG_DIR) that is missing is an unmounted disk or a wrong setting: the backup fails, as one
 * holding an empty folder would, once restored, empty the live one. The agent's own default place
 * (under the data dir; the catalog lives there too) that was never created is truly empty. A safety
 * backup records the state a restore is about to replace: a missing folder must not stop the restore.
 */
function missingFolder(
  kind: CreateBackupOptions['kind'],
  source: string,
  defaultPath: string,
): 'fail' | 'empty' {
  return kind === 'safety' || resolve(source) === resolve(defaultPath) ? 'empty' : 'fail';
}

/** A member's tar header: its own mtime where known (the source file's), else the backup's time. */
function tarHeader(member: SnapshotMember, now: Date) {
  if (member.type === 'symlink') {
    return {
      name: member.path,
      type: member.type,
      linkname: member.target,
      mode: 0o777,
      mtime: member.mtime ?? now,
    };
  }
  return {
    name: member.path,
    type: member.type,
    size: member.type === 'file' ? member.size : 0,
    mode: member.mode ?? (member.type === 'directory' ? 0o755 : 0o644),
    mtime: member.mtime ?? now,
  };
}

/** How many skipped paths a backup's result names; the rest are counted. */
const SKIPPED_LISTED = 10;

/**
 * Entries a backup left out (FIFOs, sockets, devices: neither a file, a folder nor a link), in the
 * job's result: the first few by member name (`scripts/run/gem.sock`), and how many in all.
 */
export interface SkippedEntries {
  count: number;
  paths: string[];
}

/** A made backup, with what it left out (absent when nothing was). */
export type CreatedBackup = BackupInfo & { skipped?: SkippedEntries };

/** Feeds the archive members into the tar packer one after another, then finalizes it. */
async function fillArchive(
  pack: tar.Pack,
  manifest: Buffer,
  members: SnapshotMember[],
  mtime: Date,
): Promise<void> {
  const addBuffer = (header: Partial<tar.Header> & { name: string }, data?: Buffer) =>
    new Promise<void>((resolve, reject) => {
      pack.entry(header, data ?? Buffer.alloc(0), (error) => (error ? reject(error) : resolve()));
    });
  await addBuffer({ name: MANIFEST_NAME, type: 'file', size: manifest.length, mode: 0o644, mtime }, manifest);
  for (const member of members) {
    if (member.type === 'directory' || member.type === 'symlink') {
      await addBuffer(tarHeader(member, mtime));
      continue;
    }
    const entry = pack.entry(tarHeader(member, mtime));
    await pipeline(createReadStream(member.localPath, { highWaterMark: 1 << 20 }), entry);
  }
  pack.finalize();
}

/**
 * Creates one backup. Nothing appears under the final name until the whole file is written,
 * fsynced and verified end to end; on any failure the temp file and the work folder are removed.
 */
export async function createBackup(
  deps: CreateBackupDeps,
  ctx: JobContext,
  options: CreateBackupOptions = {},
): Promise<CreatedBackup> {
  const { keyring, catalog, sources } = deps;
  const now = options.now ?? new Date();
  const kind = options.kind ?? 'manual';
  await mkdir(deps.workDir, { recursive: true });
  const work = await mkdtemp(join(deps.workDir, `${TEMP_PREFIX}backup-`));
  try {
    ctx.phase('dump');
    const dumpPath = join(work, DUMP_NAME);
    const dump = await dumpDatabase({
      conn: sources.conn,
      tools: sources.tools,
      target: dumpPath,
      signal: ctx.signal,
      onProgress: (bytes) => ctx.progress(bytes),
    });
    ctx.throwIfCancelled();

    // What the database takes on its server, for a restore's disk check (asked beside the folders' copy).
    const databaseBytes = ownDatabaseSize(sources.conn).catch((error: unknown) => {
      ctx.log.debug('the database size is not recorded in the manifest', { error });
      return undefined;
    });
    ctx.phase('folders');
    const defaults = dataPaths(dirname(catalog.dir));
    const skipped: string[] = [];
    const snapshot = (root: FolderRoot, source: string, defaultPath: string) =>
      snapshotFolder(root, source, join(work, root), {
        log: ctx.log,
        signal: ctx.signal,
        missing: missingFolder(kind, source, defaultPath),
        onSkipped: (path) => skipped.push(path),
      });
    const folders = [
      ...(await snapshot('scripts', sources.scriptsDir, defaults.sampleScripts)),
      ...(await snapshot('config', sources.configDir, defaults.sampleConfig)),
    ];
    const members: SnapshotMember[] = [
      {
        path: DUMP_NAME,
        type: 'file',
        size: dump.size,
        sha256: dump.sha256,
        mode: 0o644,
        localPath: dumpPath,
      },
      ...folders,
    ];
    // From the snapshot's copy, not the live folder: a gem.json there that is a FIFO (opening it waits for
    // a writer, for ever), a device or a link out of the folder was left out, and is never opened.
    const gemVersion = await readGemVersion(join(work, 'config'));
    const databaseSize = await databaseBytes;
    const manifest: Manifest = {
      format: 'gem-backup-manifest',
      version: 1,
      createdAt: now.toISOString(),
      installationId: keyring.installationId,
      agentVersion: AGENT_VERSION,
      ...(gemVersion ? { gemVersion } : {}),
      kind,
      ...(options.label ? { label: options.label } : {}),
      postgres: {
        serverVersion: dump.serverVersion,
        serverVersionNum: dump.serverVersionNum,
        dumpVersion: dump.dumpVersion,
        database: sources.conn.database,
        ...(databaseSize === undefined ? {} : { databaseBytes: databaseSize }),
        settings: dump.settings,
      },
      rowCounts: dump.rowCounts,
      roles: dump.roles,
      memberships: dump.memberships,
      members: members.map(({ localPath: _, mtime: __, ...m }) => m),
    };
    const manifestBytes = Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`);

    const name = await catalog.freeName(now);
    // Recorded before the file is written: a crash after its rename tells from this name that it was kept.
    ctx.target(name);
    await options.beforeWrite?.(name);
    const fileKey = generateFileKey();
    const core = newCore({
      installationId: keyring.installationId,
      createdAt: now.toISOString(),
      chunkSize: options.chunkSize ?? BACKUP_CHUNK_SIZE,
      meta: {
        kind,
        agentVersion: AGENT_VERSION,
        filename: name,
        ...(options.label ? { label: options.label } : {}),
      },
    });
    const stanzas = [await wrapForMasterKey(fileKey, keyring.activeKey)];
    const total = members.reduce((sum, m) => sum + m.size, manifestBytes.length);
    ctx.phase('pack', total);
    let packed = 0;
    const pack = tar.pack();
    const filling = fillArchive(pack, manifestBytes, members, now).catch((error) => {
      pack.destroy(error);
      throw error;
    });
    const counter = new Transform({
      transform(chunk: Buffer, _e, cb) {
        packed += chunk.length;
        ctx.progress(Math.min(packed, total));
        cb(null, chunk);
      },
    });
    // The file's sha256 as it is written: recorded once, so offsite uploads need no hashing pass.
    const fileHash = createHash('sha256');
    const hasher = new Transform({
      transform(chunk: Buffer, _e, cb) {
        fileHash.update(chunk);
        cb(null, chunk);
      },
    });
    // Both the archive feeder and the file write fail when one does; the write's error is the cause
    // (a full disk), the feeder's is only "destroyed", so the write's is the one reported.
    const [fed, written] = await Promise.allSettled([
      filling,
      writeFileAtomic(
        catalog.pathOf(name),
        [
          pack as unknown as Readable,
          counter,
          createGzip({ level: GZIP_LEVEL, chunkSize: GZIP_CHUNK_SIZE }),
          createSealTransform({ core, stanzas, fileKey }),
          hasher,
        ],
        {
          signal: ctx.signal,
          mode: 0o600,
          check: async (temp) => {
            const size = (await stat(temp)).size;
            ctx.phase('verify', size);
            await readBackup(temp, {
              keys: keyring.masterKeys,
              signal: ctx.signal,
              onProgress: (bytes) => ctx.progress(bytes),
            });
          },
          // An upload or a download may have brought a backup of this name since freeName: never replaced.
          exclusive: true,
        },
      ),
    ]);
    const failure =
      written.status === 'rejected' ? written.reason : fed.status === 'rejected' ? fed.reason : undefined;
    if (failure !== undefined) {
      if (ctx.signal.aborted) throw new AppError('cancelled', 'the job was cancelled');
      if (isNoSpace(failure))
        throw new AppError('no_space', 'the disk is full: free some space and try again');
      throw failure;
    }
    if (written.status === 'fulfilled' && !written.value)
      throw new AppError(
        'conflict',
        `a backup named ${name} arrived (an upload or a download) while this one was being written: it was kept as it is, and this backup was not kept; run the backup again`,
      );
    const onDisk = await stat(catalog.pathOf(name));
    // The backup is in place and verified: a record that cannot be written now (its file's lock held too
    // long by another process, a full disk) costs only what it saves (an upload hashes the file, the next
    // verify records it), never the backup, which a failed job would leave unaccounted for.
    await catalog
      .updateRecord(name, {
        verifiedAt: new Date().toISOString(),
        verifyResult: 'ok',
        content: { sha256: fileHash.digest('hex'), size: onDisk.size, mtimeMs: onDisk.mtimeMs },
      })
      .catch((error: unknown) =>
        ctx.log.warn(
          'the backup is kept, but its record (verified, sha256) could not be written; its next verify writes it',
          { filename: name, error },
        ),
      );
    ctx.log.info('backup created', {
      filename: name,
      bytes: onDisk.size,
      rows: Object.values(dump.rowCounts).reduce((a, b) => a + b, 0),
    });
    const info = await catalog.info(name);
    if (skipped.length === 0) return info;
    return { ...info, skipped: { count: skipped.length, paths: skipped.slice(0, SKIPPED_LISTED) } };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Re-reads a backup end to end (every chunk, every member's sha256) and records the result. */
export async function verifyBackup(
  deps: { keyring: Keyring; catalog: BackupCatalog },
  ctx: JobContext,
  name: string,
): Promise<{ filename: string; ok: true; members: number; rowCounts: Record<string, number> }> {
  // The checksum worker boots (60-75 ms in a fresh process, on the other core) while the catalog is
  // read and the key unwrapped; meanwhile the reader may run up to BOOT_BATCHES MiB ahead of it.
  prepareArchiveHasher(BOOT_BATCHES);
  const path = deps.catalog.pathOf(name);
  const size = (await deps.catalog.info(name)).size;
  ctx.phase('verify', size);
  let manifest: Awaited<ReturnType<typeof readBackup>>['manifest'];
  try {
    ({ manifest } = await readBackup(path, {
      keys: deps.keyring.masterKeys,
      signal: ctx.signal,
      onProgress: (bytes) => ctx.progress(bytes),
    }));
  } catch (error) {
    if (!ctx.signal.aborted) {
      await deps.catalog.updateRecord(name, {
        verifiedAt: new Date().toISOString(),
        verifyResult: 'failed',
        verifyError: (error as Error).message,
      });
    }
    throw error;
  }
  // Outside the read's failure path: a backup that read back whole is never recorded as failed
  // because writing its record failed (a full disk, another process holding the records' lock).
  await deps.catalog.updateRecord(name, {
    verifiedAt: new Date().toISOString(),
    verifyResult: 'ok',
    verifyError: undefined,
  });
  return { filename: name, ok: true, members: manifest.members.length, rowCounts: manifest.rowCounts };
}
