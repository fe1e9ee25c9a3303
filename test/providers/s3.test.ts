// The S3 provider against a real S3-compatible server (s3rver) started for this file.
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probeName } from '../../agent/offsite/connection';
import { type S3Options, S3Provider } from '../../agent/providers/s3';
import { runStorageProviderSuite } from '../../shared/storage/conformance';
import { isStorageError, type StorageErrorCode } from '../../shared/storage/index';
import { freePort } from '../services/ports';
import { type S3Service, startS3 } from '../services/s3';

const MIB = 1024 * 1024;
let s3: S3Service;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(async () => {
  await s3?.stop();
});

function options(overrides: Partial<S3Options> = {}): S3Options {
  return {
    endpoint: s3.endpoint,
    region: s3.region,
    bucket: s3.bucket,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    forcePathStyle: true,
    partSize: 5 * MIB,
    ...overrides,
  };
}

function rawClient(): S3Client {
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
}

async function rawKeys(prefix: string): Promise<string[]> {
  const client = rawClient();
  try {
    const page = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }));
    return (page.Contents ?? []).map((object) => object.Key!.slice(prefix.length));
  } finally {
    client.destroy();
  }
}

async function failure(promise: Promise<unknown>): Promise<{ code: StorageErrorCode; permanent: boolean }> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  if (!isStorageError(error)) throw new Error(`expected a StorageError, got ${String(error)}`);
  return { code: error.code, permanent: error.permanent };
}

let prefixes = 0;
runStorageProviderSuite('s3 (s3rver, 5 MiB parts)', async () => {
  prefixes += 1;
  const prefix = `suite-${prefixes}/`;
  return {
    provider: new S3Provider(options({ prefix })),
    cleanup: async () => {},
    rawNames: () => rawKeys(prefix),
  };
});

describe('s3 provider', () => {
  const name = 'gem-backup-2026-05-06-070809.tar.gz';
  const source = { size: 3, open: () => new Blob(['abc']).stream() };

  it("sweeps Test Connection's leftover probe object as ours, by the same age rule", async () => {
    const prefix = 'probe-sweep/';
    const provider = new S3Provider(options({ prefix }));
    const probe = probeName();
    const lookAlike = 'gem-connection-test-notes.probe';
    await provider.put(name, source);
    await provider.put(probe, source);
    await provider.put(lookAlike, source);
    // Just written, so younger than ten minutes: kept.
    expect((await provider.sweepTemp({ olderThanMs: 10 * 60_000 })).removed).toEqual([]);
    expect((await provider.sweepTemp()).removed).toEqual([probe]);
    expect((await rawKeys(prefix)).sort()).toEqual([name, lookAlike].sort());
  });

  it('stores the declared sha256 in the object metadata and returns it from stat and list', async () => {
    const provider = new S3Provider(options({ prefix: 'meta' }));
    const sha256 = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';
    await provider.put(name, { ...source, sha256 });
    expect((await provider.stat(name)).sha256).toBe(sha256);
    expect((await provider.list()).find((entry) => entry.name === name)?.sha256).toBe(sha256);
  });

  it('refuses a multipart upload whose sha256 is wrong before completing it, leaving no object', async () => {
    const provider = new S3Provider(options({ prefix: 'multipart-integrity/' }));
    const size = 12 * MIB;
    const big = {
      size,
      sha256: '0'.repeat(64),
      open: () => new Blob([new Uint8Array(size).fill(7)]).stream(),
    };
    expect(await failure(provider.put(name, big))).toEqual({ code: 'integrity', permanent: true });
    expect(await rawKeys('multipart-integrity/')).toEqual([]);
  });

  it("reports an unknown access key as permanent 'auth_failed'", async () => {
    const result = await failure(new S3Provider(options({ accessKeyId: 'NOT-A-KEY' })).list());
    expect(result).toEqual({ code: 'auth_failed', permanent: true });
  });

  it("reports a bucket that does not exist as 'bucket_missing'", async () => {
    const provider = new S3Provider(options({ bucket: 'no-such-bucket' }));
    expect(await failure(provider.list())).toEqual({ code: 'bucket_missing', permanent: true });
    expect((await failure(provider.put(name, source))).code).toBe('bucket_missing');
  });

  it("reports a closed port as retryable 'unreachable'", async () => {
    const provider = new S3Provider(options({ endpoint: `http://127.0.0.1:${await freePort()}` }));
    expect(await failure(provider.list())).toEqual({ code: 'unreachable', permanent: false });
  });
});
