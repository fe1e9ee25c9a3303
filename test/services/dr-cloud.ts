/** The DR Worker for agent tests: built once per run, run under Miniflare on 127.0.0.1, restartable on the same port and state. */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import type { Miniflare } from 'miniflare';
import { buildWorker, startLocalWorker } from '../../cloud/local';
import { buildOnce } from './run-builds';

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

/**
 * Starts the Worker, built as `npm run cloud:build` does (once per run: ./run-builds.ts), with a fresh
 * escrow key and its own state.
 */
export async function startDrCloud(): Promise<DrCloud> {
  const bundle = await buildOnce('dr-worker', buildWorker, tmpdir());
  const dir = await mkdtemp(join(tmpdir(), 'gem-dr-cloud-'));
  const escrow = await x25519Pair('escrow-test-1');
  let port = 0;
  let mf: Miniflare | undefined;
  const start = async () => {
    const started = await startLocalWorker({
      outDir: bundle.dir,
      stateDir: dir,
      port,
      bindings: {
        ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN,
        ESCROW_PRIVATE_KEYS: JSON.stringify([escrow.privateJwk]),
        MAX_SLOT_BYTES: '200000000',
      },
    });
    mf = started.mf;
    const url = started.url;
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
      await bundle.remove();
    },
  };
}
