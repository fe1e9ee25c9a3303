/** The one place that wires real dependencies and starts everything: `npm start`. */
import { openAgent } from './agent';
import { alertsFor } from './alerts/notifier';
import { createApp, serveApp } from './app';
import { loadConfig } from './config';
import { drServiceFor } from './dr/service';
import { healthFor } from './health/service';
import { Scheduler } from './jobs/scheduler';
import { createLogger } from './log';
import { metricsFor } from './metrics/recorder';
import { VerificationScheduler } from './verification/schedule';
import { AGENT_VERSION } from './version';

async function main(): Promise<void> {
  const config = loadConfig();
  const log = createLogger({ level: config.logLevel, base: { service: 'gem-backup-agent' } });
  const agent = await openAgent(config, log, { ownCluster: true });
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
    log.info('agent listening', {
      url,
      version: AGENT_VERSION,
      installationId: agent.keyring.installationId,
    });
    // Printed plainly (not in the JSON log) so a person starting the agent sees how to sign in.
    process.stdout.write(`\nGEM Backup & Restore is running at ${url}\nAdmin token: ${agent.token}\n\n`);
  });

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    server.close();
    scheduler.stop();
    dr.stop();
    verification.stop();
    alerts.stop();
    health.stop();
    await agent.close();
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
