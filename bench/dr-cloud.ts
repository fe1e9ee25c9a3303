// The DR Worker for the benchmark: built as `npm run cloud:build` does, under Miniflare, with a slot limit that fits any bench size.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Miniflare } from 'miniflare';
import { DR_ENROLLMENT_TOKEN, x25519Pair } from '../test/services/dr-cloud';

const ROOT = new URL('../', import.meta.url).pathname;

export { DR_ENROLLMENT_TOKEN };

/** Starts the Worker on 127.0.0.1 with its R2 and Durable Objects persisted under `workDir`. */
export async function startBenchDrCloud(workDir: string): Promise<{ url: string; dispose(): Promise<void> }> {
  const dir = await mkdtemp(join(workDir, 'dr-cloud-'));
  await promisify(execFile)(
    process.execPath,
    [
      join(ROOT, 'node_modules/wrangler/bin/wrangler.js'),
      'deploy',
      '--dry-run',
      '--outdir',
      join(dir, 'dist'),
    ],
    { cwd: ROOT, env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CI: '1' } },
  );
  const escrow = await x25519Pair('escrow-bench-1');
  const mf = new Miniflare({
    modules: true,
    scriptPath: join(dir, 'dist', 'index.js'),
    modulesRoot: join(dir, 'dist'),
    compatibilityDate: '2026-04-01',
    compatibilityFlags: ['nodejs_compat'],
    r2Buckets: ['SLOTS'],
    durableObjects: {
      INSTALLATIONS: { className: 'InstallationState', useSQLite: true },
      RECOVERY_LIMITER: { className: 'RecoveryRateLimiter', useSQLite: true },
    },
    bindings: {
      ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN,
      ESCROW_PRIVATE_KEYS: JSON.stringify([escrow.privateJwk]),
      MAX_SLOT_BYTES: String(64 * 1024 ** 3),
    },
    r2Persist: join(dir, 'r2'),
    durableObjectsPersist: join(dir, 'do'),
    host: '127.0.0.1',
    port: 0,
  });
  const url = await mf.ready;
  return {
    url: `http://127.0.0.1:${url.port}`,
    dispose: async () => {
      await mf.dispose();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
