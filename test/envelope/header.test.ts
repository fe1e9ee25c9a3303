// The header: parsing without keys, the MAC over core and stanzas, stanza unwrapping, rewrapping for escrow.

import { createHash } from 'node:crypto';
import { exportJWK, generateKeyPair } from 'jose';
import { describe, expect, it } from 'vitest';
import {
  EnvelopeError,
  type EnvelopeErrorCode,
  generateFileKey,
  installationTag,
  newCore,
  openStream,
  readHeader,
  rewrapHeader,
  type Stanza,
  sealStream,
  tryParseHeader,
  unwrapWithMasterKeys,
  unwrapWithX25519,
  verifyHeaderMac,
  wrapForMasterKey,
  wrapForX25519,
} from '../../shared/envelope';
import { sha256 } from '../../shared/envelope/installation-tag';
import { drainWeb, flipBit, webStreamOf } from './helpers';

const masterKey = { id: 'mk-a', key: crypto.getRandomValues(new Uint8Array(32)) };
const installationId = 'ef'.repeat(16);

async function sealed(
  plaintext: Uint8Array,
  stanzasFor = (fileKey: Uint8Array) => [wrapForMasterKey(fileKey, masterKey)],
) {
  const fileKey = generateFileKey();
  const core = newCore({ installationId, chunkSize: 1024, meta: { kind: 'dr', label: 'abc' } });
  const stanzas = await Promise.all(stanzasFor(fileKey));
  const file = (await drainWeb(sealStream(webStreamOf(plaintext), { core, stanzas, fileKey }))).bytes;
  const { header, length } = tryParseHeader(file)!;
  return { file, fileKey, header, headerLength: length, payload: file.subarray(length) };
}

/** The header split into its MAC-covered parts, to rebuild it with other stanzas but the old MAC. */
function splitHeader(headerBytes: Uint8Array) {
  const view = new DataView(headerBytes.buffer, headerBytes.byteOffset);
  const coreEnd = 12 + view.getUint32(8);
  return {
    prefix: headerBytes.subarray(0, coreEnd),
    stanzas: JSON.parse(
      Buffer.from(headerBytes.subarray(coreEnd + 4, headerBytes.length - 32)).toString(),
    ) as Stanza[],
    mac: headerBytes.subarray(headerBytes.length - 32),
  };
}

function joinHeader(prefix: Uint8Array, stanzas: Stanza[], mac: Uint8Array): Buffer {
  const json = Buffer.from(JSON.stringify(stanzas));
  const length = Buffer.alloc(4);
  length.writeUInt32BE(json.length);
  return Buffer.concat([prefix, length, json, mac]);
}

async function openError(file: Uint8Array, keys = [masterKey]): Promise<EnvelopeError> {
  try {
    const { plaintext } = await openStream(webStreamOf(file), {
      resolveFileKey: (h) => unwrapWithMasterKeys(h.stanzas, keys),
    });
    const { error } = await drainWeb(plaintext);
    throw error ?? new Error('opened a damaged file');
  } catch (error) {
    expect(error).toBeInstanceOf(EnvelopeError);
    return error as EnvelopeError;
  }
}

function expectCode(code: EnvelopeErrorCode, fn: () => unknown) {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(EnvelopeError);
    expect((error as EnvelopeError).code).toBe(code);
    return;
  }
  throw new Error(`expected ${code}`);
}

describe('parsing a header without keys', () => {
  it('asks for more bytes on every prefix of the header and parses the whole one', async () => {
    const { file, headerLength, header } = await sealed(new Uint8Array(10));
    for (let n = 0; n < headerLength; n++) expect(tryParseHeader(file.subarray(0, n))).toBeNull();
    expect(header.core).toMatchObject({
      version: 2,
      installationTag: installationTag(installationId),
      installationPrefix: 'efefefef',
      chunkSize: 1024,
      meta: { kind: 'dr', label: 'abc' },
    });
    expect(header.stanzas.map((s) => [s.type, s.kid])).toEqual([['master-key', 'mk-a']]);
    expect(Buffer.compare(header.bytes, file.subarray(0, headerLength))).toBe(0);
  });

  it('names what is wrong with bytes that are not a version-1 or -2 header', async () => {
    const { file } = await sealed(new Uint8Array(0));
    expectCode('not_a_backup', () => tryParseHeader(Buffer.from('PK\x03\x04')));
    expectCode('not_a_backup', () => tryParseHeader(flipBit(file, 2)));
    expectCode('unsupported_version', () => tryParseHeader(flipBit(file, 7, 1)));
    expectCode('unsupported_version', () => tryParseHeader(flipBit(file, 6)));
    expectCode('bad_header', () => tryParseHeader(flipBit(file, 9, 7))); // core length over 64 KiB
    expectCode('bad_header', () => tryParseHeader(flipBit(file, 12, 1))); // '{' -> 'y'
    const { prefix, mac } = splitHeader(tryParseHeader(file)!.header.bytes);
    expectCode('bad_header', () => tryParseHeader(joinHeader(prefix, [], mac)));
    expectCode('bad_header', () => tryParseHeader(joinHeader(prefix, [{ type: 'escrow' } as Stanza], mac)));
  });

  it('ignores unknown core fields and keeps unknown stanza types', () => {
    const core = Buffer.from(
      JSON.stringify({ ...newCore({ installationId, version: 1 }), futureField: [1, 2], meta: { a: 'b' } }),
    );
    const stanzas = [{ type: 'x-future', kid: 'k', jwe: 'opaque', extra: 1 }] as unknown as Stanza[];
    const length = Buffer.alloc(4);
    length.writeUInt32BE(core.length);
    const bytes = joinHeader(
      Buffer.concat([Buffer.from('GEMBKP\x00\x01', 'latin1'), length, core]),
      stanzas,
      new Uint8Array(32),
    );
    const { header } = tryParseHeader(bytes)!;
    expect(Object.keys(header.core).sort()).toEqual([
      'chunkSize',
      'createdAt',
      'installationId',
      'installationPrefix',
      'installationTag',
      'meta',
      'salt',
      'version',
    ]);
    expect(header.core).toMatchObject({ version: 1, installationId, installationPrefix: 'efefefef' });
    expect(header.stanzas).toEqual(stanzas);
  });

  it('refuses to make a core with a bad installation id or chunk size', () => {
    expectCode('bad_header', () => newCore({ installationId: 'ABC' }));
    expectCode('bad_header', () => newCore({ installationId, chunkSize: 100 }));
  });

  it('reads from a stream only the pieces that hold the header', async () => {
    const { file, headerLength } = await sealed(new Uint8Array(50_000));
    let pulls = 0;
    const pieceSize = 100;
    const stream = new ReadableStream<Uint8Array>(
      {
        pull(controller) {
          const start = pulls++ * pieceSize;
          if (start >= file.length) controller.close();
          else controller.enqueue(file.slice(start, start + pieceSize));
        },
      },
      { highWaterMark: 0 },
    );
    const { header, rest } = await readHeader(stream);
    expect(pulls).toBe(Math.ceil(headerLength / pieceSize));
    expect(header.core.installationTag).toBe(installationTag(installationId));
    expect(header.core.installationId).toBeUndefined();
    const { bytes } = await drainWeb(rest);
    expect(Buffer.compare(bytes, file.subarray(headerLength))).toBe(0);
  });

  it('reports a stream that ends inside the header as truncated', async () => {
    const { file, headerLength } = await sealed(new Uint8Array(0));
    await expect(readHeader(webStreamOf(file.subarray(0, headerLength - 1)))).rejects.toMatchObject({
      code: 'truncated',
    });
    await expect(readHeader(webStreamOf(new Uint8Array(0)))).rejects.toMatchObject({ code: 'truncated' });
  });
});

describe('the header MAC and the stanzas', () => {
  it('rejects a flipped bit in the core, in a stanza and in the MAC', async () => {
    const { file, headerLength } = await sealed(new Uint8Array(3000));
    const label = file.indexOf(Buffer.from('"label":"abc"')) + 10; // 'b' -> 'c' keeps the JSON valid
    expect((await openError(flipBit(file, label, 0))).code).toBe('header_mac');
    expect((await openError(flipBit(file, headerLength - 1, 5))).code).toBe('header_mac');

    const { prefix, stanzas, mac } = splitHeader(file.subarray(0, headerLength));
    const parts = stanzas[0]!.jwe.split('.');
    parts[1] = (parts[1]![0] === 'A' ? 'B' : 'A') + parts[1]!.slice(1); // one bit of the wrapped key
    const tampered = joinHeader(prefix, [{ ...stanzas[0]!, jwe: parts.join('.') }], mac);
    expect((await openError(Buffer.concat([tampered, file.subarray(headerLength)]))).code).toBe('header_mac');
  });

  it('rejects a stanza swapped in from another backup made with the same master key', async () => {
    const a = await sealed(new Uint8Array(3000));
    const b = await sealed(new Uint8Array(3000));
    const { prefix, mac } = splitHeader(a.header.bytes);
    const swapped = joinHeader(prefix, b.header.stanzas, mac);
    expect((await openError(Buffer.concat([swapped, a.payload]))).code).toBe('header_mac');
  });

  it('rejects a stanza added without the file key', async () => {
    const a = await sealed(new Uint8Array(10));
    const { prefix, stanzas, mac } = splitHeader(a.header.bytes);
    const other = { id: 'mk-evil', key: crypto.getRandomValues(new Uint8Array(32)) };
    const added = joinHeader(prefix, [...stanzas, await wrapForMasterKey(generateFileKey(), other)], mac);
    expect((await openError(Buffer.concat([added, a.payload]), [other])).code).toBe('header_mac');
  });

  it('names the key ids the file was made with when no key fits', async () => {
    const { file } = await sealed(new Uint8Array(10));
    const error = await openError(file, [{ id: 'mk-other', key: masterKey.key }]);
    expect(error.code).toBe('no_key');
    expect(error.keyIds).toEqual(['mk-a']);
    expect(error.message).toContain('mk-a');
  });

  it('rejects the right key id with the wrong key bytes, and a wrong file key', async () => {
    const { file, header } = await sealed(new Uint8Array(10));
    const impostor = { id: 'mk-a', key: crypto.getRandomValues(new Uint8Array(32)) };
    expect((await openError(file, [impostor])).code).toBe('header_mac');
    await expect(verifyHeaderMac(header, generateFileKey())).rejects.toMatchObject({ code: 'header_mac' });
  });
});

describe('rewrapping a header for escrow', () => {
  it('adds an escrow stanza and the unchanged payload opens with the master key and with the escrow key', async () => {
    const plaintext = crypto.getRandomValues(new Uint8Array(5000));
    const { header, fileKey, payload } = await sealed(plaintext);
    const { privateKey, publicKey } = await generateKeyPair('ECDH-ES+A256KW', {
      crv: 'X25519',
      extractable: true,
    });
    const escrowPublic = { ...(await exportJWK(publicKey)), kid: 'escrow-1' };
    const escrowPrivate = { ...(await exportJWK(privateKey)), kid: 'escrow-1' };
    const keyring = new TextEncoder().encode('{"keys":[]}');
    const stanzas = [
      ...header.stanzas,
      await wrapForX25519(fileKey, escrowPublic, 'escrow'),
      await wrapForX25519(keyring, escrowPublic, 'escrow-keyring'),
    ];
    const newHeader = await rewrapHeader(header, fileKey, stanzas);
    const file = Buffer.concat([newHeader, payload]);

    const byMaster = await openStream(webStreamOf(file), {
      resolveFileKey: (h) => unwrapWithMasterKeys(h.stanzas, [masterKey]),
    });
    expect(Buffer.compare((await drainWeb(byMaster.plaintext)).bytes, plaintext)).toBe(0);
    const byEscrow = await openStream(webStreamOf(file), {
      resolveFileKey: (h) => unwrapWithX25519(h.stanzas.find((s) => s.type === 'escrow')!, escrowPrivate),
    });
    expect(Buffer.compare((await drainWeb(byEscrow.plaintext)).bytes, plaintext)).toBe(0);
    const keyringStanza = byEscrow.header.stanzas.find((s) => s.type === 'escrow-keyring')!;
    expect(new TextDecoder().decode(await unwrapWithX25519(keyringStanza.jwe, escrowPrivate))).toBe(
      '{"keys":[]}',
    );
  });

  it('refuses to rewrap with the wrong file key', async () => {
    const { header } = await sealed(new Uint8Array(10));
    await expect(rewrapHeader(header, generateFileKey(), header.stanzas)).rejects.toMatchObject({
      code: 'header_mac',
    });
  });

  it('says no_key when an escrow stanza is for another escrow key', async () => {
    const { privateKey, publicKey } = await generateKeyPair('ECDH-ES+A256KW', {
      crv: 'X25519',
      extractable: true,
    });
    const stanza = await wrapForX25519(
      generateFileKey(),
      { ...(await exportJWK(publicKey)), kid: 'e1' },
      'escrow',
    );
    await expect(
      unwrapWithX25519(stanza, { ...(await exportJWK(privateKey)), kid: 'e2' }),
    ).rejects.toMatchObject({
      code: 'no_key',
    });
  });
});

describe('version 2: the installation by its tag, never its id (FORMAT.md "Version 2")', () => {
  it('computes the tag as SHA-256 of the labelled id, the same as node:crypto', () => {
    for (const id of [installationId, '0123456789abcdef0123456789abcdef', 'ab'.repeat(16)]) {
      expect(installationTag(id)).toBe(
        createHash('sha256').update(`gem-backup installation tag\n${id}`).digest('hex'),
      );
    }
    // The plain-code SHA-256 across the padding boundaries, against node:crypto.
    for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000]) {
      const data = crypto.getRandomValues(new Uint8Array(n));
      expect(Buffer.from(sha256(data)).toString('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    }
  });

  it('writes GEMBKP 0x00 0x02 with the tag and prefix only; a version-1 core still writes as version 1', async () => {
    const { file, header } = await sealed(new Uint8Array(100));
    expect([...file.subarray(0, 8)]).toEqual([...Buffer.from('GEMBKP\x00\x02', 'latin1')]);
    const coreJson = JSON.parse(Buffer.from(file.subarray(12, 12 + file.readUInt32BE(8))).toString());
    expect(Object.keys(coreJson).sort()).toEqual([
      'chunkSize',
      'createdAt',
      'installationPrefix',
      'installationTag',
      'meta',
      'salt',
    ]);
    expect(Buffer.from(file).includes(Buffer.from(installationId))).toBe(false);
    expect(header.core.installationId).toBeUndefined();

    const fileKey = generateFileKey();
    const core = newCore({ installationId, chunkSize: 1024, version: 1 });
    const stanzas = [await wrapForMasterKey(fileKey, masterKey)];
    const v1 = (await drainWeb(sealStream(webStreamOf(new Uint8Array(5)), { core, stanzas, fileKey }))).bytes;
    expect([...v1.subarray(0, 8)]).toEqual([...Buffer.from('GEMBKP\x00\x01', 'latin1')]);
    expect(tryParseHeader(v1)!.header.core).toMatchObject({
      version: 1,
      installationId,
      installationTag: installationTag(installationId),
      installationPrefix: 'efefefef',
    });
  });

  it('refuses a version-2 core without a well-formed tag or prefix, and ignores an id in it', async () => {
    const { file } = await sealed(new Uint8Array(0));
    const { prefix, stanzas, mac } = splitHeader(tryParseHeader(file)!.header.bytes);
    const core = JSON.parse(Buffer.from(prefix.subarray(12)).toString());
    const withCore = (c: object) => {
      const json = Buffer.from(JSON.stringify(c));
      const length = Buffer.alloc(4);
      length.writeUInt32BE(json.length);
      return joinHeader(Buffer.concat([prefix.subarray(0, 8), length, json]), stanzas, mac);
    };
    expectCode('bad_header', () => tryParseHeader(withCore({ ...core, installationTag: 'AB' })));
    expectCode('bad_header', () => tryParseHeader(withCore({ ...core, installationPrefix: undefined })));
    expectCode('bad_header', () =>
      tryParseHeader(withCore({ ...core, installationTag: undefined, installationId })),
    );
    const { header } = tryParseHeader(withCore({ ...core, installationId }))!;
    expect(header.core.installationId).toBeUndefined();
    expect(() =>
      tryParseHeader(Buffer.concat([Buffer.from('GEMBKP\x00\x03', 'latin1'), Buffer.alloc(8)])),
    ).toThrow(/^backup format version 3 is newer than this GEM Backup reads \(1 and 2\): upgrade GEM Backup/);
  });

  it('rewrapping keeps the version: a version-1 file stays version 1, its payload still opens', async () => {
    const fileKey = generateFileKey();
    const core = newCore({ installationId, chunkSize: 1024, version: 1 });
    const stanzas = [await wrapForMasterKey(fileKey, masterKey)];
    const plaintext = crypto.getRandomValues(new Uint8Array(3000));
    const v1 = (await drainWeb(sealStream(webStreamOf(plaintext), { core, stanzas, fileKey }))).bytes;
    const { header, length } = tryParseHeader(v1)!;
    const rewrapped = await rewrapHeader(header, fileKey, [
      ...stanzas,
      { type: 'x-other', kid: 'k', jwe: 'j' },
    ]);
    const file = Buffer.concat([rewrapped, v1.subarray(length)]);
    expect(tryParseHeader(file)!.header.core).toMatchObject({ version: 1, installationId });
    const { plaintext: opened } = await openStream(webStreamOf(file), {
      resolveFileKey: (h) => unwrapWithMasterKeys(h.stanzas, [masterKey]),
    });
    expect(Buffer.compare((await drainWeb(opened)).bytes, plaintext)).toBe(0);
  });
});
