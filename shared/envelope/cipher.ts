// The pluggable AES-256-GCM used for payload chunks, and its WebCrypto implementation (Node and workerd).

import { buf } from './bytes';

export const TAG_LENGTH = 16;

/** AES-256-GCM with a 16-byte tag, bound to one payload key. */
export interface ChunkCrypter {
  /** Returns ciphertext || 16-byte tag. */
  seal(nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array>;
  /** Returns the plaintext, or null when the tag does not check (no plaintext is ever returned then). */
  open(nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Promise<Uint8Array | null>;
  /**
   * Optional: open() of a chunk given as consecutive pieces (ciphertext || tag split anywhere),
   * returning its plaintext as pieces; saves gathering a chunk that spans reads into one copy.
   */
  openParts?(nonce: Uint8Array, sealed: readonly Uint8Array[], aad: Uint8Array): Promise<Uint8Array[] | null>;
  /**
   * Optional: seal() of a chunk given as consecutive pieces, returning ciphertext || tag as pieces;
   * saves gathering the plaintext into one copy and the ciphertext and tag into another.
   */
  sealParts?(nonce: Uint8Array, plaintext: readonly Uint8Array[], aad: Uint8Array): Promise<Uint8Array[]>;
}

/** A source of AES-256-GCM; Node plugs in node:crypto (agent/keys/envelope-node.ts), workerd uses WebCrypto. */
export interface ChunkCipher {
  readonly name: string;
  /** Binds the 32-byte payload key, once per file. */
  withKey(payloadKey: Uint8Array): Promise<ChunkCrypter>;
}

/** AES-256-GCM through globalThis.crypto.subtle: runs in Node and workerd alike. */
export const webCryptoChunkCipher: ChunkCipher = {
  name: 'webcrypto',
  async withKey(payloadKey) {
    const key = await crypto.subtle.importKey('raw', buf(payloadKey), 'AES-GCM', false, [
      'encrypt',
      'decrypt',
    ]);
    return {
      async seal(nonce, plaintext, aad) {
        const params = { name: 'AES-GCM', iv: buf(nonce), additionalData: buf(aad), tagLength: 128 };
        return new Uint8Array(await crypto.subtle.encrypt(params, key, buf(plaintext)));
      },
      async open(nonce, sealed, aad) {
        if (sealed.length < TAG_LENGTH) return null;
        const params = { name: 'AES-GCM', iv: buf(nonce), additionalData: buf(aad), tagLength: 128 };
        try {
          return new Uint8Array(await crypto.subtle.decrypt(params, key, buf(sealed)));
        } catch {
          return null;
        }
      },
    };
  },
};
