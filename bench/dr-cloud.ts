// The DR Worker for the benchmark: built as `npm run cloud:build` does, under Miniflare, with a slot limit that fits any bench size.
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { buildWorker, startLocalWorker } from '../cloud/local';
import { DR_ENROLLMENT_TOKEN, x25519Pair } from '../test/services/dr-cloud';

export { DR_ENROLLMENT_TOKEN };

/** Starts the Worker on 127.0.0.1 with its R2 and Durable Objects persisted under `workDir`. */
export async function startBenchDrCloud(workDir: string): Promise<{ url: string; dispose(): Promise<void> }> {
  const dir = await mkdtemp(join(workDir, 'dr-cloud-'));
  await buildWorker(join(dir, 'dist'));
  const escrow = await x25519Pair('escrow-bench-1');
  const { mf, url } = await startLocalWorker({
    outDir: join(dir, 'dist'),
    stateDir: dir,
    bindings: {
      ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN,
      ESCROW_PRIVATE_KEYS: JSON.stringify([escrow.privateJwk]),
      MAX_SLOT_BYTES: String(64 * 1024 ** 3),
    },
  });
  return {
    url: `http://127.0.0.1:${url.port}`,
    dispose: async () => {
      await mf.dispose();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
