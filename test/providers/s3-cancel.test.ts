// A cancelled S3 upload stops everything it has in flight: a part the server never answers is not left
// waiting (its socket open until the idle timeout, a minute by default, and then retried), and the
// multipart upload is aborted. moto behind a loopback proxy that never answers one part; default timeouts.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSource } from '../../agent/offsite/transfer';
import { S3Provider } from '../../agent/providers/s3';
import { isStorageError } from '../../shared/storage/index';
import {
  incompleteUploads,
  type MotoService,
  motoClient,
  motoProviderOptions,
  startMoto,
} from '../services/moto';
import { partRequest, startAnswerProxy } from '../services/s3-answer-proxy';
import { until, within } from '../services/wait';
import { randomFile } from './random-file';

const MIB = 1024 * 1024;
const BUCKET = 'gem-cancel';
const name = 'gem-backup-2026-05-06-070809.tar.gz';
/** Three parts of 5 MiB (the last one short). */
const SIZE = 11 * MIB + 123;

let moto: MotoService;
let dir: string;
let file: { path: string; bytes: Buffer; sha256: string };

beforeAll(async () => {
  moto = await startMoto();
  const raw = motoClient(moto.endpoint);
  await raw.send(new CreateBucketCommand({ Bucket: BUCKET })).finally(() => raw.destroy());
  dir = await mkdtemp(join(tmpdir(), 'gem-s3-cancel-'));
  file = await randomFile(dir, 'backup', SIZE);
}, 60_000);

afterAll(async () => {
  await moto?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('an S3 upload cancelled while a part gets no answer', () => {
  it.each(['stream', 'file'] as const)(
    "(%s source) ends as 'aborted' at once, closes the part's connection and leaves no incomplete upload",
    async (kind) => {
      const prefix = `cancel-${kind}/`;
      // A proxy of its own: its count of open held requests starts at 0.
      const proxy = await startAnswerProxy(moto.endpoint);
      const p = new S3Provider(
        motoProviderOptions(proxy.endpoint, BUCKET, {
          partSize: 5 * MIB,
          prefix,
        }),
      );
      proxy.rule = { matches: partRequest(2), answer: 'silent' };
      try {
        const fromFile = fileSource(file.path, SIZE, file.sha256);
        // Without localPath the provider streams the source through lib-storage's Upload.
        const source =
          kind === 'stream' ? { size: SIZE, sha256: file.sha256, open: fromFile.open } : fromFile;
        const controller = new AbortController();
        const put = p.put(name, source, { signal: controller.signal }).then(
          () => new Error('the upload succeeded'),
          (error: unknown) => error,
        );
        await until(async () => proxy.held > 0, 'the second part to reach the server');
        const cancelled = Date.now();
        controller.abort();
        const error = await within(put, 10_000, 'the cancelled upload to end');
        expect(isStorageError(error, 'aborted'), String(error)).toBe(true);
        expect(Date.now() - cancelled).toBeLessThan(3000);
        // The frozen part's request is given up, not left open for the idle timeout (60 s).
        await until(async () => proxy.heldOpen === 0, "the held part's connection to close", 30);
        expect(await incompleteUploads(moto.endpoint, BUCKET, prefix)).toEqual([]);
        expect(await p.list()).toEqual([]);
      } finally {
        await p.close();
        await proxy.close();
      }
    },
    60_000,
  );
});
