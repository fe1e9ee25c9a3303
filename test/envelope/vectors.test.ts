// The frozen version-1 and version-2 vectors decrypt, with both ciphers and both recipients, forever.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createOpenTransform, nodeChunkCipher } from '../../agent/keys/envelope-node';
import {
  type EnvelopeHeader,
  installationTag,
  openStream,
  unwrapWithMasterKeys,
  unwrapWithX25519,
  webCryptoChunkCipher,
} from '../../shared/envelope';
import { drainNode, drainWeb, webStreamOf } from './helpers';
import { allVectors, V1_INSTALLATION_ID, vectorsDir, vectorsJson, vectorsV2Json } from './vectors-fixture';

const masterKey = { id: vectorsJson.masterKey.id, key: Buffer.from(vectorsJson.masterKey.keyHex, 'hex') };
const recipients = {
  'master key': (h: EnvelopeHeader) => unwrapWithMasterKeys(h.stanzas, [masterKey]),
  'escrow key': (h: EnvelopeHeader) =>
    unwrapWithX25519(h.stanzas.find((s) => s.type === 'escrow')!, vectorsJson.escrowPrivateJwk),
};

describe.each(allVectors)('frozen vector $file', (vector) => {
  const file = readFileSync(join(vectorsDir, vector.file));
  for (const [recipient, resolveFileKey] of Object.entries(recipients)) {
    it(`decrypts with the ${recipient} through web streams + webcrypto`, async () => {
      const { header, plaintext } = await openStream(webStreamOf(file, 333), {
        resolveFileKey,
        cipher: webCryptoChunkCipher,
      });
      expect(header.core).toMatchObject({
        version: vector.version,
        chunkSize: vector.chunkSize,
        createdAt: vector.version === 1 ? '2026-04-01T12:00:00.000Z' : '2026-11-30T12:00:00.000Z',
        installationTag: installationTag(V1_INSTALLATION_ID),
        installationPrefix: '01234567',
      });
      // Only a version-1 core holds the id; version 2 carries its tag (FORMAT.md "Version 2").
      expect(header.core.installationId).toBe(vector.version === 1 ? V1_INSTALLATION_ID : undefined);
      if (vector.version === 2) {
        expect(vectorsV2Json.installationId).toBe(V1_INSTALLATION_ID);
        expect(file.includes(Buffer.from(V1_INSTALLATION_ID))).toBe(false);
      }
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

it.each(['v1-3chunks.bin', 'v2-3chunks.bin'])(
  'recovers the escrowed keyring from %s, skipping unknown stanza types',
  async (name) => {
    const file = readFileSync(join(vectorsDir, name));
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
  },
);
