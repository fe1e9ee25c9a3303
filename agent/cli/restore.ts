/**
 * CLI: gem-backup restore FILE --yes [--keep-previous] [--from sftp|s3|smb] [--other-installation]: a
 * backup in the catalog, any backup file path, or (--from) a copy on an offsite destination, fetched and
 * checked first. A backup another installation made than the active keys' needs --other-installation.
 */
import { existsSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { AppError, isAppError } from '../errors';
import type { Job } from '../jobs/runner';
import { parseOffsiteKind } from '../offsite/destinations';
import { shellQuoted } from '../system/spawn';
import type { CliContext } from './context';

export async function restoreCommand(cli: CliContext): Promise<void> {
  const { values, positionals } = parseArgs({
    args: cli.args,
    allowPositionals: true,
    options: {
      yes: { type: 'boolean' },
      'keep-previous': { type: 'boolean' },
      from: { type: 'string' },
      'other-installation': { type: 'boolean' },
    },
  });
  const [file, ...extra] = positionals;
  if (!file || extra.length > 0)
    throw new AppError(
      'bad_request',
      'usage: gem-backup restore FILE --yes [--keep-previous] [--from sftp|s3|smb] [--other-installation]',
    );
  const from = values.from === undefined ? undefined : parseOffsiteKind(values.from);
  if (!values.yes) {
    throw new AppError(
      'bad_request',
      'a restore replaces all current data and scripts: add --yes to confirm',
    );
  }
  const options = {
    keepPrevious: values['keep-previous'] ?? false,
    otherInstallation: values['other-installation'] ?? false,
  };
  const job: Job = await cli.withAgent(async (agent) => {
    const { restoreFromFile, startRestore } = await import('../restore/restore');
    const name = basename(file);
    // A path to a file restores that file; a bare backup name restores from the catalog, or with
    // --from from that destination (as the page's Offsite list does).
    const started = from
      ? await (await import('../offsite/index')).offsiteServiceFor(agent).startRestore(from, file, options)
      : existsSync(file)
        ? await agent.jobs.start('restore', (ctx) => restoreFromFile(agent, ctx, resolve(file), options), {
            mutating: true,
            target: name,
          })
        : await startRestore(agent, name, options).catch((error: unknown) => {
            if (!isAppError(error, 'not_found')) throw error;
            throw new AppError(
              'not_found',
              `${error.message}; a copy on an offsite destination is listed by \`gem-backup list --from sftp\` (or s3, smb) and restored by \`gem-backup restore ${name} --from sftp --yes\``,
            );
          });
    const off = agent.jobs.subscribe(started.id, (e) => {
      if (e.type === 'update')
        cli.progress(e.job.phase, e.job.bytesDone, e.job.bytesTotal, e.job.unit, e.job.step);
    });
    const done = await agent.jobs.waitFor(started.id);
    off();
    return done;
  });
  if (job.state !== 'succeeded') {
    // A refused backup of another installation: the command that asks for it is the user's own, flag added.
    const { OTHER_INSTALLATION_HINT } = await import('../restore/restore');
    const word = /^[\w@%+=:,./-]+$/.test(file) ? file : shellQuoted(file);
    const again = `gem-backup restore ${word}${from ? ` --from ${from}` : ''} --yes --other-installation`;
    const message = job.error?.message.replace(OTHER_INSTALLATION_HINT, `(\`${again}\`)`);
    throw new AppError('restore_failed', message ?? `restore ${job.state}`);
  }
  const result = job.result as {
    restoredFrom: string;
    safetyBackup?: string;
    rows: number;
    restart: { ran: boolean; ok?: boolean; error?: string };
    /** What the restore did or could not keep beside the data (roles it created, grants left out). */
    warnings?: string[];
  };
  cli.out(`restored ${result.restoredFrom} (${result.rows} rows)`);
  for (const warning of result.warnings ?? []) cli.err(`warning: ${warning}`);
  if (result.safetyBackup) cli.out(`the state before the restore is kept in ${result.safetyBackup}`);
  const restart = restartWarning(result.restart);
  if (restart) cli.err(`warning: ${restart}`);
}

/**
 * What is left to do about GEM's restart after a restore, in the page's words (agent/ui/backups.js
 * restartOutcome), or nothing when the restart command ran and succeeded.
 */
function restartWarning(restart: { ran: boolean; ok?: boolean; error?: string }): string | undefined {
  if (restart.ran && restart.ok) return undefined;
  if (restart.ran) {
    // A command's stderr ends in a newline, or is empty after "exited with 1: ".
    const why = (restart.error ?? 'unknown error').trim().replace(/[.:]$/, '');
    return `GEM could not be restarted: ${why}; the data is restored: restart GEM by hand so it uses it`;
  }
  return 'the data is restored, but GEM was not restarted: no restart command is set up on this controller (GEM_RESTART_COMMAND); restart GEM now so it uses the restored data';
}
