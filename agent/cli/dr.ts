/** CLI: gem-backup dr status | dr push | dr recover --installation-id ID | dr recover --abandon. */
import { parseArgs } from 'node:util';
import type { Agent } from '../agent';
import type { PushBackupNotice, PushResult } from '../dr/push';
import { normalizeInstallationId } from '../dr/unfinished';
import { AppError } from '../errors';
import type { Job } from '../jobs/runner';
import type { CliContext } from './context';
import { formatAge, formatSize } from './format';

const USAGE =
  'usage: gem-backup dr status | dr push | dr recover --installation-id ID | dr recover --abandon';

/** The agent's DR service, its module loaded only by a dr command that opens the agent. */
async function drService(agent: Agent) {
  const { drServiceFor } = await import('../dr/service');
  return drServiceFor(agent);
}

async function follow(
  cli: CliContext,
  agent: Agent,
  started: Job,
  onNotice?: (name: string, data: unknown) => void,
): Promise<Job> {
  const off = agent.jobs.subscribe(started.id, (e) => {
    if (e.type === 'update') cli.progress(e.job.phase, e.job.bytesDone, e.job.bytesTotal);
    else onNotice?.(e.name, e.data);
  });
  const done = await agent.jobs.waitFor(started.id);
  off();
  if (process.stderr.isTTY) process.stderr.write('\n');
  if (done.state !== 'succeeded') {
    const error = new AppError('internal', done.error?.message ?? `${done.kind} ${done.state}`);
    throw error;
  }
  return done;
}

/** "made 3 h ago, 51.5 MiB, an existing backup": a pushed backup's age, size and where it came from. */
function pushedWhat(b: PushBackupNotice, multipart = false): string {
  const from = b.resumed
    ? 'resuming an unfinished upload'
    : b.temporary
      ? 'a new temporary backup, removed after'
      : 'an existing backup';
  return `made ${formatAge(b.createdAt)}, ${formatSize(b.size)}, ${from}${multipart ? ', multipart' : ''}`;
}

/**
 * dr push: says which backup goes and how old it is as soon as the push has chosen it (before a byte of
 * it is hashed or sent), warns when that backup or the newest local one is older than a day (it still
 * pushes), and ends with the same facts.
 */
async function pushCommand(cli: CliContext, dataIsCurrent: boolean): Promise<void> {
  const { PUSH_BACKUP_NOTICE, REUSE_MAX_AGE_MS } = await import('../dr/push');
  const stale = (createdAt: string) => Date.now() - Date.parse(createdAt) > REUSE_MAX_AGE_MS;
  const job = await cli.withAgent(async (agent) => {
    const dr = await drService(agent);
    // The newest backup `gem-backup list` shows, before the push may add a temporary one.
    const newest = (await agent.catalog.list())[0];
    // Why it may be old, as far as the settings tell: off, a schedule slower than daily, or not running.
    const auto = agent.settings.get().autoBackup;
    const schedule = !auto.enabled
      ? 'automatic backups are turned off'
      : auto.schedule === 'weekly' || auto.schedule === 'monthly'
        ? `automatic backups run ${auto.schedule}`
        : 'check that the automatic backups run';
    const started = await dr.startPush('manual', { dataIsCurrent });
    return follow(cli, agent, started, (name, data) => {
      if (name !== PUSH_BACKUP_NOTICE) return;
      const chosen = data as PushBackupNotice;
      cli.out(`pushing ${chosen.backup} (${pushedWhat(chosen)})`);
      if (stale(chosen.createdAt)) {
        cli.err(
          `warning: ${chosen.backup} is more than a day old (made ${formatAge(chosen.createdAt)}): the DR cloud will hold data that old`,
        );
      } else if (chosen.temporary && !newest) {
        cli.err(`warning: there is no local backup (${schedule}): a temporary one was made for this push`);
      } else if (chosen.temporary && newest && stale(newest.createdAt)) {
        cli.err(
          `warning: the newest local backup, ${newest.filename}, is more than a day old (made ${formatAge(newest.createdAt)}; ${schedule}): a temporary one was made for this push`,
        );
      }
    });
  });
  const r = job.result as PushResult;
  cli.out(`pushed ${r.backup} (${pushedWhat(r, r.multipart)}) to the DR cloud`);
}

export async function drCommand(cli: CliContext): Promise<void> {
  const [sub, ...rest] = cli.args;
  const { values } = parseArgs({
    args: rest,
    options: {
      'installation-id': { type: 'string' },
      abandon: { type: 'boolean' },
      'data-is-current': { type: 'boolean' },
    },
  });
  if (sub === 'status') {
    const status = await cli.withAgent(async (agent) => (await drService(agent)).status());
    cli.out(JSON.stringify(status, null, 2));
    return;
  }
  if (sub === 'push') {
    await pushCommand(cli, values['data-is-current'] ?? false);
    return;
  }
  if (sub === 'recover' && values.abandon) {
    if (values['installation-id'] !== undefined) {
      throw new AppError(
        'bad_request',
        'give either --installation-id (to finish a recovery) or --abandon, not both',
      );
    }
    const abandoned = await cli.withAgent(async (agent) => (await drService(agent)).abandonRecovery());
    cli.out(
      abandoned
        ? "the unfinished recovery was given up: this box is back on its own identity and keys (the recovered keys are kept, retired); Cloud DR pushes this box's own data again"
        : 'no recovery from the DR cloud is unfinished here: nothing changed',
    );
    return;
  }
  if (sub === 'recover') {
    const typed = values['installation-id'];
    if (!typed) throw new AppError('bad_request', USAGE);
    const id = normalizeInstallationId(typed);
    if (id === undefined) {
      throw new AppError(
        'bad_request',
        '--installation-id must be the 32 hex characters of the old installation id (`gem-backup dr status` on the old box, or its keys file); upper case and spaces or dashes between groups are fine',
      );
    }
    const job = await cli.withAgent(async (agent) =>
      follow(cli, agent, await (await drService(agent)).startRecover(id)),
    );
    const r = job.result as { installationId: string; backup: string; restore: { rows: number } };
    cli.out(`recovered installation ${r.installationId} from ${r.backup} (${r.restore.rows} rows restored)`);
    return;
  }
  throw new AppError('bad_request', USAGE);
}
