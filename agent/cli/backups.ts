/** CLI commands for backups: create, verify, and the offline decrypt (list: ./list.ts). */
import { createReadStream, existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { installationTag, stanzaKeyIds, unwrapWithMasterKeys } from '../../shared/envelope';
import { checkBackupName } from '../backup/catalog';
import type { CreateBackupOptions } from '../backup/create';
import type { FollowUp } from '../backup/operations';
import { envelopeToAppError, readBackup, readHeaderOfFile } from '../backup/reader';
import { AppError } from '../errors';
import { createOpenTransform } from '../keys/envelope-node';
import { parseKeysExport, shortInstallationId } from '../keys/keyring';
import { DESTINATION_TITLES, type OffsiteKind } from '../offsite/destinations';
import { writeFileAtomic } from '../system/atomic-file';
import type { CliContext } from './context';
import { formatSize } from './format';
import { checkOutputPath, outputExists } from './output';
import {
  PASSPHRASE_FILE_OPTION,
  passphraseToOpen,
  readKeysFile,
  refusePassphraseArgument,
} from './passphrase';

export async function createCommand(cli: CliContext): Promise<void> {
  const { values } = parseArgs({ args: cli.args, options: { label: { type: 'string' } } });
  // The API's rules for a label (POST /backups), not a copy of them.
  const [{ createBody }, { validationError }] = await Promise.all([
    import('../http/routes/backups'),
    import('../http/errors'),
  ]);
  const body = createBody.safeParse(values.label === undefined ? {} : { label: values.label });
  if (!body.success) throw validationError(body.error);
  const { label } = body.data;
  const options: CreateBackupOptions = { kind: 'manual', ...(label ? { label } : {}) };
  const job = await cli.withAgent(async (agent) => {
    const { startBackup } = await import('../backup/operations');
    const started = await startBackup(agent, options);
    const off = agent.jobs.subscribe(started.id, (e) =>
      cli.progress(e.job.phase, e.job.bytesDone, e.job.bytesTotal, e.job.unit),
    );
    const done = await agent.jobs.waitFor(started.id);
    off();
    return done;
  });
  if (job.state !== 'succeeded') throw new AppError('internal', job.error?.message ?? `backup ${job.state}`);
  const { backup, followUps } = job.result as {
    backup: { filename: string; size: number; skipped?: { count: number; paths: string[] } };
    followUps?: Record<string, FollowUp>;
  };
  cli.out(`created ${backup.filename} (${formatSize(backup.size)})`);
  // Left out (a FIFO, a socket, a device): a restore will not bring them back, so it must be seen.
  if (backup.skipped && backup.skipped.count > 0) cli.err(`warning: ${skippedWarning(backup.skipped)}`);
  // The backup is good (exit 0), but a step after it that failed must be seen, not only logged.
  for (const line of followUpWarnings(followUps ?? {})) cli.err(`warning: ${line}`);
}

/** What a backup left out, in one line: the first few paths, then how many more. */
function skippedWarning({ count, paths }: { count: number; paths: string[] }): string {
  const shown = paths.slice(0, 3).join(', ');
  const more = count > 3 ? ` and ${count - 3} more` : '';
  return (
    `left out ${count} ${count === 1 ? 'entry' : 'entries'} that ${count === 1 ? 'is' : 'are'} neither a file, a folder nor a link (a FIFO, socket or device): ` +
    `${shown}${more}; a restore will not bring ${count === 1 ? 'it' : 'them'} back`
  );
}

/** The steps after a backup (agent/backup/operations.ts followUps), by the hook's name. */
const FOLLOW_UP_NAMES: Record<string, string> = {
  offsiteUpload: 'the automatic offsite upload',
  retention: 'removing old backups beyond the keep limit',
};

/** Each failed step after a backup, with its reason; the auto-upload one line per destination. */
function followUpWarnings(followUps: Record<string, FollowUp>): string[] {
  const lines: string[] = [];
  for (const [name, outcome] of Object.entries(followUps)) {
    if (outcome.ok) continue;
    const uploads = name === 'offsiteUpload' ? uploadFailures(outcome.details) : [];
    if (uploads.length > 0) {
      lines.push(...uploads);
      continue;
    }
    lines.push(
      `${FOLLOW_UP_NAMES[name] ?? name} ${outcome.cancelled ? 'was cancelled' : 'failed'}: ${outcome.error ?? 'unknown error'}`,
    );
  }
  return lines;
}

/** "the upload to SFTP failed: <reason>" for each destination whose auto-upload failed. */
function uploadFailures(details: unknown): string[] {
  if (!details || typeof details !== 'object') return [];
  return Object.entries(
    details as Record<string, { ok?: boolean; error?: { code?: string; message?: string } }>,
  )
    .filter(([, r]) => r && r.ok === false)
    .map(
      ([kind, r]) =>
        `the upload to ${DESTINATION_TITLES[kind as OffsiteKind] ?? kind} ${r.error?.code === 'cancelled' ? 'was cancelled' : 'failed'}: ${r.error?.message ?? 'unknown error'}`,
    );
}

/** True when `arg` names a file rather than a catalog backup: it has a folder part, or exists in the cwd. */
function isFilePath(arg: string): boolean {
  return arg.includes('/') || existsSync(arg);
}

/**
 * verify FILE: a path is read and checked end to end itself (a copy on a USB stick, say; no catalog
 * record is written for it); a bare name verifies the catalog's backup of that name.
 */
export async function verifyCommand(cli: CliContext): Promise<void> {
  const { positionals } = parseArgs({ args: cli.args, allowPositionals: true });
  // One file: `verify A B` must not answer for B after checking A only.
  const [arg, ...extra] = positionals;
  if (!arg || extra.length > 0)
    throw new AppError(
      'bad_request',
      'usage: gem-backup verify FILE (a backup name from "gem-backup list", or a path)',
    );
  if (isFilePath(arg)) {
    const path = resolve(arg);
    const size = await stat(path).then(
      (s) => {
        if (!s.isFile()) throw new AppError('bad_request', `${arg} is not a file`);
        return s.size;
      },
      () => {
        throw new AppError('not_found', `no such file: ${arg}`);
      },
    );
    const members = await cli.withAgent(async (agent) => {
      cli.progress('verify', 0, size);
      const { manifest } = await readBackup(path, {
        keys: agent.keyring.masterKeys,
        onProgress: (bytes) => cli.progress('verify', bytes, size),
      });
      return manifest.members.length;
    });
    cli.out(`${basename(path)}: ok (${members} members, every chunk and checksum verified)`);
    return;
  }
  const name = checkBackupName(arg);
  const result = await cli.withAgent(async (agent) => {
    const [{ standaloneContext }, { verifyBackup }] = await Promise.all([
      import('../jobs/runner'),
      import('../backup/create'),
    ]);
    return verifyBackup(agent, standaloneContext(agent.log, cli.progress), name);
  });
  cli.out(`${result.filename}: ok (${result.members} members, every chunk and checksum verified)`);
}

/** Offline: needs only the backup file and a keys file; no agent, no database. */
/** Whether `a` and `b` name one file: the same path, or (both existing) the same inode. */
async function sameFile(a: string, b: string): Promise<boolean> {
  if (resolve(a) === resolve(b)) return true;
  const [x, y] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  return x !== undefined && y !== undefined && x.dev === y.dev && x.ino === y.ino;
}

export async function decryptCommand(cli: CliContext): Promise<void> {
  refusePassphraseArgument(cli.args);
  const { values, positionals } = parseArgs({
    args: cli.args,
    allowPositionals: true,
    options: {
      keys: { type: 'string' },
      output: { type: 'string', short: 'o' },
      force: { type: 'boolean' },
      ...PASSPHRASE_FILE_OPTION,
    },
  });
  // One file, and the output only by -o: `decrypt FILE OUT` would ignore OUT.
  const [file, ...extra] = positionals;
  if (!file || extra.length > 0 || !values.keys)
    throw new AppError(
      'bad_request',
      'usage: gem-backup decrypt FILE --keys KEYS.json [-o OUT.tar.gz [--force]] [--passphrase-file PATH]',
    );
  const keysText = await readKeysFile(values.keys);
  const keyring = await parseKeysExport(
    keysText,
    await passphraseToOpen(keysText, values['passphrase-file']),
  );
  const keys = keyring.masterKeys.map((k) => ({ id: k.id, key: Buffer.from(k.key, 'base64url') }));
  // Offline there is nothing to import into: a keys file without the backup's key names the right one.
  const header = await readHeaderOfFile(file).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') throw new AppError('not_found', `no such file: ${file}`);
    throw envelopeToAppError(error);
  });
  const needed = stanzaKeyIds(header.stanzas);
  if (!needed.some((id) => keys.some((k) => k.id === id))) {
    const other =
      header.core.installationTag === installationTag(keyring.installationId)
        ? 'an older or newer export of this installation'
        : `the keys file of installation ${header.core.installationPrefix}…`;
    throw new AppError(
      'no_key',
      `${values.keys} does not hold key ${needed.join(', ') || '(unknown)'} that this backup was made with (the keys file is installation ${shortInstallationId(keyring.installationId)}'s): use ${other}`,
    );
  }
  const name = basename(file);
  const output = resolve(
    values.output ??
      (name.endsWith('.tar.gz')
        ? name.replace(/\.tar\.gz$/, '.decrypted.tar.gz')
        : `${name}.decrypted.tar.gz`),
  );
  // The plaintext renamed over the backup it came from would leave no encrypted copy.
  if (await sameFile(file, output)) {
    throw new AppError(
      'bad_request',
      `the output ${output} is the backup itself: give another -o (nothing was written)`,
    );
  }
  await checkOutputPath(output, { force: values.force });
  const opener = createOpenTransform({
    resolveFileKey: (header) => unwrapWithMasterKeys(header.stanzas, keys),
  });
  // Without --force only a name still free is taken: a file made there while this decrypted stays.
  // Stopped (Ctrl-C) before it is published, its temp file of plaintext is removed, also while synced,
  // and by a second Ctrl-C, which exits at once, before it exits.
  const published = await cli.whileStoppable((signal, tempFile) =>
    writeFileAtomic(output, [createReadStream(file), opener], {
      mode: 0o600,
      exclusive: !values.force,
      signal,
      check: async () => signal.throwIfAborted(),
      onTempPath: tempFile,
    }).catch((error) => {
      throw envelopeToAppError(error);
    }),
  );
  if (!published) throw outputExists(output);
  cli.out(`decrypted to ${output}`);
}
