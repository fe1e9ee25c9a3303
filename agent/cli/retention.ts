/** CLI: pin / unpin a backup, and `retention`: what the prune would delete, and resuming a paused prune. */
import { parseArgs } from 'node:util';
import { AppError } from '../errors';
import type { CliContext } from './context';

const PIN_USAGE = 'usage: gem-backup pin NAME | gem-backup unpin NAME';
const RETENTION_USAGE = 'usage: gem-backup retention [--json] | gem-backup retention resume [--yes]';

/** `pin NAME` / `unpin NAME`: a pinned backup is never pruned, here or offsite. */
function pinCommandOf(pinned: boolean) {
  return async (cli: CliContext): Promise<void> => {
    const { positionals } = parseArgs({ args: cli.args, allowPositionals: true, options: {} });
    const [name, ...extra] = positionals;
    if (!name || extra.length > 0) throw new AppError('bad_request', PIN_USAGE);
    const { setPinned } = await import('../http/routes/backups');
    // A signal before the write cancels it; after, it lets the change finish (one write) and says so.
    const backup = await cli.withAgent(
      (agent, stopIfInterrupted) => setPinned(agent, name, pinned, stopIfInterrupted),
      {
        finishes: pinned ? 'pin' : 'unpin',
      },
    );
    cli.out(
      pinned
        ? `pinned ${backup.filename}: retention never deletes it, here or offsite; unpin it to delete it`
        : 'local' in backup
          ? `unpinned ${backup.filename} (its file here was removed): offsite retention may delete its copies when they are among the oldest`
          : `unpinned ${backup.filename}: retention may delete it when it is among the oldest`,
    );
  };
}

export const pinCommand = pinCommandOf(true);
export const unpinCommand = pinCommandOf(false);

type Named = { filename: string; pinned: boolean };

const namesOf = (list: Named[]) => list.map((b) => b.filename).join(', ');

/**
 * `retention [--json]`: the number kept, whether pruning is paused, and what the prune deletes now and at
 * the next backup (--json: GET /api/v1/retention/preview). `retention resume`: ends a pause once the pins
 * are checked; without --yes it only says what the prune would then delete.
 */
export async function retentionCommand(cli: CliContext): Promise<void> {
  const { values, positionals } = parseArgs({
    args: cli.args,
    allowPositionals: true,
    options: { json: { type: 'boolean' }, yes: { type: 'boolean' } },
  });
  const [sub, ...extra] = positionals;
  if (extra.length > 0 || (sub !== undefined && sub !== 'resume'))
    throw new AppError('bad_request', RETENTION_USAGE);
  const { retentionPreview, resumePruning } = await import('../http/routes/settings');
  if (sub === undefined) {
    const preview = await cli.withAgent((agent) => retentionPreview(agent));
    if (values.json) {
      cli.out(JSON.stringify(preview, null, 2));
      return;
    }
    cli.out(`keeps the newest ${preview.maxBackups} backups; pinned backups are never deleted`);
    if (preview.held) {
      cli.out(preview.held.message);
      cli.out('nothing is deleted while pruning is paused');
      cli.out(wouldDelete('once resumed, the next backup deletes', preview.ifResumed.nextBackup.delete));
      return;
    }
    cli.out(wouldDelete('the next backup deletes', preview.nextBackup.delete));
    return;
  }
  const result = await cli.withAgent(
    async (agent, stopIfInterrupted) => {
      const preview = await retentionPreview(agent);
      if (!preview.held) return { held: false as const };
      if (!values.yes) return { held: true as const, preview };
      await resumePruning(agent, stopIfInterrupted);
      return { held: true as const, resumed: true, preview };
    },
    values.yes ? { finishes: 'resume of pruning' } : {},
  );
  if (!result.held) {
    cli.out('pruning is not paused: nothing to resume');
    return;
  }
  const next = result.preview.ifResumed?.nextBackup.delete ?? [];
  if (!('resumed' in result)) {
    cli.err(result.preview.held?.message ?? '');
    cli.err(wouldDelete('once resumed, the next backup deletes', next));
    throw new AppError(
      'bad_request',
      'pruning is still paused: check the pins (gem-backup list; gem-backup pin NAME), then run gem-backup retention resume --yes',
    );
  }
  cli.out('pruning resumed');
  cli.out(wouldDelete('the next backup deletes', next));
}

function wouldDelete(when: string, list: Named[]): string {
  return list.length === 0 ? `${when} nothing` : `${when} ${list.length}: ${namesOf(list)}`;
}
