// The frozen version-1 vectors decrypt, with both ciphers and both recipients, forever.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createOpenTransform, nodeChunkCipher } from '../../agent/keys/envelope-node';
import {
  type EnvelopeHeader,
  openStream,
  unwrapWithMasterKeys,
  unwrapWithX25519,
  webCryptoChunkCipher,
} from '../../shared/envelope';
import { drainNode, drainWeb, webStreamOf } from './helpers';
import { vectorsDir, vectorsJson } from './vectors-fixture';

const masterKey = { id: vectorsJson.masterKey.id, key: Buffer.from(vectorsJson.masterKey.keyHex, 'hex') };
const recipients = {
  'master key': (h: EnvelopeHeader) => unwrapWithMasterKeys(h.stanzas, [masterKey]),
  'escrow key': (h: EnvelopeHeader) =>
    unwrapWithX25519(h.stanzas.find((s) => s.type === 'escrow')!, vectorsJson.escrowPrivateJwk),
};

describe.each(vectorsJson.vectors)('frozen vector $file', (vector) => {
  const file = readFileSync(join(vectorsDir, vector.file));
  for (const [recipient, resolveFileKey] of Object.entries(recipients)) {
    it(`decrypts with the ${recipient} through web streams + webcrypto`, async () => {
      const { header, plaintext } = await openStream(webStreamOf(file, 333), {
        resolveFileKey,
        cipher: webCryptoChunkCipher,
      });
      expect(header.core).toMatchObject({
        chunkSize: vector.chunkSize,
        createdAt: '2026-04-01T12:00:00.000Z',
      });
      const { bytes, error } = await drainWeb(plaintext);
      expect(error).toBeUndefined();
      expect(bytes.length).toBe(vector.plaintextLength);
      expect(createHash('sha256').update(bytes).digest('hex')).toBe(vector.plaintextSha256);
    });

    it(`decrypts with the ${recipient} through the node transform + node:crypto`, async () => {
      const transform = createOpenTransform({ resolveFileKey, cipher: nodeChunkCipher });
      const { bytes, error } = await drainNode(file, transform, 333);
      expect(error).toBeUndefined();
      expect(createHash('sha256').update(bytes).digest('hex')).toBe(vector.plaintextSha256);
      expect((await transform.header).core.meta['filename']).toBe(vector.file);
    });
  }
});

it('recovers the escrowed keyring from the vector that carries one, skipping unknown stanza types', async () => {
  const file = readFileSync(join(vectorsDir, 'v1-3chunks.bin'));
  const { header, plaintext } = await openStream(webStreamOf(file), {
    resolveFileKey: recipients['master key'],
  });
  await plaintext.cancel();
  expect(header.stanzas.map((s) => s.type)).toEqual([
    'master-key',
    'escrow',
    'escrow-keyring',
    'x-future-recipient',
  ]);
  const keyring = await unwrapWithX25519(header.stanzas[2]!, vectorsJson.escrowPrivateJwk);
  expect(new TextDecoder().decode(keyring)).toBe(vectorsJson.keyring);
});
