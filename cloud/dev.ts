// `npm run cloud:dev`: builds the Worker and serves it locally at http://127.0.0.1:8787 with persistent state.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { writeSmallFileAtomic } from '../agent/system/atomic-file';
import { buildWorker, startLocalWorker } from './local';

const ROOT = new URL('../', import.meta.url).pathname;
const STATE_DIR = join(ROOT, 'data', 'cloud-dev');
const OUT_DIR = join(ROOT, 'dist', 'cloud');
const ESCROW_FILE = join(STATE_DIR, 'escrow-keys.json');

/** Development escrow keys: generated on first start and kept, so pushed backups stay recoverable. */
async function devEscrowKeys(): Promise<JWK[]> {
  try {
    return JSON.parse(await readFile(ESCROW_FILE, 'utf8')) as JWK[];
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const { privateKey } = await generateKeyPair('ECDH-ES', { crv: 'X25519', extractable: true });
  const keys = [
    { ...(await exportJWK(privateKey)), kid: `dev-escrow-${new Date().toISOString().slice(0, 10)}` },
  ];
  await writeSmallFileAtomic(ESCROW_FILE, JSON.stringify(keys, null, 2), 0o600);
  return keys;
}

async function main(): Promise<void> {
  await buildWorker(OUT_DIR);
  const enrollmentToken = process.env.GEM_DR_ENROLLMENT_TOKEN || 'dev-enrollment-token';
  const escrowKeys = await devEscrowKeys();
  const port = Number(process.env.GEM_DR_DEV_PORT ?? 8787);
  const { mf, url } = await startLocalWorker({
    outDir: OUT_DIR,
    stateDir: STATE_DIR,
    port,
    bindings: {
      ENROLLMENT_TOKEN: enrollmentToken,
      ESCROW_PRIVATE_KEYS: JSON.stringify(escrowKeys),
      MAX_SLOT_BYTES: process.env.MAX_SLOT_BYTES ?? '10000000000',
      // Local testing retries recovery often; production keeps the wrangler.toml default of 5.
      RECOVER_PER_MINUTE: process.env.RECOVER_PER_MINUTE ?? '60',
    },
  });
  const escrowKids = escrowKeys.map((k) => k.kid).join(', ');
  console.log(`gem-dr (local) listening on ${url.toString().replace(/\/$/, '')}`);
  console.log(`  enrollment token: ${enrollmentToken}`);
  console.log(`  escrow key: ${escrowKids} (private part in ${ESCROW_FILE}; public at /v1/escrow-key)`);
  console.log(`  state: ${STATE_DIR}`);
  const stop = async () => {
    await mf.dispose();
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err) => {
  console.error(`cloud:dev failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
