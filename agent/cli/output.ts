/** Where a CLI command writes a file the person named (`-o`): checked before anything is written. */
import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { AppError } from '../errors';

/**
 * Refuses an output path whose folder does not exist (a mistyped -o is an error, not a folder made
 * silently, as root anywhere), that is a folder, or that already exists unless `force` says to replace
 * it (a decrypted backup or a keys file written over a file the person meant to keep).
 */
export async function checkOutputPath(path: string, options: { force?: boolean } = {}): Promise<void> {
  const folder = await stat(dirname(path)).catch(() => undefined);
  if (!folder?.isDirectory()) {
    throw new AppError(
      'bad_request',
      `the folder ${dirname(path)} does not exist: create it first or choose another -o (nothing was written)`,
    );
  }
  const there = await stat(path).catch(() => undefined);
  if (there?.isDirectory()) {
    throw new AppError('bad_request', `${path} is a folder: give a file name with -o (nothing was written)`);
  }
  if (there && !options.force) throw outputExists(path);
}

/**
 * The refusal of an output that exists: found by the check, or made by someone else while the command
 * wrote its temp file (without `--force` the file is published only if its name is still free).
 */
export function outputExists(path: string): AppError {
  return new AppError(
    'conflict',
    `${path} already exists: choose another -o, or add --force to replace it (nothing was written)`,
  );
}
