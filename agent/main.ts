/** The one place that wires real dependencies and starts everything: `npm start`. */
import { readFile } from 'node:fs/promises';
import { type Agent, openAgent } from './agent';
import { alertsFor } from './alerts/notifier';
import { createApp, serveApp } from './app';
import { dataPaths, loadConfig } from './config';
import { watchDatabase } from './db/watch';
import { drServiceFor } from './dr/service';
import { healthFor } from './health/service';
import { Scheduler } from './jobs/scheduler';
import { createLogger, installFatalHandlers } from './log';
import { metricsFor } from './metrics/recorder';
import { acquireServiceLock } from './system/service-lock';
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

async function main(): Promise<void> {
  const config = loadConfig();
  const log = createLogger({ level: config.logLevel, base: { service: 'gem-backup-agent' } });
  // One service per data dir, taken before anything starts or adopts the cluster: a second agent
  // (another port, or the same one) leaves with one line and touches nothing.
  const releaseServiceLock = await acquireServiceLock(config.dataDir);
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
  // The embedded cluster is stopped at exit only if this start started it: one already running was
  // started by someone else (a CLI command still using it, an agent that crashed) and is left running.
  const agent = await openAgent(config, log, { ownCluster: false });
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
    dr.stop();
    verification.stop();
    alerts.stop();
    health.stop();
    await databaseWatch.stop();
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
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}

main().catch((error: Error) => {
  process.stderr.write(`gem-backup agent failed to start: ${error.message}\n`);
  process.exit(1);
});
