/** The one place that wires real dependencies and starts everything: `npm start`. */
import { statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { type Agent, openAgent } from './agent';
import { alertsFor } from './alerts/notifier';
import { createApp, serveApp } from './app';
import { dataPaths, loadConfig } from './config';
import { watchDatabase } from './db/watch';
import { drServiceFor } from './dr/service';
import { AppError, barePermissionDenied, isBareNoSpace, permissionDeniedError } from './errors';
import { healthFor } from './health/service';
import { Scheduler } from './jobs/scheduler';
import { createLogger, installFatalHandlers } from './log';
import { metricsFor } from './metrics/recorder';
import { runAsOwner, shellWord, userNameOf } from './system/passwd';
import { acquireServiceLock, serviceLockPath } from './system/service-lock';
import { VerificationScheduler } from './verification/schedule';
import { AGENT_VERSION } from './version';

/**
 * What a person starting the agent reads. The admin token itself only when this start created it:
 * output lands in systemd or docker logs, which must not carry it at every start.
 */
function startupMessage(agent: Agent, url: string, tokenCreated: boolean): string {
  const token = tokenCreated
    ? `Admin token: ${agent.token}`
    : agent.config.agentToken
      ? 'Admin token: the one in GEM_AGENT_TOKEN'
      : `Admin token: in ${agent.paths.token}`;
  return `\nGEM Backup & Restore is running at ${url}\n${token}\n\n`;
}

/**
 * Refuses, before anything is written, an agent started as another user than the one the installation
 * belongs to (its keyring's owner, the service's user): what it would write (the lock, state files,
 * backups) would be its own and 0600, and the service could then no longer start. A data dir with no
 * keyring yet is new: whoever starts the agent first makes it, and owns it.
 */
function requireInstallationUser(dataDir: string): void {
  const me = process.geteuid?.();
  if (me === undefined) return;
  let owner: number;
  try {
    owner = statSync(dataPaths(dataDir).keyring).uid;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code !== 'EACCES') throw error;
    throw new Error(
      `cannot reach the installation in ${dataDir} as user ${userNameOf(me)} (permission denied): start the agent as the user it belongs to (ls -ln ${shellWord(dataDir)} shows it)`,
    );
  }
  if (owner === me) return;
  const name = userNameOf(owner);
  const whose = owner === 0 ? 'root' : `user ${name}`;
  const command = [process.execPath, ...process.execArgv, ...process.argv.slice(1)].map(shellWord).join(' ');
  const as = runAsOwner(owner, me);
  // A keyring root made in a data dir that is this user's: a `sudo gem-backup keys import` by mistake,
  // most likely; the service's user is then the one to give it back to.
  const mine = owner === 0 && me !== 0 && statSync(dataDir).uid === me;
  const orChown = mine
    ? `; or, if root made it by mistake (a sudo gem-backup), give it back as root: chown -R ${shellWord(userNameOf(me))} ${shellWord(dataDir)}`
    : '';
  throw new Error(
    `the installation in ${dataDir} belongs to ${whose} and the agent runs as ${me === 0 ? 'root' : `user ${userNameOf(me)}`}: ` +
      `start it as ${whose}, so that what it writes stays readable to the service: ${as} ${command}${orChown}`,
  );
}

/** A full disk the system said so (ENOSPC, EDQUOT), not the database (its 53100). */
function isNoSpaceOfFiles(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** Why the start failed, in one line: a full disk or a permission names the path and what to do. */
function startFailure(error: Error, dataDir: string | undefined): string {
  if (error instanceof AppError) return error.message;
  if (isBareNoSpace(error)) {
    const path = (error as NodeJS.ErrnoException).path;
    const where = path
      ? `: the agent cannot write ${path}`
      : isNoSpaceOfFiles(error) && dataDir
        ? ` where the agent writes ${dataDir}`
        : ' (the database could not extend a file)';
    return `the disk is full${where}; free some space on it and start the agent again`;
  }
  const denied = barePermissionDenied(error);
  if (denied) return permissionDeniedError(denied).message;
  return error.message;
}

/** The data dir of this start, once known: the start's error names it. */
let startingDataDir: string | undefined;

async function main(): Promise<void> {
  const config = loadConfig();
  startingDataDir = config.dataDir;
  const log = createLogger({ level: config.logLevel, base: { service: 'gem-backup-agent' } });
  requireInstallationUser(config.dataDir);
  // One service per data dir, taken before anything starts or adopts the cluster: a second agent
  // (another port, or the same one) leaves with one line and touches nothing. Its file is the first
  // write: a full disk names it (the write itself names no path).
  const releaseServiceLock = await acquireServiceLock(config.dataDir).catch((error: unknown) => {
    if (!isBareNoSpace(error)) throw error;
    throw new Error(
      `the disk is full: the agent cannot write ${serviceLockPath(config.dataDir)}; free some space on it and start the agent again`,
    );
  });
  // An unhandled rejection or uncaught exception: one fatal line, a bounded close, exit 1 (the
  // supervisor restarts the agent). Set before anything starts; what to close is known further down.
  let closeAll: (() => Promise<void>) | undefined;
  installFatalHandlers(log, { close: () => closeAll?.() ?? Promise.resolve() });
  // The token file as it was before this start: openAgent creates it when there is none.
  const tokenBefore = config.agentToken
    ? undefined
    : await readFile(dataPaths(config.dataDir).token, 'utf8').then(
        (text) => text.trim(),
        () => undefined,
      );
  // The embedded cluster is the agent's, whether this start started it or adopted it (a killed
  // agent's, a CLI command's): it is stopped at exit, unless another process (a CLI command) still
  // uses it, whose end then stops it. Never a DATABASE_URL's server: there is no cluster then.
  const agent = await openAgent(config, log, { ownCluster: true });
  closeAll = () => agent.close();
  const tokenCreated = !config.agentToken && tokenBefore !== agent.token;
  // An outage of GEM's database heals without a restart: the embedded server started again, a
  // restore it cut off finished.
  const databaseWatch = watchDatabase(agent);
  // Metrics count jobs from the start; the health watchdog watches them.
  metricsFor(agent);
  const health = healthFor(agent);
  const app = createApp(agent);
  // Auto-backup and maintenance schedules; re-armed on every settings change.
  const scheduler = new Scheduler(agent);
  await scheduler.start();
  // The nightly Cloud DR push (03:00 + a per-installation offset) and any opt-out deletion still owed.
  const dr = drServiceFor(agent);
  await dr.start();
  // The weekly verification of every copy, and alerts when an area of health changes.
  const verification = new VerificationScheduler(agent);
  await verification.start();
  const alerts = alertsFor(agent, health);
  alerts.start();
  const server = serveApp(app, { hostname: config.host, port: config.port }, (info) => {
    const url = `http://${config.host}:${info.port}/`;
    // Not the installation id: it is the Cloud DR recovery credential, and logs travel far.
    log.info('agent listening', { url, version: AGENT_VERSION });
    // Printed plainly (not in the JSON log) so a person starting the agent sees how to sign in.
    process.stdout.write(startupMessage(agent, url, tokenCreated));
  });

  // No new work first (server, timers), then the agent: running jobs cancelled, their processes ended.
  closeAll = async () => {
    server.close();
    scheduler.stop();
    const drStopped = dr.stop();
    verification.stop();
    alerts.stop();
    health.stop();
    await Promise.all([databaseWatch.stop(), drStopped]);
    await agent.close();
    // Released only once the cluster is stopped: the next agent never adopts a cluster being stopped.
    await releaseServiceLock();
  };
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    try {
      await closeAll?.();
    } catch (error) {
      log.error('stopping the agent failed', { error });
      process.exit(1);
    }
    log.info('stopped');
    process.exit(0);
  };
  // SIGHUP: the terminal `npm start` ran in was lost; stopping cleanly beats dying with jobs half done.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => void stop(signal));
}

main().catch((error: Error) => {
  process.stderr.write(`gem-backup agent failed to start: ${startFailure(error, startingDataDir)}\n`);
  process.exit(1);
});
