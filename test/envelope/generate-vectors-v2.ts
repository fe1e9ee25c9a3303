// One-off generator of the frozen version-2 envelope vectors in shared/envelope/vectors (refuses to
// overwrite them). They reuse the version-1 vectors' master key and escrow key (vectors.json).
// Run: npx tsx test/envelope/generate-vectors-v2.ts

import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  encodeHeader,
  generateFileKey,
  installationTag,
  newCore,
  PayloadSealer,
  type Stanza,
  wrapForMasterKey,
  wrapForX25519,
} from '../../shared/envelope';
import { vectorPlaintext } from './helpers';
import { vectorsJson } from './vectors-fixture';

const dir = join(import.meta.dirname, '../../shared/envelope/vectors');
if (existsSync(join(dir, 'vectors-v2.json')))
  throw new Error('vectors are frozen: delete them by hand to regenerate');

const installationId = '0123456789abcdef0123456789abcdef';
const masterKey = { id: vectorsJson.masterKey.id, key: Buffer.from(vectorsJson.masterKey.keyHex, 'hex') };
const escrowPrivateJwk = vectorsJson.escrowPrivateJwk;

async function writeVector(file: string, plaintextLength: number, chunkSize: number, extra: Stanza[]) {
  const fileKey = generateFileKey();
  const core = newCore({
    installationId,
    createdAt: '2026-11-30T12:00:00.000Z',
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
  await writeVector('v2-empty.bin', 0, 65536, []),
  await writeVector('v2-3chunks.bin', 2500, 1024, [
    await wrapForX25519(new TextEncoder().encode(vectorsJson.keyring), escrowPrivateJwk, 'escrow-keyring'),
    { type: 'x-future-recipient', kid: 'someone-else', jwe: 'opaque' },
  ]),
  await writeVector('v2-2full.bin', 2048, 1024, []),
];
const json = {
  note: 'Frozen version-2 envelope vectors: never regenerate. Keys as in vectors.json; plaintext byte i is (i * 31 + 7) & 0xff. The files hold the tag and prefix of installationId, never the id.',
  installationId,
  installationTag: installationTag(installationId),
  installationPrefix: installationId.slice(0, 8),
  vectors,
};
await writeFile(join(dir, 'vectors-v2.json.tmp'), `${JSON.stringify(json, null, 2)}\n`);
await rename(join(dir, 'vectors-v2.json.tmp'), join(dir, 'vectors-v2.json'));
console.log(vectors);
