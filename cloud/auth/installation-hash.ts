// The name a slot and its state are stored under: the installation id itself is the recovery secret.
import { toHex } from '../../shared/signing';

/** Hex sha256 of the installation id, so a bucket listing reveals no id. */
export async function installationHash(installationId: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(installationId));
  return toHex(new Uint8Array(digest));
}
