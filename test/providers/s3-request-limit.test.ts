// requestTimeoutMs is the limit of a whole listing page, stat or delete request: a server that takes the
// request and never answers fails it as 'unreachable' once, not after the SDK's three attempts (three
// times the limit: 3 minutes by default for Test Connection's listing, each of a sync's stats...). moto
// behind a loopback proxy that leaves one kind of request unanswered; the limit shortened to 1 s.
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Provider } from '../../agent/providers/s3';
import { isStorageError } from '../../shared/storage/index';
import { type MotoService, motoClient, motoProviderOptions, startMoto } from '../services/moto';
import { type AnswerProxy, type HeldRequest, startAnswerProxy } from '../services/s3-answer-proxy';
import { within } from '../services/wait';

const BUCKET = 'gem-request-limit';
const name = 'gem-backup-2026-05-06-070809.tar.gz';
const LIMIT_MS = 1000;

let moto: MotoService;
let proxy: AnswerProxy;

beforeAll(async () => {
  moto = await startMoto();
  proxy = await startAnswerProxy(moto.endpoint);
  const raw = motoClient(moto.endpoint);
  await raw.send(new CreateBucketCommand({ Bucket: BUCKET })).finally(() => raw.destroy());
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await moto?.stop();
});

const head: HeldRequest = (req) => req.method === 'HEAD';
const listing: HeldRequest = (req) =>
  req.method === 'GET' && new URL(req.url ?? '/', 'http://x').searchParams.has('list-type');

describe('an S3 request the server never answers', () => {
  it.each<[string, HeldRequest, (p: S3Provider) => Promise<unknown>]>([
    ['a stat (HeadObject)', head, (p) => p.stat(name)],
    ['a delete (its HeadObject)', head, (p) => p.delete(name)],
    ['a listing (ListObjectsV2)', listing, (p) => p.list()],
  ])("%s fails as 'unreachable' after requestTimeoutMs, sent once", async (_what, matches, call) => {
    const p = new S3Provider(
      motoProviderOptions(proxy.endpoint, BUCKET, {
        requestTimeoutMs: LIMIT_MS,
      }),
    );
    proxy.rule = { matches, answer: 'silent' };
    proxy.held = 0;
    try {
      const started = Date.now();
      const error = await within(
        call(p).then(
          () => new Error('the request succeeded'),
          (e: unknown) => e,
        ),
        30_000,
        'the request to fail',
      );
      expect(isStorageError(error, 'unreachable'), String(error)).toBe(true);
      expect(Date.now() - started).toBeLessThan(1.7 * LIMIT_MS);
      expect(proxy.held).toBe(1);
    } finally {
      proxy.rule = undefined;
      await p.close();
    }
  });
});
