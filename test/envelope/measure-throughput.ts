// Quick throughput measurement of seal + open (not a test): npx tsx test/envelope/measure-throughput.ts [MiB]

import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createOpenTransform, createSealTransform, nodeChunkCipher } from '../../agent/keys/envelope-node';
import {
  type ChunkCipher,
  generateFileKey,
  newCore,
  openStream,
  sealStream,
  unwrapWithMasterKeys,
  webCryptoChunkCipher,
  wrapForMasterKey,
} from '../../shared/envelope';

const mib = Number(process.argv[2] ?? 256);
const total = mib * 1024 * 1024;
const masterKey = { id: 'bench', key: crypto.getRandomValues(new Uint8Array(32)) };
const block = crypto.getRandomValues(new Uint8Array(65536));

async function options(cipher: ChunkCipher) {
  const fileKey = generateFileKey();
  const core = newCore({ installationId: '00'.repeat(16) });
  return { core, stanzas: [await wrapForMasterKey(fileKey, masterKey)], fileKey, cipher };
}
const resolveFileKey = (h: { stanzas: Parameters<typeof unwrapWithMasterKeys>[0] }) =>
  unwrapWithMasterKeys(h.stanzas, [masterKey]);

/** 64 KiB pieces, like fs.createReadStream hands out. */
function* pieces(pieceSize: number) {
  for (let sent = 0; sent < total; sent += pieceSize)
    yield Buffer.from(block.buffer, 0, Math.min(pieceSize, total - sent));
}

function countingSink() {
  let bytes = 0;
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      bytes += chunk.length;
      callback();
    },
  });
  return { sink, bytes: () => bytes };
}

async function nodeStreams(cipher: ChunkCipher) {
  const { sink, bytes } = countingSink();
  await pipeline(
    Readable.from(pieces(65536)),
    createSealTransform(await options(cipher)),
    createOpenTransform({ resolveFileKey, cipher }),
    sink,
  );
  return bytes();
}

async function webStreams(cipher: ChunkCipher) {
  const source = Readable.toWeb(Readable.from(pieces(65536))) as ReadableStream<Uint8Array>;
  const sealed = sealStream(source, await options(cipher));
  const { plaintext } = await openStream(sealed, { resolveFileKey, cipher });
  let bytes = 0;
  for await (const chunk of plaintext as unknown as AsyncIterable<Uint8Array>) bytes += chunk.length;
  return bytes;
}

const runs: [string, () => Promise<number>][] = [
  ['web streams + webcrypto', () => webStreams(webCryptoChunkCipher)],
  ['web streams + node:crypto', () => webStreams(nodeChunkCipher)],
  ['node transforms + webcrypto', () => nodeStreams(webCryptoChunkCipher)],
  ['node transforms + node:crypto', () => nodeStreams(nodeChunkCipher)],
];
for (const [name, run] of runs) {
  const start = performance.now();
  const bytes = await run();
  const seconds = (performance.now() - start) / 1000;
  if (bytes !== total) throw new Error(`${name}: got ${bytes} of ${total} bytes`);
  console.log(
    `${name.padEnd(32)} seal+open ${mib} MiB in ${seconds.toFixed(2)} s = ${(total / 1e6 / seconds).toFixed(0)} MB/s`,
  );
}
