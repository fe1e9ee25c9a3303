// File keys and the stanzas that wrap them for each recipient (master key, escrow), plus the HKDF subkeys.

import { CompactEncrypt, compactDecrypt, decodeProtectedHeader, type JWK } from 'jose';
import { buf } from './bytes';
import { EnvelopeError } from './errors';

/** One recipient's wrapped copy of the file key (or, for `escrow-keyring`, of the keyring). */
export interface Stanza {
  type: string;
  kid: string;
  jwe: string;
}

/** An installation's AES-256 master key with its id. */
export interface MasterKey {
  id: string;
  key: Uint8Array;
}

const FILE_KEY_LENGTH = 32;

/** A fresh random 32-byte file key; one per backup file. */
export function generateFileKey(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(FILE_KEY_LENGTH));
}

/** HKDF-SHA256(fileKey, salt, info) to 32 bytes, as FORMAT.md "Keys" defines macKey and payloadKey. */
export async function deriveSubkey(
  fileKey: Uint8Array,
  salt: Uint8Array,
  info: 'gem-backup header' | 'gem-backup payload',
): Promise<Uint8Array> {
  const ikm = await crypto.subtle.importKey('raw', buf(fileKey), 'HKDF', false, ['deriveBits']);
  const bits = await crypto.subtle.deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt: buf(salt), info: new TextEncoder().encode(info) },
    ikm,
    256,
  );
  return new Uint8Array(bits);
}

function checkFileKey(fileKey: Uint8Array): void {
  if (fileKey.length !== FILE_KEY_LENGTH) throw new TypeError(`a file key is ${FILE_KEY_LENGTH} bytes`);
}

/** Wraps the file key to an installation master key: a `master-key` stanza (JWE A256KW + A256GCM). */
export async function wrapForMasterKey(fileKey: Uint8Array, key: MasterKey): Promise<Stanza> {
  checkFileKey(fileKey);
  if (key.key.length !== 32) throw new TypeError('a master key is 32 bytes');
  const jwe = await new CompactEncrypt(fileKey)
    .setProtectedHeader({ alg: 'A256KW', enc: 'A256GCM', kid: key.id })
    .encrypt(key.key);
  return { type: 'master-key', kid: key.id, jwe };
}

/** The key ids of the stanzas a file can be opened with, for messages that tell the user which key is needed. */
export function stanzaKeyIds(stanzas: readonly Stanza[]): string[] {
  return stanzas.filter((s) => s.type === 'master-key' || s.type === 'escrow').map((s) => s.kid);
}

/**
 * Recovers the file key from the first `master-key` stanza whose kid is one of `keys`. Throws
 * `no_key` (naming the file's key ids) when none matches, `header_mac` when a matching stanza
 * does not open (it was tampered with).
 */
export async function unwrapWithMasterKeys(
  stanzas: readonly Stanza[],
  keys: readonly MasterKey[],
): Promise<Uint8Array> {
  for (const stanza of stanzas) {
    if (stanza.type !== 'master-key') continue;
    const key = keys.find((k) => k.id === stanza.kid);
    if (!key) continue;
    const fileKey = await decryptStanza(stanza.jwe, key.key, 'A256KW', stanza.kid);
    checkUnwrappedFileKey(fileKey, stanza.kid);
    return fileKey;
  }
  const keyIds = stanzaKeyIds(stanzas);
  throw new EnvelopeError(
    'no_key',
    `none of our keys opens this backup; it was made with key ${keyIds.join(', ') || '(none)'}`,
    { keyIds },
  );
}

/** Wraps any bytes (a file key, a keyring) to an X25519 public JWK with a kid: ECDH-ES+A256KW + A256GCM. */
export async function wrapForX25519(bytes: Uint8Array, publicJwk: JWK, type: string): Promise<Stanza> {
  if (!publicJwk.kid) throw new TypeError('the recipient JWK needs a kid');
  if (publicJwk.kty !== 'OKP' || publicJwk.crv !== 'X25519')
    throw new TypeError('the recipient is not an X25519 key');
  const { d: _private, ...publicOnly } = publicJwk;
  const jwe = await new CompactEncrypt(bytes)
    .setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: publicJwk.kid })
    .encrypt(publicOnly);
  return { type, kid: publicJwk.kid, jwe };
}

/**
 * Unwraps an X25519 stanza (or bare compact JWE) with the recipient's private JWK. Throws `no_key`
 * when the stanza names another kid, `header_mac` when it does not open.
 */
export async function unwrapWithX25519(stanza: Stanza | string, privateJwk: JWK): Promise<Uint8Array> {
  const jwe = typeof stanza === 'string' ? stanza : stanza.jwe;
  const kid = typeof stanza === 'string' ? undefined : stanza.kid;
  if (kid !== undefined && privateJwk.kid !== undefined && kid !== privateJwk.kid) {
    throw new EnvelopeError('no_key', `the stanza is for key ${kid}, not ${privateJwk.kid}`, {
      keyIds: [kid],
    });
  }
  const bytes = await decryptStanza(jwe, privateJwk, 'ECDH-ES+A256KW', kid);
  if (typeof stanza !== 'string' && stanza.type === 'escrow') checkUnwrappedFileKey(bytes, stanza.kid);
  return bytes;
}

async function decryptStanza(
  jwe: string,
  key: Uint8Array | JWK,
  alg: 'A256KW' | 'ECDH-ES+A256KW',
  kid: string | undefined,
): Promise<Uint8Array> {
  try {
    // The protected header must name the same kid as the stanza, or a stanza could be relabelled.
    if (kid !== undefined && decodeProtectedHeader(jwe).kid !== kid) throw new Error('kid mismatch');
    const { plaintext } = await compactDecrypt(jwe, key, {
      keyManagementAlgorithms: [alg],
      contentEncryptionAlgorithms: ['A256GCM'],
    });
    return plaintext;
  } catch {
    throw new EnvelopeError(
      'header_mac',
      `the stanza for key ${kid ?? '(unnamed)'} does not open: the header was tampered with or the key is wrong`,
    );
  }
}

function checkUnwrappedFileKey(fileKey: Uint8Array, kid: string): void {
  if (fileKey.length !== FILE_KEY_LENGTH) {
    throw new EnvelopeError('bad_header', `the stanza for key ${kid} does not hold a 32-byte file key`);
  }
}
