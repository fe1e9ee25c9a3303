// Runs the Worker locally: builds the bundle exactly as `npm run cloud:build` does and starts it under
// Miniflare with the bindings wrangler.toml declares. Used by `npm run cloud:dev`, the tests and the bench.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Miniflare } from 'miniflare';

const ROOT = new URL('../', import.meta.url).pathname;

/** Builds the Worker bundle into `outDir` with `wrangler deploy --dry-run` (no upload, no metrics). */
export async function buildWorker(outDir: string): Promise<void> {
  const wrangler = join(ROOT, 'node_modules', 'wrangler', 'bin', 'wrangler.js');
  if (!existsSync(wrangler)) throw new Error('wrangler is missing: run npm install (wrangler@4.86.0)');
  await promisify(execFile)(process.execPath, [wrangler, 'deploy', '--dry-run', '--outdir', outDir], {
    cwd: ROOT,
    env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CI: '1' },
  });
}

/**
 * Starts a built Worker on 127.0.0.1: R2 bucket SLOTS and the two Durable Objects, their state
 * persisted under `stateDir`, with `bindings` (ENROLLMENT_TOKEN, ESCROW_PRIVATE_KEYS, limits).
 */
export async function startLocalWorker(options: {
  outDir: string;
  stateDir: string;
  bindings: Record<string, string>;
  port?: number;
}): Promise<{ mf: Miniflare; url: URL }> {
  const mf = new Miniflare({
    modules: true,
    scriptPath: join(options.outDir, 'index.js'),
    modulesRoot: options.outDir,
    compatibilityDate: '2026-04-01',
    compatibilityFlags: ['nodejs_compat'],
    r2Buckets: ['SLOTS'],
    durableObjects: {
      INSTALLATIONS: { className: 'InstallationState', useSQLite: true },
      RECOVERY_LIMITER: { className: 'RecoveryRateLimiter', useSQLite: true },
    },
    bindings: options.bindings,
    r2Persist: join(options.stateDir, 'r2'),
    durableObjectsPersist: join(options.stateDir, 'do'),
    host: '127.0.0.1',
    port: options.port ?? 0,
  });
  return { mf, url: await mf.ready };
}
