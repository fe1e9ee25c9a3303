/** CLI: gem-backup dr status | dr push | dr recover --installation-id ID | dr recover --abandon. */
import { parseArgs } from 'node:util';
import type { Agent } from '../agent';
import { normalizeInstallationId } from '../dr/unfinished';
import { AppError } from '../errors';
import type { Job } from '../jobs/runner';
import type { CliContext } from './context';

const USAGE =
  'usage: gem-backup dr status | dr push | dr recover --installation-id ID | dr recover --abandon';

/** The agent's DR service, its module loaded only by a dr command that opens the agent. */
async function drService(agent: Agent) {
  const { drServiceFor } = await import('../dr/service');
  return drServiceFor(agent);
}

async function follow(cli: CliContext, agent: Agent, started: Job): Promise<Job> {
  const off = agent.jobs.subscribe(started.id, (e) => {
    if (e.type === 'update') cli.progress(e.job.phase, e.job.bytesDone, e.job.bytesTotal);
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

export async function drCommand(cli: CliContext): Promise<void> {
  const [sub, ...rest] = cli.args;
  const { values } = parseArgs({
    args: rest,
    options: { 'installation-id': { type: 'string' }, abandon: { type: 'boolean' } },
  });
  if (sub === 'status') {
    const status = await cli.withAgent(async (agent) => (await drService(agent)).status());
    cli.out(JSON.stringify(status, null, 2));
    return;
  }
  if (sub === 'push') {
    const job = await cli.withAgent(async (agent) =>
      follow(cli, agent, await (await drService(agent)).startPush('manual')),
    );
    const r = job.result as { backup: string; size: number; reused: boolean; multipart: boolean };
    cli.out(
      `pushed ${r.backup} (${r.size} bytes${r.reused ? ', an existing backup' : ', a temporary backup'}` +
        `${r.multipart ? ', multipart' : ''}) to the DR cloud`,
    );
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
