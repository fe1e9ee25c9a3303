// HeaderScanner: a file's first bytes pushed chunk by chunk until they hold the whole header, whatever
// the chunks' sizes (one byte each, or the header and its payload in one), refused on the chunk that
// shows they are no header, and given up on at its limit.
import { describe, expect, it } from 'vitest';
import {
  EnvelopeError,
  encodeHeader,
  generateFileKey,
  HeaderScanner,
  newCore,
  type Stanza,
  tryParseHeader,
  wrapForMasterKey,
} from '../../shared/envelope';
import { flipBit, vectorPlaintext } from './helpers';

const masterKey = { id: 'mk-a', key: crypto.getRandomValues(new Uint8Array(32)) };

/** A header whose stanzas carry `padding` bytes more (an unknown stanza type, kept as it is), then a payload. */
async function fileWithHeader(padding = 0, payloadBytes = 5000) {
  const fileKey = generateFileKey();
  const stanzas = [await wrapForMasterKey(fileKey, masterKey)];
  if (padding > 0) stanzas.push({ type: 'x-future', pad: 'p'.repeat(padding) } as unknown as Stanza);
  const header = await encodeHeader(newCore({ installationId: 'ab'.repeat(16) }), stanzas, fileKey);
  const file = Buffer.concat([header, vectorPlaintext(payloadBytes)]);
  return { file, headerLength: header.length };
}

/** Pushes `bytes` in pieces of `size`; returns the push that found the header (1-based) and what it found. */
function scan(bytes: Uint8Array, size: number, scanner = new HeaderScanner()) {
  let pushes = 0;
  for (let i = 0; i < bytes.length; i += size) {
    pushes++;
    const found = scanner.push(bytes.subarray(i, i + size));
    if (found) return { found, pushes, scanner };
  }
  return { found: null, pushes, scanner };
}

function pushError(bytes: Uint8Array, size: number): { error: EnvelopeError; length: number } {
  const scanner = new HeaderScanner();
  try {
    scan(bytes, size, scanner);
  } catch (error) {
    expect(error).toBeInstanceOf(EnvelopeError);
    return { error: error as EnvelopeError, length: scanner.length };
  }
  throw new Error('no error');
}

describe('scanning for the header', () => {
  it('finds the header on the byte that ends it when bytes come one at a time', async () => {
    const { file, headerLength } = await fileWithHeader();
    const { found, pushes, scanner } = scan(file, 1);
    expect(pushes).toBe(headerLength);
    expect(found?.length).toBe(headerLength);
    expect(Buffer.compare(found!.bytes, file.subarray(0, headerLength))).toBe(0);
    const whole = tryParseHeader(file)!.header;
    expect(found?.header.core).toEqual(whole.core);
    expect(found?.header.stanzas).toEqual(whole.stanzas);
    expect(Buffer.compare(found!.header.bytes, whole.bytes)).toBe(0);
    expect(scanner.full).toBe(false);
  });

  it('finds a header of over 1 MiB (near the most the format allows) pushed one byte at a time', async () => {
    const { file, headerLength } = await fileWithHeader(1_048_200);
    expect(headerLength).toBeGreaterThan(1024 * 1024);
    const { found, pushes } = scan(file, 1);
    expect(pushes).toBe(headerLength);
    expect(found?.header.stanzas).toEqual(tryParseHeader(file)!.header.stanzas);
  });

  it('gives the header and every byte after it from a chunk that holds both', async () => {
    const { file, headerLength } = await fileWithHeader(0, 70_000);
    const { found, pushes } = scan(file, file.length);
    expect(pushes).toBe(1);
    expect(found?.length).toBe(headerLength);
    expect(Buffer.compare(found!.bytes, file)).toBe(0);
  });

  it('gives every byte pushed, past the header too, whatever the chunk sizes', async () => {
    const { file, headerLength } = await fileWithHeader(3000);
    for (const size of [7, 100, 4096]) {
      const { found, pushes } = scan(file, size);
      expect(pushes).toBe(Math.ceil(headerLength / size));
      expect(found?.length).toBe(headerLength);
      expect(Buffer.compare(found!.bytes, file.subarray(0, pushes * size))).toBe(0);
    }
  });

  it('refuses bytes that are no backup on the chunk that shows it', async () => {
    const { file } = await fileWithHeader();
    const notABackup = pushError(Buffer.from('PK\x03\x04 a zip file'), 1);
    expect(notABackup.error).toMatchObject({
      code: 'not_a_backup',
      message: 'it does not start with the GEM backup signature',
    });
    expect(notABackup.length).toBe(1);
    // The fourth byte of the signature, already on the fourth push.
    expect(pushError(flipBit(file, 3), 1)).toMatchObject({ error: { code: 'not_a_backup' }, length: 4 });
    expect(pushError(flipBit(file, 7, 1), 1)).toMatchObject({
      error: { code: 'unsupported_version' },
      length: 12,
    });
    expect(pushError(flipBit(file, 9, 7), 1)).toMatchObject({
      error: { code: 'bad_header', message: 'bad core length' },
      length: 12,
    });
    expect(pushError(flipBit(file, 12, 1), 1000)).toMatchObject({
      error: { code: 'bad_header', message: 'the header core is not UTF-8 JSON' },
    });
  });

  it('holds bytes that end inside the header, asking for more', async () => {
    const { file, headerLength } = await fileWithHeader(100_000);
    for (const size of [1, 65536]) {
      const { found, scanner } = scan(file.subarray(0, headerLength - 1), size);
      expect(found).toBeNull();
      expect(scanner.full).toBe(false);
      expect(scanner.length).toBe(headerLength - 1);
      expect(Buffer.compare(scanner.held(), file.subarray(0, headerLength - 1))).toBe(0);
    }
    expect(new HeaderScanner().held()).toHaveLength(0);
  });

  it('is full once its limit is held without a whole header, and holds them all', async () => {
    const { file, headerLength } = await fileWithHeader(10_000);
    const scanner = new HeaderScanner(4000);
    const { found } = scan(file.subarray(0, 4000), 100, scanner);
    expect(found).toBeNull();
    expect(scanner.full).toBe(true);
    expect(Buffer.compare(scanner.held(), file.subarray(0, 4000))).toBe(0);
    expect(new HeaderScanner().limit).toBe(2 * 1024 * 1024); // as each reader held before
    // Short of the limit it is not full; a limit above the header lets it be found.
    expect(scan(file.subarray(0, 3999), 100, new HeaderScanner(4000)).scanner.full).toBe(false);
    expect(scan(file, 100, new HeaderScanner(headerLength)).found?.length).toBe(headerLength);
  });
});
