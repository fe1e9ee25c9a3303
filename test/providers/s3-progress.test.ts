// The S3 provider's progress counts what the server acknowledged (answered parts), and the whole size
// only once the upload is complete: never 100 % while a part or the Complete is still unanswered. A real
// s3rver behind a loopback proxy that never answers one request; both upload paths (a local file's
// ranged parts, and a stream through the SDK's Upload).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSource } from '../../agent/offsite/transfer';
import { S3Provider } from '../../agent/providers/s3';
import { type BackupSource, isStorageError } from '../../shared/storage/index';
import { type S3Service, startS3 } from '../services/s3';
import {
  type AnswerProxy,
  completeRequest,
  type HeldRequest,
  partRequest,
  startAnswerProxy,
} from '../services/s3-answer-proxy';
import { randomFile } from './random-file';

const MIB = 1024 * 1024;
/** Three parts of 5 MiB: 5, 5 and 2 MiB and a bit. */
const SIZE = 12 * MIB + 123;
const name = 'gem-backup-2026-05-06-070809.tar.gz';
let s3: S3Service;
let proxy: AnswerProxy;
let dir: string;
let file: { path: string; bytes: Buffer; sha256: string };

beforeAll(async () => {
  s3 = await startS3();
  proxy = await startAnswerProxy(s3.endpoint);
  dir = await mkdtemp(join(tmpdir(), 'gem-s3-progress-'));
  file = await randomFile(dir, 'backup', SIZE);
});
afterAll(async () => {
  await proxy?.close();
  await s3?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function provider(prefix: string): S3Provider {
  return new S3Provider({
    endpoint: proxy.endpoint,
    region: s3.region,
    bucket: s3.bucket,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    forcePathStyle: true,
    partSize: 5 * MIB,
    // A request left unanswered fails the put in seconds.
    stallTimeoutMs: 1500,
    answerTimeoutMs: 1500,
    prefix,
  });
}

const sources: [string, () => BackupSource][] = [
  ['a local file', () => fileSource(file.path, SIZE, file.sha256)],
  [
    'a stream',
    () => ({
      size: SIZE,
      sha256: file.sha256,
      open: () => Readable.toWeb(Readable.from([file.bytes])) as ReadableStream<Uint8Array>,
    }),
  ],
];

/** Puts the file with `held` never answered: the put fails, and the progress it reported. */
async function putHeld(p: S3Provider, source: BackupSource, held: HeldRequest): Promise<number[]> {
  const reported: number[] = [];
  proxy.rule = { matches: held, answer: 'silent' };
  proxy.held = 0;
  try {
    const error = await p.put(name, source, { onProgress: (bytes) => reported.push(bytes) }).catch((e) => e);
    expect(isStorageError(error, 'unreachable'), String(error)).toBe(true);
    expect(proxy.held).toBe(1);
  } finally {
    proxy.rule = undefined;
  }
  return reported;
}

describe('S3 upload progress', () => {
  for (const [what, source] of sources) {
    it(`of ${what} counts the parts answered, not those in flight`, async () => {
      const p = provider(`part-${what.replace(' ', '-')}/`);
      try {
        // Part 3 is sent whole but never answered: parts 1 and 2, no more.
        const reported = await putHeld(p, source(), partRequest(3));
        expect(Math.max(0, ...reported)).toBe(10 * MIB);
      } finally {
        await p.close();
      }
    });

    it(`of ${what} reaches the whole size only once the upload is complete`, async () => {
      const p = provider(`complete-${what.replace(' ', '-')}/`);
      try {
        // Every part answered, the Complete never: not 100 %.
        const reported = await putHeld(p, source(), completeRequest);
        expect(reported.length).toBeGreaterThan(0);
        expect(Math.max(...reported)).toBeLessThan(SIZE);

        // Answered: 100 %, as the last report, never going back.
        const done: number[] = [];
        await p.put(name, source(), { onProgress: (bytes) => done.push(bytes) });
        expect(done.at(-1)).toBe(SIZE);
        expect(done.filter((bytes) => bytes === SIZE)).toHaveLength(1);
        expect([...done].sort((a, b) => a - b)).toEqual(done);
      } finally {
        await p.close();
      }
    });
  }
});
