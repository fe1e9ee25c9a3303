// POST /v1/recover: a fresh install gets its keyring and the backup's file key re-wrapped to a one-time key.
import { Hono } from 'hono';
import type { JWK } from 'jose';
import {
  RECOVER_FILE_KEY_HEADER,
  RECOVER_KEYRING_HEADER,
  RecoverRequest,
  SLOT_HEADERS,
} from '../../shared/api/cloud';
import {
  type EnvelopeHeader,
  readHeader,
  unwrapWithX25519,
  verifyHeaderMac,
  wrapForX25519,
} from '../../shared/envelope';
import { rateLimitKey } from '../auth/client-address';
import { installationHash } from '../auth/installation-hash';
import type { CloudVariables } from '../auth/signed';
import { CloudError } from '../errors';
import { parseJsonBody } from './json-body';
import { slotPrefix } from './slot-commit';
import { readSlotObject } from './slot-read';

/**
 * Answer: 200 with the stored backup file, unchanged, as the body (application/octet-stream), and
 * two compact JWEs (ECDH-ES+A256KW/A256GCM to `recipient`) in the headers `X-Gem-File-Key` (the
 * backup's 32-byte file key) and `X-Gem-Keyring` (the installation's keyring JSON). An unknown
 * installation id and an id without a backup both answer the same 404 after the same lookups.
 * Rate-limited per client address, an IPv6 one by its /64 (429).
 */
export const recoverRoutes = new Hono<{ Variables: CloudVariables }>().post('/v1/recover', async (c) => {
  const deps = c.get('deps');
  const address = rateLimitKey(deps.clientAddress(c));
  if (!(await deps.takeRecoveryAttempt(address))) {
    throw new CloudError(429, 'rate_limited', 'too many recovery attempts; wait a minute');
  }
  const body = await parseJsonBody(c.req.raw, RecoverRequest);
  await checkRecipient(body.recipient as JWK);
  if (deps.config.escrowPrivateKeys.length === 0) {
    throw new CloudError(503, 'no_escrow_key', 'no escrow key is configured');
  }
  const hash = await installationHash(body.installationId);
  const state = deps.installation(hash);
  const current = await state.slot();
  // The same storage read whether or not there is a slot, so both misses look alike. A push
  // replacing the backup between the two reads is followed to the new one (readSlotObject).
  const stored = current
    ? await readSlotObject(deps, state, current)
    : await deps.store.get(`${slotPrefix(hash)}none`).then(async (none) => {
        await none?.body.cancel();
        return null;
      });
  if (!stored) throw new CloudError(404, 'no_backup', 'no recoverable backup for this installation id');
  const { slot } = stored;
  const { header, rest } = await readHeader(stored.body).catch(() => {
    throw new CloudError(422, 'not_recoverable', 'the stored backup has no readable header');
  });
  let wrapped: { fileKey: string; keyring: string };
  try {
    wrapped = await rewrapForRecipient(header, deps.config.escrowPrivateKeys, body.recipient as JWK);
  } catch (err) {
    await rest.cancel();
    throw err;
  }
  return new Response(prepend(header.bytes, rest), {
    status: 200,
    headers: {
      'content-type': 'application/octet-stream',
      [RECOVER_FILE_KEY_HEADER]: wrapped.fileKey,
      [RECOVER_KEYRING_HEADER]: wrapped.keyring,
      [SLOT_HEADERS.createdAt]: slot.createdAt,
      [SLOT_HEADERS.size]: String(slot.size),
      [SLOT_HEADERS.sha256]: slot.sha256,
    },
  });
});

const MAX_KID_LENGTH = 128;

/**
 * 422 unless `recipient` is a usable X25519 public key: a point of small order gives an all-zero
 * shared secret (WebCrypto refuses it, or worse, does not), and a huge kid would be echoed into
 * both response headers. Checked before any lookup, so it says nothing about the installation id.
 */
async function checkRecipient(recipient: JWK): Promise<void> {
  const refuse = (why: string) => new CloudError(422, 'bad_recipient', `the recipient key ${why}`);
  if (recipient.kid !== undefined && recipient.kid.length > MAX_KID_LENGTH) {
    throw refuse(`kid is over ${MAX_KID_LENGTH} characters`);
  }
  let secret: Uint8Array;
  try {
    const pub = await crypto.subtle.importKey(
      'jwk',
      { kty: 'OKP', crv: 'X25519', x: recipient.x },
      { name: 'X25519' },
      false,
      [],
    );
    const probe = (await crypto.subtle.generateKey({ name: 'X25519' }, false, [
      'deriveBits',
    ])) as CryptoKeyPair;
    secret = new Uint8Array(
      await crypto.subtle.deriveBits(
        { name: 'X25519', public: pub } as AlgorithmIdentifier,
        probe.privateKey,
        256,
      ),
    );
  } catch {
    throw refuse('is not a usable X25519 public key');
  }
  if (secret.every((b) => b === 0)) throw refuse('is a point of small order');
}

/** Unwraps the escrow stanzas with the escrow private key they name and wraps them again to `recipient`. */
async function rewrapForRecipient(
  header: EnvelopeHeader,
  escrowKeys: JWK[],
  recipient: JWK,
): Promise<{ fileKey: string; keyring: string }> {
  // A stanza that does not open, or a header that does not verify, is this stored backup's fault (or
  // an escrow key configured under the wrong kid): a 422 that says so, never a 500 to retry in vain.
  const open = async (type: 'escrow' | 'escrow-keyring'): Promise<Uint8Array> => {
    for (const stanza of header.stanzas.filter((s) => s.type === type)) {
      const key = escrowKeys.find((k) => k.kid === stanza.kid);
      if (key) {
        return unwrapWithX25519(stanza, key).catch(() => {
          throw new CloudError(
            422,
            'not_recoverable',
            `the backup's ${type} stanza does not open with the escrow key ${stanza.kid}`,
          );
        });
      }
    }
    throw new CloudError(422, 'not_recoverable', `the backup has no ${type} stanza for a current escrow key`);
  };
  const fileKey = await open('escrow');
  await verifyHeaderMac(header, fileKey).catch(() => {
    fileKey.fill(0);
    throw new CloudError(
      422,
      'not_recoverable',
      "the backup's header does not verify with its escrowed file key: it was damaged or tampered with",
    );
  });
  const keyring = await open('escrow-keyring');
  const to: JWK = { kty: 'OKP', crv: 'X25519', x: recipient.x, kid: recipient.kid ?? 'recovery' };
  const [a, b] = await Promise.all([
    wrapForX25519(fileKey, to, 'recovery-file-key'),
    wrapForX25519(keyring, to, 'recovery-keyring'),
  ]);
  fileKey.fill(0);
  keyring.fill(0);
  return { fileKey: a.jwe, keyring: b.jwe };
}

function prepend(first: Uint8Array, rest: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = rest.getReader();
  let sentFirst = false;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!sentFirst) {
        sentFirst = true;
        controller.enqueue(first);
        return;
      }
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}
