/** The DR Worker for agent tests: built once, run under Miniflare on 127.0.0.1, restartable on the same port and state. */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { Miniflare } from 'miniflare';

const ROOT = new URL('../../', import.meta.url).pathname;
export const DR_ENROLLMENT_TOKEN = 'test-dr-enrollment-token';

export interface DrCloud {
  url: string;
  port: number;
  escrowPublic: JWK;
  /** Object keys in the installation's slot folder (R2). */
  listSlotObjects(installationId: string): Promise<string[]>;
  /** Stops the Worker; its R2 and Durable Object state stay on disk for restart(). */
  stop(): Promise<void>;
  /** Starts it again on the same port with the same state. */
  restart(): Promise<void>;
  dispose(): Promise<void>;
}

export async function x25519Pair(kid: string): Promise<{ privateJwk: JWK; publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair('ECDH-ES', { crv: 'X25519', extractable: true });
  return {
    privateJwk: { ...(await exportJWK(privateKey)), kid },
    publicJwk: { ...(await exportJWK(publicKey)), kid },
  };
}

/** Builds the Worker as `npm run cloud:build` does and starts it with a fresh escrow key. */
export async function startDrCloud(): Promise<DrCloud> {
  const dir = await mkdtemp(join(tmpdir(), 'gem-dr-cloud-'));
  const wrangler = join(ROOT, 'node_modules/wrangler/bin/wrangler.js');
  if (!existsSync(wrangler)) throw new Error('wrangler is missing: run npm install (wrangler@4.86.0)');
  await promisify(execFile)(
    process.execPath,
    [wrangler, 'deploy', '--dry-run', '--outdir', join(dir, 'dist')],
    {
      cwd: ROOT,
      env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CI: '1' },
    },
  );
  const escrow = await x25519Pair('escrow-test-1');
  let port = 0;
  let mf: Miniflare | undefined;
  const start = async () => {
    mf = new Miniflare({
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
        MAX_SLOT_BYTES: '200000000',
      },
      r2Persist: join(dir, 'r2'),
      durableObjectsPersist: join(dir, 'do'),
      host: '127.0.0.1',
      port,
    });
    const url = await mf.ready;
    port = Number(url.port);
  };
  await start();
  return {
    get url() {
      return `http://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    escrowPublic: escrow.publicJwk,
    async listSlotObjects(installationId) {
      const bucket = (await mf!.getR2Bucket('SLOTS')) as unknown as R2Bucket;
      const hash = createHash('sha256').update(installationId).digest('hex');
      const listed = await bucket.list({ prefix: `slots/${hash}/` });
      return listed.objects.map((o) => o.key);
    },
    async stop() {
      await mf?.dispose();
      mf = undefined;
    },
    restart: start,
    async dispose() {
      await mf?.dispose();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
