// The gem-dr Worker entry: the cloud app over R2 and Durable Objects, and the Durable Object classes.
import { createCloudApp } from './app';
import { type CloudDeps, parseCloudConfig } from './deps';
import { InstallationState } from './state/installation-state';
import { RecoveryRateLimiter } from './state/rate-limiter';
import { R2SlotStore } from './store/r2';
import type { WorkerEnv } from './worker-env';

/** The platform of one request: nothing is kept in isolate memory between requests. */
function workerDeps(env: WorkerEnv): CloudDeps {
  const config = parseCloudConfig(env);
  return {
    store: new R2SlotStore(env.SLOTS),
    // Cloudflare sets CF-Connecting-IP itself, replacing whatever the client sent.
    clientAddress: (c) => c.req.header('cf-connecting-ip') ?? 'unknown',
    installation: (hash) => env.INSTALLATIONS.get(env.INSTALLATIONS.idFromName(hash)),
    takeRecoveryAttempt: (address) =>
      env.RECOVERY_LIMITER.get(env.RECOVERY_LIMITER.idFromName(address)).take(config.recoverPerMinute),
    config,
  };
}

const app = createCloudApp<WorkerEnv>(workerDeps);

export default { fetch: app.fetch };
export { InstallationState, RecoveryRateLimiter };
