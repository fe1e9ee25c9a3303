/** The conformance suite every StorageProvider runs against a real server (restic-style); tests only. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupSource, StorageErrorCode, StorageProvider } from './index';
import { isStorageError } from './index';
import { isBackupName } from './names';

interface ProviderUnderTest {
  provider: StorageProvider;
  /** Stops using the destination and removes what the test put there. */
  cleanup: () => Promise<void>;
  /** Every name really present at the destination, temp files included, to prove nothing is left over. */
  rawNames?: () => Promise<string[]>;
}

interface SuiteOptions {
  /** Size of the large-object test in bytes (default a little over 50 MiB). */
  largeSize?: number;
}

const CHUNK = 1 << 20;
const encoder = new TextEncoder();
let counter = 0;

/** A fresh backup-pattern name, unique within this test process. */
function backupName(): string {
  counter += 1;
  return `gem-backup-2026-01-${String((counter % 28) + 1).padStart(2, '0')}-${String(counter).padStart(6, '0')}.tar.gz`;
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', data as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

/** A re-openable source over bytes in memory, delivered in small chunks like a real file. */
function bytesSource(data: Uint8Array, sha256?: string): BackupSource {
  return {
    size: data.length,
    sha256,
    open: () => {
      let offset = 0;
      return new ReadableStream<Uint8Array>({
        pull(controller) {
          if (offset >= data.length) {
            controller.close();
            return;
          }
          controller.enqueue(data.slice(offset, offset + 64 * 1024));
          offset += 64 * 1024;
        },
      });
    },
  };
}

/** Deterministic pseudo-random bytes of chunk `index`, so a large object is checked without keeping it. */
function generatedChunk(seed: number, index: number, length: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(length / 4));
  let x = (seed * 2654435761 + index * 40503 + 1) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return new Uint8Array(words.buffer, 0, length);
}

function generatedSource(size: number, seed: number, failAt?: number): BackupSource {
  return {
    size,
    open: () => {
      let index = 0;
      return new ReadableStream<Uint8Array>({
        pull(controller) {
          const offset = index * CHUNK;
          if (failAt !== undefined && offset >= failAt) {
            controller.error(new Error('the source disk went away'));
            return;
          }
          if (offset >= size) {
            controller.close();
            return;
          }
          controller.enqueue(generatedChunk(seed, index, Math.min(CHUNK, size - offset)));
          index += 1;
        },
      });
    },
  };
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const part of stream as unknown as AsyncIterable<Uint8Array>) parts.push(part);
  const result = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    result.set(part, offset);
    offset += part.length;
  }
  return result;
}

/** Whether two byte arrays hold the same bytes (a plain loop: a callback per byte costs ~0.5 s per 50 MiB). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let k = 0; k < a.length; k++) if (a[k] !== b[k]) return false;
  return true;
}

/** Compares a stream with generatedSource(size, seed) chunk by chunk; returns the byte count read. */
async function expectGenerated(
  stream: ReadableStream<Uint8Array>,
  size: number,
  seed: number,
): Promise<number> {
  let offset = 0;
  let chunkIndex = -1;
  let expected: Uint8Array = new Uint8Array(0);
  for await (const part of stream as unknown as AsyncIterable<Uint8Array>) {
    for (let i = 0; i < part.length; ) {
      const index = Math.floor(offset / CHUNK);
      if (index !== chunkIndex) {
        chunkIndex = index;
        expected = generatedChunk(seed, index, Math.min(CHUNK, Math.max(0, size - index * CHUNK)));
      }
      const start = offset - index * CHUNK;
      const take = Math.min(part.length - i, CHUNK - start);
      const got = part.subarray(i, i + take);
      const want = expected.subarray(start, start + take);
      if (!sameBytes(got, want)) {
        throw new Error(`content differs near byte ${offset}`);
      }
      i += take;
      offset += take;
    }
  }
  return offset;
}

async function expectCode(promise: Promise<unknown>, code: StorageErrorCode): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error, `expected a StorageError '${code}'`).toBeDefined();
  if (!isStorageError(error, code)) throw error;
}

/** Registers the conformance tests for one provider; `makeProvider` gives it a fresh, empty destination. */
export function runStorageProviderSuite(
  name: string,
  makeProvider: () => Promise<ProviderUnderTest>,
  options: SuiteOptions = {},
): void {
  describe(`${name} storage provider (conformance)`, () => {
    let subject: ProviderUnderTest;
    let provider: StorageProvider;
    const largeSize = options.largeSize ?? 50 * CHUNK + 12_345;

    beforeAll(async () => {
      subject = await makeProvider();
      provider = subject.provider;
    });
    afterAll(async () => {
      await subject?.provider.close?.();
      await subject?.cleanup();
    });

    async function expectNoTempLeft(): Promise<void> {
      for (const object of await provider.list()) expect(isBackupName(object.name)).toBe(true);
      if (subject.rawNames) {
        for (const raw of await subject.rawNames())
          expect(raw.startsWith('.tmp-'), `leftover ${raw}`).toBe(false);
      }
    }

    it('stores, reads, stats, lists and deletes a backup', async () => {
      const object = backupName();
      const data = encoder.encode('a small backup\n'.repeat(1000));
      const sha256 = await sha256Hex(data);
      const stored = await provider.put(object, bytesSource(data, sha256));
      expect(stored.name).toBe(object);
      expect(stored.size).toBe(data.length);
      if (stored.sha256 !== undefined) expect(stored.sha256).toBe(sha256);

      expect(await readAll(await provider.get(object))).toEqual(data);
      const info = await provider.stat(object);
      expect(info.size).toBe(data.length);
      if (info.sha256 !== undefined) expect(info.sha256).toBe(sha256);
      expect((await provider.list()).find((entry) => entry.name === object)?.size).toBe(data.length);

      await provider.delete(object);
      await expectCode(provider.stat(object), 'not_found');
      expect((await provider.list()).map((entry) => entry.name)).not.toContain(object);
    });

    it('replaces an existing backup on a second put', async () => {
      const object = backupName();
      await provider.put(object, bytesSource(encoder.encode('first version')));
      const second = encoder.encode('the second, longer version');
      await provider.put(object, bytesSource(second, await sha256Hex(second)));
      expect(await readAll(await provider.get(object))).toEqual(second);
      expect((await provider.stat(object)).size).toBe(second.length);
      expect((await provider.list()).filter((entry) => entry.name === object)).toHaveLength(1);
    });

    it(`streams a large backup (${Math.round(largeSize / CHUNK)} MiB) both ways`, async () => {
      const object = backupName();
      let progress = 0;
      const stored = await provider.put(object, generatedSource(largeSize, 7), {
        onProgress: (bytes) => {
          progress = bytes;
        },
      });
      expect(stored.size).toBe(largeSize);
      expect(progress).toBe(largeSize);
      expect((await provider.stat(object)).size).toBe(largeSize);
      expect(await expectGenerated(await provider.get(object), largeSize, 7)).toBe(largeSize);
      await provider.delete(object);
    });

    it('keeps the previous backup and leaves no temp object when the source fails half way', async () => {
      const object = backupName();
      const first = encoder.encode('the good copy');
      await provider.put(object, bytesSource(first));
      const failed = await provider.put(object, generatedSource(6 * CHUNK, 3, 3 * CHUNK)).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(isStorageError(failed)).toBe(true);
      expect(await readAll(await provider.get(object))).toEqual(first);

      const fresh = backupName();
      await expect(provider.put(fresh, generatedSource(6 * CHUNK, 4, 2 * CHUNK))).rejects.toThrow();
      await expectCode(provider.stat(fresh), 'not_found');
      await expectNoTempLeft();
    });

    it("refuses a source whose sha256 is not the declared one with 'integrity' and stores nothing", async () => {
      const object = backupName();
      const data = encoder.encode('bytes that do not match their declared hash');
      await expectCode(provider.put(object, bytesSource(data, '0'.repeat(64))), 'integrity');
      await expectCode(provider.stat(object), 'not_found');

      const kept = encoder.encode('kept');
      await provider.put(object, bytesSource(kept));
      await expectCode(provider.put(object, bytesSource(data, 'f'.repeat(64))), 'integrity');
      expect(await readAll(await provider.get(object))).toEqual(kept);
      await expectNoTempLeft();
    });

    it("refuses a source shorter than its declared size with 'integrity'", async () => {
      const object = backupName();
      const data = encoder.encode('short');
      await expectCode(provider.put(object, { ...bytesSource(data), size: data.length + 10 }), 'integrity');
      await expectCode(provider.stat(object), 'not_found');
    });

    it("reports 'not_found' for get, stat and delete of a missing backup", async () => {
      const missing = backupName();
      await expectCode(provider.get(missing), 'not_found');
      await expectCode(provider.stat(missing), 'not_found');
      await expectCode(provider.delete(missing), 'not_found');
    });

    it("stops with 'aborted' when the signal has fired, storing nothing", async () => {
      const object = backupName();
      const controller = new AbortController();
      controller.abort();
      await expectCode(
        provider.put(object, bytesSource(encoder.encode('never')), { signal: controller.signal }),
        'aborted',
      );
      await expectCode(provider.stat(object), 'not_found');
    });

    it('lists only complete backups, never temp names', async () => {
      const listed = await provider.list();
      expect(listed.length).toBeGreaterThan(0);
      for (const entry of listed) expect(isBackupName(entry.name), entry.name).toBe(true);
      await expectNoTempLeft();
    });
  });
}
