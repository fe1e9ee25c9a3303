// The frozen vectors' keys and expected plaintext digests, as vectors.json records them.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { JWK } from 'jose';

export const vectorsDir = join(import.meta.dirname, '../../shared/envelope/vectors');

export const vectorsJson = JSON.parse(readFileSync(join(vectorsDir, 'vectors.json'), 'utf8')) as {
  masterKey: { id: string; keyHex: string };
  escrowPrivateJwk: JWK;
  keyring: string;
  vectors: { file: string; chunkSize: number; plaintextLength: number; plaintextSha256: string }[];
};
