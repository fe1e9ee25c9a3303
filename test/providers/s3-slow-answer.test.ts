// An S3 server slow to answer once an upload's bytes are all sent: AWS may take minutes to complete a
// multipart upload (it sends whitespace meanwhile, then 200 OK with the result or an error in the body),
// and a part or the check of what it stored may be answered late. moto behind a loopback proxy that holds
// one kind of answer: the stall guard (no new byte for stallTimeoutMs) must not give up a good upload
// then; a server that never answers still ends it, after answerTimeoutMs, with parts cleaned up.
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSource } from '../../agent/offsite/transfer';
import { type S3Options, S3Provider } from '../../agent/providers/s3';
import { isStorageError } from '../../shared/storage/index';
import {
  incompleteUploads,
  type MotoService,
  motoClient,
  motoProviderOptions,
  startMoto,
} from '../services/moto';
import {
  type Answer,
  type AnswerProxy,
  completeRequest,
  type HeldRequest,
  headRequest,
  partRequest,
  startAnswerProxy,
} from '../services/s3-answer-proxy';
import { until, within } from '../services/wait';
import { randomFile } from './random-file';

const MIB = 1024 * 1024;
const BUCKET = 'gem-slow-answer';
const name = 'gem-backup-2026-05-06-070809.tar.gz';
/** Three parts of 5 MiB (the last one short). */
const SIZE = 11 * MIB + 123;
const LAST_PART = 3;
/** The stall limit: 1.5 s, as test/faults/remote gives a frozen upload (5 min by default). */
const STALL_MS = 1500;
/** How long a slow answer is held: twice the stall limit, so a guard that counted it would fire. */
const SLOW_MS = 3000;

/** Which request the proxy holds, by name. */
type Held = 'complete' | 'last part' | 'head';
const HELD: Record<Held, HeldRequest> = {
  complete: completeRequest,
  'last part': partRequest(LAST_PART),
  head: headRequest(name),
};

let moto: MotoService;
let proxy: AnswerProxy;
let dir: string;
let file: { path: string; bytes: Buffer; sha256: string };
/** One part: a single PutObject. */
let small: { path: string; bytes: Buffer; sha256: string };

beforeAll(async () => {
  moto = await startMoto();
  proxy = await startAnswerProxy(moto.endpoint);
  const raw = motoClient(moto.endpoint);
  await raw.send(new CreateBucketCommand({ Bucket: BUCKET })).finally(() => raw.destroy());
  dir = await mkdtemp(join(tmpdir(), 'gem-s3-slow-'));
  file = await randomFile(dir, 'backup', SIZE);
  small = await randomFile(dir, 'small', MIB);
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await moto?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/**
 * Runs `test` with a provider through the proxy under `prefix` (each test its own) while the proxy
 * holds the requests `rule` names; `proxy.held` counts them from 0.
 */
async function whileHeld(
  rule: NonNullable<AnswerProxy['rule']>,
  prefix: string,
  overrides: Partial<S3Options>,
  test: (p: S3Provider) => Promise<void>,
): Promise<void> {
  const p = new S3Provider(
    motoProviderOptions(proxy.endpoint, BUCKET, {
      partSize: 5 * MIB,
      stallTimeoutMs: STALL_MS,
      prefix,
      ...overrides,
    }),
  );
  proxy.rule = rule;
  proxy.held = 0;
  try {
    await test(p);
  } finally {
    proxy.rule = undefined;
    await p.close();
  }
}

/** What the upload of `file` through `p` fails with; a hang fails the test instead. */
function failedUpload(p: S3Provider): Promise<unknown> {
  return within(
    p.put(name, fileSource(file.path, SIZE, file.sha256)).then(
      () => new Error('the upload succeeded'),
      (error: unknown) => error,
    ),
    60_000,
    'the upload to end',
  );
}

/** sha256 (hex) of what the bucket holds under `name`. */
async function storedSha256(p: S3Provider): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of Readable.fromWeb((await p.get(name)) as never)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

const left = (prefix: string) => incompleteUploads(moto.endpoint, BUCKET, prefix);

describe('an S3 server slow to answer after every byte of an upload is sent', () => {
  it.each<[Held, 'file' | 'stream' | 'one-part file']>([
    ['complete', 'file'],
    ['last part', 'file'],
    ['head', 'file'],
    ['complete', 'stream'],
    ['head', 'one-part file'],
  ])(
    'waits for a late answer to the %s past the stall limit (%s source): the upload succeeds, whole',
    (held, kind) => {
      const prefix = `slow-${held}-${kind}/`.replaceAll(' ', '-');
      return whileHeld({ matches: HELD[held], answer: 'slow', delayMs: SLOW_MS }, prefix, {}, async (p) => {
        const { path, bytes, sha256 } = kind === 'one-part file' ? small : file;
        const fromFile = fileSource(path, bytes.length, sha256);
        // Without localPath the provider streams the source through lib-storage's Upload.
        const source = kind === 'stream' ? { size: SIZE, sha256, open: fromFile.open } : fromFile;
        const stored = await within(p.put(name, source), 60_000, 'the upload');
        expect(proxy.held).toBeGreaterThan(0);
        expect(stored).toMatchObject({ name, size: bytes.length, sha256 });
        expect(await storedSha256(p)).toBe(sha256);
        expect(await left(prefix)).toEqual([]);
      });
    },
    90_000,
  );

  it.each<[Held, Answer]>([
    ['complete', 'whitespace'],
    ['last part', 'silent'],
  ])(
    'gives up when the %s gets no answer (%s) within answerTimeoutMs, naming it; nothing stored, parts removed',
    (held, answer) => {
      const prefix = `dead-${held}/`.replaceAll(' ', '-');
      return whileHeld({ matches: HELD[held], answer }, prefix, { answerTimeoutMs: 2000 }, async (p) => {
        const error = await failedUpload(p);
        expect(proxy.held).toBeGreaterThan(0);
        expect(isStorageError(error, 'unreachable')).toBe(true);
        expect((error as Error).message).toBe(
          `${proxy.endpoint} stopped answering during the upload of ${name}: it took all the data, then gave no answer for 2 s`,
        );
        expect((error as { permanent?: boolean }).permanent).toBe(true);
        // The abort of the multipart upload goes on after put() gave up (bounded, as after a stall).
        await until(async () => (await left(prefix)).length === 0, 'the parts to be removed');
        expect(await p.list()).toEqual([]);
      });
    },
    90_000,
  );

  it(
    'fails an upload whose Complete is answered 200 OK with an error in the body: nothing stored, parts removed',
    () =>
      whileHeld({ matches: completeRequest, answer: 'error' }, 'error-in-body/', {}, async (p) => {
        const error = await failedUpload(p);
        // The SDK tries a Complete answered so again (its 3 attempts), then fails with the server's error.
        expect(proxy.held).toBe(3);
        expect(isStorageError(error, 'io')).toBe(true);
        expect((error as Error).message).toBe('We encountered an internal error. Please try again.');
        expect(await p.list()).toEqual([]);
        expect(await left('error-in-body/')).toEqual([]);
      }),
    90_000,
  );
});
