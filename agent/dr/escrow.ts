/** The escrow key (pinned by kid) and the escrow header a DR push sends in front of an unchanged payload. */
import type { JWK } from 'jose';
import {
  type EnvelopeHeader,
  rewrapHeader,
  type Stanza,
  unwrapWithMasterKeys,
  wrapForX25519,
} from '../../shared/envelope';
import { AppError } from '../errors';
import type { Keyring } from '../keys/keyring';
import type { Logger } from '../log';

export type EscrowKey = JWK & { kid: string };

/**
 * Chooses the escrow key to wrap to. The first key ever fetched is pinned; later, the cloud's current
 * key is accepted if it is the pinned one (same public value), or a rotation: a new current key
 * published beside the pinned one. Anything else is refused, so a swapped endpoint cannot collect keyrings.
 */
export function chooseEscrowKey(
  published: EscrowKey[],
  pinned: { kid: string; publicJwk: JWK } | undefined,
  log: Logger,
): { key: EscrowKey; changed: boolean } {
  const current = published[0];
  if (!current) throw new AppError('dependency_down', 'the DR cloud publishes no escrow key');
  if (!pinned) return { key: current, changed: true };
  const stillPublished = published.find((k) => k.kid === pinned.kid);
  if (stillPublished && stillPublished.x !== pinned.publicJwk.x) {
    throw new AppError(
      'unprocessable',
      `the DR cloud's escrow key ${pinned.kid} changed its value; refusing to send the keyring to it`,
    );
  }
  if (current.kid === pinned.kid) return { key: current, changed: false };
  if (!stillPublished) {
    throw new AppError(
      'unprocessable',
      `the DR cloud's escrow key is now ${current.kid}, and the pinned key ${pinned.kid} is no longer published ` +
        'beside it; refusing an unannounced key change',
    );
  }
  log.info('the DR escrow key was rotated; pinning the new one', { from: pinned.kid, to: current.kid });
  return { key: current, changed: true };
}

/**
 * New header bytes for a local backup: its stanzas (old escrow stanzas dropped) plus the file key and
 * the keyring wrapped to the escrow key. Same core, so the payload after the old header stays valid.
 */
export async function escrowHeader(
  header: EnvelopeHeader,
  keyring: Keyring,
  escrowKey: EscrowKey,
): Promise<Uint8Array> {
  const fileKey = await unwrapWithMasterKeys(header.stanzas, keyring.masterKeys);
  const keyringBytes = new TextEncoder().encode(JSON.stringify(keyring.toFile()));
  try {
    const kept: Stanza[] = header.stanzas.filter((s) => s.type !== 'escrow' && s.type !== 'escrow-keyring');
    const stanzas = [
      ...kept,
      await wrapForX25519(fileKey, escrowKey, 'escrow'),
      await wrapForX25519(keyringBytes, escrowKey, 'escrow-keyring'),
    ];
    return await rewrapHeader(header, fileKey, stanzas);
  } finally {
    fileKey.fill(0);
    keyringBytes.fill(0);
  }
}
