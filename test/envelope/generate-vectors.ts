// One-off generator of the frozen envelope vectors in shared/envelope/vectors (refuses to overwrite them).
// Run: npx tsx test/envelope/generate-vectors.ts

import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exportJWK, generateKeyPair } from 'jose';
import {
  encodeHeader,
  generateFileKey,
  newCore,
  PayloadSealer,
  type Stanza,
  wrapForMasterKey,
  wrapForX25519,
} from '../../shared/envelope';
import { vectorPlaintext } from './helpers';

const dir = join(import.meta.dirname, '../../shared/envelope/vectors');
if (existsSync(join(dir, 'vectors.json')))
  throw new Error('vectors are frozen: delete them by hand to regenerate');

const masterKey = { id: 'mk-vector-1', key: Uint8Array.from({ length: 32 }, (_, i) => i * 7 + 1) };
const { privateKey } = await generateKeyPair('ECDH-ES+A256KW', { crv: 'X25519', extractable: true });
const escrowPrivateJwk = { ...(await exportJWK(privateKey)), kid: 'escrow-vector-1' };
const keyring = JSON.stringify({ version: 1, keys: [{ id: masterKey.id, note: 'vector keyring' }] });

async function writeVector(file: string, plaintextLength: number, chunkSize: number, extra: Stanza[]) {
  const fileKey = generateFileKey();
  const core = newCore({
    installationId: '0123456789abcdef0123456789abcdef',
    createdAt: '2026-04-01T12:00:00.000Z',
    chunkSize,
    meta: { kind: 'manual', label: 'frozen vector', agentVersion: '0.1.0', filename: file },
  });
  const stanzas = [
    await wrapForMasterKey(fileKey, masterKey),
    await wrapForX25519(fileKey, escrowPrivateJwk, 'escrow'),
    ...extra,
  ];
  const sealer = await PayloadSealer.create({ core, stanzas, fileKey });
  const plaintext = vectorPlaintext(plaintextLength);
  const parts = [await encodeHeader(core, stanzas, fileKey), ...(await sealer.push(plaintext))];
  parts.push(...(await sealer.finish()));
  await writeFile(join(dir, `${file}.tmp`), Buffer.concat(parts));
  await rename(join(dir, `${file}.tmp`), join(dir, file));
  return {
    file,
    chunkSize,
    plaintextLength,
    plaintextSha256: createHash('sha256').update(plaintext).digest('hex'),
  };
}

const vectors = [
  await writeVector('v1-empty.bin', 0, 65536, []),
  await writeVector('v1-3chunks.bin', 2500, 1024, [
    await wrapForX25519(new TextEncoder().encode(keyring), escrowPrivateJwk, 'escrow-keyring'),
    { type: 'x-future-recipient', kid: 'someone-else', jwe: 'opaque' },
  ]),
  await writeVector('v1-2full.bin', 2048, 1024, []),
];
const json = {
  note: 'Frozen version-1 envelope vectors: never regenerate. Plaintext byte i is (i * 31 + 7) & 0xff.',
  masterKey: { id: masterKey.id, keyHex: Buffer.from(masterKey.key).toString('hex') },
  escrowPrivateJwk,
  keyring,
  vectors,
};
await writeFile(join(dir, 'vectors.json.tmp'), `${JSON.stringify(json, null, 2)}\n`);
await rename(join(dir, 'vectors.json.tmp'), join(dir, 'vectors.json'));
console.log(vectors);
