// A tiny worker that opens and seals envelope files inside workerd, bundled by workerd-vectors.test.ts.

import type { JWK } from 'jose';
import {
  EnvelopeError,
  type EnvelopeHeader,
  generateFileKey,
  newCore,
  openStream,
  sealStream,
  unwrapWithMasterKeys,
  unwrapWithX25519,
  wrapForMasterKey,
} from '../../shared/envelope';

interface Keys {
  masterKey?: { id: string; keyHex: string };
  escrowPrivateJwk?: JWK;
}

function fromHex(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (byte) => Number.parseInt(byte, 16));
}

function toHex(bytes: ArrayBuffer): string {
  return [...new Uint8Array(bytes)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function fileKeyResolver(keys: Keys) {
  return async (header: EnvelopeHeader) => {
    if (keys.masterKey) {
      return unwrapWithMasterKeys(header.stanzas, [
        { id: keys.masterKey.id, key: fromHex(keys.masterKey.keyHex) },
      ]);
    }
    return unwrapWithX25519(header.stanzas.find((s) => s.type === 'escrow')!, keys.escrowPrivateJwk!);
  };
}

export default {
  async fetch(request: Request): Promise<Response> {
    const keys = JSON.parse(request.headers.get('x-keys') ?? '{}') as Keys;
    const path = new URL(request.url).pathname;
    try {
      if (path === '/open') {
        const { header, plaintext } = await openStream(request.body!, {
          resolveFileKey: fileKeyResolver(keys),
        });
        const bytes = await new Response(plaintext).arrayBuffer();
        const keyringStanza = header.stanzas.find((s) => s.type === 'escrow-keyring');
        const keyring =
          keyringStanza && keys.escrowPrivateJwk
            ? new TextDecoder().decode(await unwrapWithX25519(keyringStanza, keys.escrowPrivateJwk))
            : null;
        return Response.json({
          length: bytes.byteLength,
          sha256: toHex(await crypto.subtle.digest('SHA-256', bytes)),
          chunkSize: header.core.chunkSize,
          version: header.core.version,
          installationTag: header.core.installationTag,
          installationPrefix: header.core.installationPrefix,
          keyring,
        });
      }
      if (path === '/seal' && keys.masterKey) {
        const fileKey = generateFileKey();
        const masterKey = { id: keys.masterKey.id, key: fromHex(keys.masterKey.keyHex) };
        const core = newCore({ installationId: 'ab'.repeat(16), chunkSize: 1024, meta: { kind: 'dr' } });
        const stanzas = [await wrapForMasterKey(fileKey, masterKey)];
        return new Response(sealStream(request.body!, { core, stanzas, fileKey }));
      }
      return new Response('not found', { status: 404 });
    } catch (error) {
      const code = error instanceof EnvelopeError ? error.code : String(error);
      return Response.json({ error: code }, { status: 422 });
    }
  },
};
