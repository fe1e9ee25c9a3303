/** CLI: gem-backup restore FILE --yes [--keep-previous], a backup in the catalog or any backup file path. */
import { existsSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { AppError } from '../errors';
import type { Job } from '../jobs/runner';
import type { CliContext } from './context';

export async function restoreCommand(cli: CliContext): Promise<void> {
  const { values, positionals } = parseArgs({
    args: cli.args,
    allowPositionals: true,
    options: { yes: { type: 'boolean' }, 'keep-previous': { type: 'boolean' } },
  });
  const file = positionals[0];
  if (!file) throw new AppError('bad_request', 'usage: gem-backup restore FILE --yes [--keep-previous]');
  if (!values.yes) {
    throw new AppError(
      'bad_request',
      'a restore replaces all current data and scripts: add --yes to confirm',
    );
  }
  const options = { keepPrevious: values['keep-previous'] ?? false };
  const job: Job = await cli.withAgent(async (agent) => {
    const { restoreFromFile, startRestore } = await import('../restore/restore');
    const name = basename(file);
    // A path to a file restores that file; a bare backup name restores from the catalog.
    const started = existsSync(file)
      ? await agent.jobs.start('restore', (ctx) => restoreFromFile(agent, ctx, resolve(file), options), {
          mutating: true,
          target: name,
        })
      : await startRestore(agent, name, options);
    const off = agent.jobs.subscribe(started.id, (e) => {
      if (e.type === 'update') cli.progress(e.job.phase, e.job.bytesDone, e.job.bytesTotal);
    });
    const done = await agent.jobs.waitFor(started.id);
    off();
    return done;
  });
  if (job.state !== 'succeeded') {
    throw new AppError('restore_failed', job.error?.message ?? `restore ${job.state}`);
  }
  const result = job.result as {
    restoredFrom: string;
    safetyBackup?: string;
    rows: number;
    restart: { ran: boolean; ok?: boolean; error?: string };
  };
  cli.out(`restored ${result.restoredFrom} (${result.rows} rows)`);
  if (result.safetyBackup) cli.out(`the state before the restore is kept in ${result.safetyBackup}`);
  if (result.restart.ran && !result.restart.ok) cli.out(`warning: ${result.restart.error}`);
}
