// What the cloud app needs from its platform: object storage, per-installation state, rate limits, config.
import type { Context } from 'hono';
import type { JWK } from 'jose';
import type { InstallationStateApi } from './state/ledger';
import type { SlotStore } from './store/slot-store';

/** Settings of one deployment. */
export interface CloudConfig {
  /** largest backup a slot accepts, checked before any data is read */
  maxSlotBytes: number;
  /** the bearer token enrollment requests must present */
  enrollmentToken: string;
  /** X25519 private JWKs with kid, current first; they never leave the server */
  escrowPrivateKeys: JWK[];
  /** recovery attempts per client address per minute */
  recoverPerMinute: number;
}

/** The platform under one request: R2 + Durable Objects in the Worker, S3 + a local ledger on Node. */
export interface CloudDeps {
  store: SlotStore;
  /** the state of the installation whose id hashes to `installationHash` */
  installation(installationHash: string): InstallationStateApi;
  /** the client's address, as the platform knows it (never a header the client could forge) */
  clientAddress(c: Context): string;
  /** counts one recovery attempt from `address`; false when over the limit */
  takeRecoveryAttempt(address: string): Promise<boolean>;
  config: CloudConfig;
}

const DEFAULT_MAX_SLOT_BYTES = 10_000_000_000;
const DEFAULT_RECOVER_PER_MINUTE = 5;

/** Reads the configuration from string variables (Worker vars/secrets or process.env). */
export function parseCloudConfig(vars: {
  MAX_SLOT_BYTES?: string | undefined;
  ENROLLMENT_TOKEN?: string | undefined;
  ESCROW_PRIVATE_KEYS?: string | undefined;
  RECOVER_PER_MINUTE?: string | undefined;
}): CloudConfig {
  const maxSlotBytes = Number(vars.MAX_SLOT_BYTES ?? DEFAULT_MAX_SLOT_BYTES);
  const recoverPerMinute = Number(vars.RECOVER_PER_MINUTE ?? DEFAULT_RECOVER_PER_MINUTE);
  let escrowPrivateKeys: JWK[] = [];
  try {
    const parsed = JSON.parse(vars.ESCROW_PRIVATE_KEYS ?? '[]') as unknown;
    if (Array.isArray(parsed)) escrowPrivateKeys = parsed as JWK[];
  } catch {
    // A broken secret leaves no escrow key: escrow-key and recovery answer 503 rather than crash.
  }
  return {
    maxSlotBytes:
      Number.isSafeInteger(maxSlotBytes) && maxSlotBytes > 0 ? maxSlotBytes : DEFAULT_MAX_SLOT_BYTES,
    enrollmentToken: vars.ENROLLMENT_TOKEN ?? '',
    escrowPrivateKeys: escrowPrivateKeys.filter(
      (k) =>
        k && k.kty === 'OKP' && k.crv === 'X25519' && typeof k.d === 'string' && typeof k.kid === 'string',
    ),
    recoverPerMinute:
      Number.isSafeInteger(recoverPerMinute) && recoverPerMinute > 0
        ? recoverPerMinute
        : DEFAULT_RECOVER_PER_MINUTE,
  };
}
