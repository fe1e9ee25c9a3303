// The Worker's bindings, as wrangler.toml and the secrets declare them.
import type { InstallationState } from './state/installation-state';
import type { RecoveryRateLimiter } from './state/rate-limiter';

/** Bindings of the gem-dr Worker. */
export interface WorkerEnv {
  SLOTS: R2Bucket;
  INSTALLATIONS: DurableObjectNamespace<InstallationState>;
  RECOVERY_LIMITER: DurableObjectNamespace<RecoveryRateLimiter>;
  /** secret: what enrollment requests must present as a bearer token */
  ENROLLMENT_TOKEN: string;
  /** secret: JSON array of X25519 private JWKs with kid, current first */
  ESCROW_PRIVATE_KEYS: string;
  /** bytes; default 10 GB */
  MAX_SLOT_BYTES?: string;
  /** recovery attempts per client address per minute; default 5 */
  RECOVER_PER_MINUTE?: string;
  /** seconds before an idle multipart upload is aborted; default 86400 */
  UPLOAD_IDLE_SECONDS?: string;
}
