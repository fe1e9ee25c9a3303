// The three reads of a backup's header from its first bytes, on real files (a local folder as the
// destination): the local file's (readHeaderOfFile), a remote copy's (readRemoteHeader) and a restore's
// download checked as soon as its header arrived (downloadToFile with checkHeader). Each keeps its own
// answer to a file that is no backup and to one that ends inside its header; a header longer than one
// read is found across reads; a download passes on every byte it held while it looked.
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readHeaderOfFile } from '../../agent/backup/reader';
import { downloadToFile, readRemoteHeader } from '../../agent/offsite/transfer';
import { LocalFolderProvider } from '../../agent/providers/local';
import {
  type EnvelopeHeader,
  encodeHeader,
  generateFileKey,
  newCore,
  type Stanza,
  tryParseHeader,
  wrapForMasterKey,
} from '../../shared/envelope';
import { tempDirForTest } from '../services/temp-dir';
import { foreignBackup, OTHER_INSTALLATION } from './helpers';

const name = 'gem-backup-2026-03-04-050607.tar.gz';

/** A file of `header` followed by `payloadBytes` random bytes (the readers here look at the header only). */
async function withLongHeader(padding: number, payloadBytes = 100_000): Promise<Buffer> {
  const fileKey = generateFileKey();
  const key = { id: 'mk-0123456789abcdef', key: randomBytes(32) };
  const stanzas = [
    await wrapForMasterKey(fileKey, key),
    { type: 'x-future', pad: 'p'.repeat(padding) } as unknown as Stanza,
  ];
  const header = await encodeHeader(newCore({ installationId: OTHER_INSTALLATION }), stanzas, fileKey);
  return Buffer.concat([header, randomBytes(payloadBytes)]);
}

function headerLength(file: Uint8Array): number {
  return tryParseHeader(file)!.length;
}

/** `file` as `name` in a new local folder, and that folder as a destination. */
async function destinationWith(file: Uint8Array) {
  const folder = await tempDirForTest('gem-header-reads-');
  await writeFile(join(folder, name), file);
  return { folder, path: join(folder, name), provider: new LocalFolderProvider({ folder }) };
}

const notABackup = Buffer.concat([Buffer.from('PK\x03\x04'), randomBytes(70_000)]);

describe("reading a local backup file's header", () => {
  it('reads a header, also one longer than a read', async () => {
    for (const file of [await foreignBackup('2026-03-04T05:06:07.000Z'), await withLongHeader(300_000)]) {
      const { path } = await destinationWith(file);
      const header = await readHeaderOfFile(path);
      expect(Buffer.from(header.bytes).equals(file.subarray(0, headerLength(file)))).toBe(true);
    }
  });

  it('refuses a file that is no backup, and one that ends inside its header', async () => {
    const other = await destinationWith(notABackup);
    await expect(readHeaderOfFile(other.path)).rejects.toMatchObject({
      code: 'not_a_backup',
      message: 'not a GEM backup file: it does not start with the GEM backup signature',
    });
    const file = await withLongHeader(300_000);
    for (const cut of [0, 5, headerLength(file) - 1]) {
      const { path } = await destinationWith(file.subarray(0, cut));
      await expect(readHeaderOfFile(path)).rejects.toMatchObject({
        code: 'corrupt_backup',
        message: 'the backup is damaged: the file ends inside its header',
      });
    }
  });
});

describe("reading a remote copy's header", () => {
  it('reads a header, also one longer than a read', async () => {
    for (const file of [await foreignBackup('2026-03-04T05:06:07.000Z'), await withLongHeader(300_000)]) {
      const { provider } = await destinationWith(file);
      const header = await readRemoteHeader(provider, name);
      expect(Buffer.from(header.bytes).equals(file.subarray(0, headerLength(file)))).toBe(true);
    }
  });

  it('refuses a copy that is no backup, and one that ends inside its header', async () => {
    const other = await destinationWith(notABackup);
    await expect(readRemoteHeader(other.provider, name)).rejects.toMatchObject({
      name: 'EnvelopeError',
      code: 'not_a_backup',
      message: 'it does not start with the GEM backup signature',
    });
    const file = await withLongHeader(300_000);
    for (const cut of [0, 5, headerLength(file) - 1]) {
      const { provider } = await destinationWith(file.subarray(0, cut));
      await expect(readRemoteHeader(provider, name)).rejects.toMatchObject({
        code: 'not_a_backup',
        message: `${name} is not a GEM backup (no readable header)`,
      });
    }
  });
});

describe('a download checked from its header on', () => {
  /** Downloads the destination's copy to a new path, recording the headers the check saw. */
  async function download(file: Uint8Array, check?: (header: EnvelopeHeader) => Promise<void>) {
    const { folder, provider } = await destinationWith(file);
    const seen: EnvelopeHeader[] = [];
    const path = join(folder, 'downloaded');
    const result = await downloadToFile(provider, name, path, {
      checkHeader: async (header) => {
        seen.push(header);
        await check?.(header);
      },
    }).catch((error: unknown) => error);
    return { result, seen, written: await readFile(path).catch(() => undefined) };
  }

  it('checks the header and writes every byte, also after a header longer than a read', async () => {
    for (const file of [await foreignBackup('2026-03-04T05:06:07.000Z'), await withLongHeader(300_000)]) {
      const { result, seen, written } = await download(file);
      expect(result).toBe(file.length);
      expect(seen.map((h) => Buffer.from(h.bytes).equals(file.subarray(0, headerLength(file))))).toEqual([
        true,
      ]);
      expect(written?.equals(file)).toBe(true);
    }
  });

  it('ends the download with what the check throws, before a byte is written', async () => {
    const refused = new Error('refused by the check');
    const { result, seen, written } = await download(await withLongHeader(300_000), async () => {
      throw refused;
    });
    expect(result).toBe(refused);
    expect(seen).toHaveLength(1);
    expect(written ?? Buffer.alloc(0)).toHaveLength(0);
  });

  it('refuses a copy that is no backup at its first bytes, unchecked', async () => {
    const { result, seen, written } = await download(notABackup);
    expect(result).toMatchObject({
      code: 'not_a_backup',
      message: 'not a GEM backup file: it does not start with the GEM backup signature',
    });
    expect(seen).toEqual([]);
    expect(written ?? Buffer.alloc(0)).toHaveLength(0);
  });

  it('passes on a copy that ends inside its header unchecked, every byte of it', async () => {
    const file = await withLongHeader(300_000);
    for (const cut of [0, 5, headerLength(file) - 1]) {
      const { result, seen, written } = await download(file.subarray(0, cut));
      expect(result).toBe(cut);
      expect(seen).toEqual([]);
      expect(written?.equals(file.subarray(0, cut))).toBe(true);
    }
  });
});
