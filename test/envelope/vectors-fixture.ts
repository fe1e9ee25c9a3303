// The frozen vectors' keys and expected plaintext digests, as vectors.json (version 1) and
// vectors-v2.json (version 2, same keys) record them.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { JWK } from 'jose';

export const vectorsDir = join(import.meta.dirname, '../../shared/envelope/vectors');

export const vectorsJson = JSON.parse(readFileSync(join(vectorsDir, 'vectors.json'), 'utf8')) as {
  masterKey: { id: string; keyHex: string };
  escrowPrivateJwk: JWK;
  keyring: string;
  vectors: Vector[];
};

interface Vector {
  file: string;
  chunkSize: number;
  plaintextLength: number;
  plaintextSha256: string;
}

export const vectorsV2Json = JSON.parse(readFileSync(join(vectorsDir, 'vectors-v2.json'), 'utf8')) as {
  installationId: string;
  installationTag: string;
  installationPrefix: string;
  vectors: Vector[];
};

/** The v1 vectors' installation id (in their cores in clear). */
export const V1_INSTALLATION_ID = '0123456789abcdef0123456789abcdef';

/** Every frozen vector, both versions, with the installation its core names. */
export const allVectors = [
  ...vectorsJson.vectors.map((v) => ({ ...v, version: 1 as const })),
  ...vectorsV2Json.vectors.map((v) => ({ ...v, version: 2 as const })),
];
