/**
 * CLI: gem-backup dr status | dr push | dr recover --installation-id ID [--yes] | dr recover --abandon
 * (--yes: needed on a box that is not a fresh install).
 */
import { parseArgs } from 'node:util';
import type { Agent } from '../agent';
import type { PushBackupNotice, PushResult } from '../dr/push';
import type { DrStatus } from '../dr/service';
import type { DrPushRecord } from '../dr/state';
import { normalizeInstallationId, unfinishedMessage } from '../dr/unfinished';
import { AppError, isErrorCode } from '../errors';
import type { Job } from '../jobs/runner';
import { installationIdPrefix, shortInstallationId } from '../keys/keyring';
import { AWAITING_RESTORE_REASON, LastRestoreStore } from '../restore/last-restore';
import type { CliContext } from './context';
import { formatAge, formatIn, formatSize } from './format';

const USAGE =
  'usage: gem-backup dr status [--json] [--show-installation-id] | dr push | dr recover --installation-id ID [--yes] | dr recover --abandon';

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
    if (e.type === 'update') cli.progress(e.job.phase, e.job.bytesDone, e.job.bytesTotal, e.job.unit);
    else onNotice?.(e.name, e.data);
  });
  const done = await agent.jobs.waitFor(started.id);
  off();
  if (process.stderr.isTTY) process.stderr.write('\n');
  if (done.state !== 'succeeded') {
    // With the job's own code (a refusal such as the cloud's 404 is `not_found`), which the audit records.
    const code = done.error && isErrorCode(done.error.code) ? done.error.code : 'internal';
    throw new AppError(code, done.error?.message ?? `${done.kind} ${done.state}`);
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

/** What `dr status` shows: GET /api/v1/dr/status's object and what the CLI adds from the data dir. */
interface StatusView {
  status: DrStatus;
  /** When this installation enrolled with the DR cloud (its first push), or null. */
  enrolledAt: string | null;
  /** Keys of another installation were imported and none of its backups restored since: no push goes. */
  awaitingRestore: boolean;
}

async function statusView(agent: Agent): Promise<StatusView> {
  const dr = await drService(agent);
  // The cloud is asked whether its copy is still the one this box pushed (another box holding the id
  // may have pushed over it); an unreachable cloud is said so, and the rest is shown.
  await dr.checkCloudCopy().catch(() => null);
  const [status, state, awaitingRestore, jobs] = await Promise.all([
    dr.status(),
    dr.state.get(),
    new LastRestoreStore(agent.paths.lastRestore, agent.log).awaitingRestore(agent.keyring.installationId),
    agent.jobs.listWithOthers(),
  ]);
  // A push the service runs now (Push Now on the page, the nightly run): this process runs none.
  const pushing = jobs.find((j) => j.kind === 'dr-push' && !j.endedAt);
  const enrollment = state.enrollment;
  return {
    status: {
      ...status,
      running: status.running || pushing !== undefined,
      jobId: status.jobId ?? pushing?.id ?? null,
    },
    enrolledAt: enrollment && enrollment.installationId === status.installationId ? enrollment.at : null,
    awaitingRestore,
  };
}

/** "succeeded 3 h ago (2026-11-30T14:00:00.000Z, the nightly run)": how a push ended, when, and what started it. */
function pushWhen(p: DrPushRecord): string {
  return `${p.outcome} ${formatAge(p.at)} (${p.at}, ${p.trigger === 'nightly' ? 'the nightly run' : 'started by hand'})`;
}

/** `dr status` for people: one line per fact, the whole installation id only when asked for. */
function statusLines(view: StatusView, showId: boolean): string[] {
  const s = view.status;
  const lines: string[] = [];
  lines.push(
    `Cloud DR: ${
      !s.configured
        ? "cannot tell from here: GEM_DR_URL is not set in this command's environment (the service reads its own: run `dr status` with the service's GEM_DR_URL, or look at the page)"
        : s.enabled
          ? `on, endpoint ${s.url}`
          : `turned off in the settings (endpoint ${s.url})`
    }`,
  );
  lines.push(
    showId
      ? `installation: ${s.installationId} (the DR recovery credential: keep it off this box, with the keys file)`
      : `installation: ${shortInstallationId(s.installationId)} (the whole id recovers this installation from the DR cloud: keep it off this box, with the keys file; \`gem-backup dr status --show-installation-id\` prints it)`,
  );
  lines.push(
    view.enrolledAt
      ? `enrolled: yes, since ${view.enrolledAt}`
      : `enrolled: no${s.enabled ? ': the first push enrolls this installation with the DR cloud' : ''}`,
  );
  if (s.running) lines.push(`push: running now (job ${s.jobId})`);
  const last = s.lastPush;
  const recovered = s.recovered;
  if (!last) {
    lines.push(`last push: none from this data dir${recovered ? ' (it was recovered from the cloud)' : ''}`);
  } else if (last.outcome === 'succeeded') {
    lines.push(`last push: ${pushWhen(last)}: ${last.backup}`);
  } else if (last.outcome === 'failed') {
    lines.push(
      `last push: ${pushWhen(last)}: ${last.error?.message ?? 'unknown error'}; the cloud copy was not updated`,
    );
  } else {
    lines.push(`last push: ${pushWhen(last)}: ${last.reason ?? 'no reason recorded'}`);
  }
  const copy = s.lastSuccess;
  const check = s.cloudCheck;
  if (s.pendingDeletion) {
    const { attempts: tries, refused, lastError } = s.pendingDeletion;
    lines.push(
      refused
        ? `cloud copy: not deleted: the cloud refused the deletion (${lastError?.message ?? 'refused'}); not retried until the agent restarts`
        : `cloud copy: being deleted since ${s.pendingDeletion.since} (Cloud DR was turned off; ${tries} attempt${tries === 1 ? '' : 's'} so far, retried until the cloud confirms)`,
    );
  } else if (check?.ok === false) {
    lines.push(`cloud copy: NOT this box's: ${check.problem}`);
  } else if (recovered) {
    lines.push(
      `cloud copy: the backup this box was recovered from ${formatAge(recovered.at)} (here ${recovered.backup}), made ${formatAge(recovered.createdAt)} (${recovered.createdAt}); the next push replaces it`,
    );
  } else if (copy) {
    const made = copy.createdAt ? `made ${formatAge(copy.createdAt)} (${copy.createdAt}), ` : '';
    const size = copy.size !== undefined ? `${formatSize(copy.size)}, ` : '';
    lines.push(`cloud copy: ${copy.backup}, ${made}${size}pushed ${formatAge(copy.at)}`);
  } else {
    lines.push('cloud copy: none pushed from this data dir');
  }
  if (check?.ok === null) lines.push(`cloud check: ${check.problem}`);
  for (const former of s.formerCopies) {
    lines.push(
      `former installation ${former.installation}: its cloud copy (pushed ${former.pushedAt ?? 'at an unknown time'}) stays in the cloud until Cloud DR is turned off, which deletes it with that id's retired key`,
    );
  }
  if (s.upload) lines.push(`unfinished upload: ${s.upload.backup} (the next push resumes it)`);
  const unfinished = s.unfinishedRecovery;
  if (unfinished) {
    const since = unfinished.startedAt ? ` (started ${formatAge(unfinished.startedAt)})` : '';
    lines.push(
      `recovery: unfinished${since}: ${
        unfinished.installationId === null
          ? unfinished.message
          : unfinishedMessage(unfinished.installationId, { wholeId: showId })
      }; no push goes until then`,
    );
  }
  if (view.awaitingRestore) lines.push(`pushes held: ${AWAITING_RESTORE_REASON}`);
  const held = unfinished !== null || view.awaitingRestore;
  if (!s.configured) {
    lines.push('next push: cannot tell from here (GEM_DR_URL is not set in this environment)');
  } else if (!s.enabled) {
    lines.push('next push: none (Cloud DR is off)');
  } else if (s.nextRunAt) {
    const skipped = held
      ? '; skipped while pushes are held (see above)'
      : s.nightlySkipped
        ? '; skipped: NODE_ENV=development (a push now still runs)'
        : '';
    lines.push(`next push: ${formatIn(s.nextRunAt)} (${s.nextRunAt}, the nightly run)${skipped}`);
  }
  // A message kept from a push (a refusal during the recovery names the id to type) shows no more of it.
  if (showId) return lines;
  const ids = [s.installationId, unfinished?.installationId].filter((x): x is string => Boolean(x));
  return lines.map((line) => ids.reduce((text, id) => text.replaceAll(id, shortInstallationId(id)), line));
}

/**
 * `dr status --json`: GET /api/v1/dr/status's object with `enrolled`, `enrolledAt` and `awaitingRestore`;
 * without --show-installation-id the whole id is left out (`installationIdPrefix` instead, also in an
 * unfinished recovery, and in any message that held it): a status in a monitoring log recovers nothing.
 */
function statusJson(view: StatusView, showId: boolean): string {
  const { status, enrolledAt, awaitingRestore } = view;
  const added = { enrolled: enrolledAt !== null, enrolledAt, awaitingRestore };
  if (showId) return JSON.stringify({ ...status, ...added }, null, 2);
  const { installationId, unfinishedRecovery, ...rest } = status;
  const recovering = unfinishedRecovery?.installationId;
  const masked = {
    ...rest,
    installationIdPrefix: installationIdPrefix(installationId),
    ...added,
    unfinishedRecovery: unfinishedRecovery
      ? (() => {
          const { installationId: id, ...u } = unfinishedRecovery;
          if (id === null) return { ...u, installationIdPrefix: null };
          return { ...u, message: unfinishedMessage(id), installationIdPrefix: installationIdPrefix(id) };
        })()
      : null,
  };
  let text = JSON.stringify(masked, null, 2);
  for (const id of [installationId, recovering]) if (id) text = text.replaceAll(id, shortInstallationId(id));
  return text;
}

/**
 * The dr command's options. parseArgs quotes an argument it refuses, which may be the installation id
 * typed without its option (`dr recover <id>`): the DR recovery credential, written as ID instead.
 */
function parseDrArgs(args: string[]) {
  try {
    return parseArgs({
      args,
      options: {
        'installation-id': { type: 'string' },
        abandon: { type: 'boolean' },
        'data-is-current': { type: 'boolean' },
        json: { type: 'boolean' },
        'show-installation-id': { type: 'boolean' },
        yes: { type: 'boolean' },
      },
    });
  } catch (error) {
    if (!(error instanceof Error)) throw error;
    const message = error.message.replace(/'([^']*)'/g, (quoted, arg: string) =>
      normalizeInstallationId(arg) === undefined ? quoted : "'ID'",
    );
    throw new AppError('bad_request', message);
  }
}

export async function drCommand(cli: CliContext): Promise<void> {
  const [sub, ...rest] = cli.args;
  const { values } = parseDrArgs(rest);
  if (sub === 'status') {
    const view = await cli.withAgent(statusView);
    const showId = values['show-installation-id'] ?? false;
    if (values.json) cli.out(statusJson(view, showId));
    else for (const line of statusLines(view, showId)) cli.out(line);
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
    const abandoned = await cli.withAgent(
      async (agent, stopIfInterrupted) => (await drService(agent)).abandonRecovery(stopIfInterrupted),
      {
        finishes: 'giving up of the recovery',
      },
    );
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
        '--installation-id must be the 32 hex characters of the old installation id (`gem-backup dr status --show-installation-id` on the old box, or its keys file); upper case and spaces or dashes between groups are fine',
      );
    }
    const job = await cli.withAgent(async (agent) =>
      follow(
        cli,
        agent,
        await (await drService(agent)).startRecover(id, {
          confirmed: values.yes ?? false,
          howToConfirm: 'add --yes to confirm',
        }),
      ),
    );
    const r = job.result as {
      installationId: string;
      backup: string;
      restore: { rows: number; warnings?: string[] };
    };
    cli.out(
      `recovered installation ${shortInstallationId(r.installationId)} from ${r.backup} (${r.restore.rows} rows restored)`,
    );
    // A new box has none of the old one's roles: the restore created them (no login) and says so.
    for (const warning of r.restore.warnings ?? []) cli.err(`warning: ${warning}`);
    return;
  }
  throw new AppError('bad_request', USAGE);
}
