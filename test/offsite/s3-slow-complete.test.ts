// A sync to an S3 server that takes longer to complete the multipart upload than the stall limits of
// both the provider and the transfer (AWS documents that it may take several minutes, sending
// whitespace meanwhile): the sync waits for the answer and uploads the backup whole, once. s3rver behind
// a loopback proxy that answers the Complete late; the stall limits are shortened through the options.
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Provider } from '../../agent/providers/s3';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { type AnswerProxy, completeRequest, startAnswerProxy } from '../services/s3-answer-proxy';
import { startAll } from '../services/start-all';
import { backupNow, FAST, filenameOf, runJob, s3Section, startOffsiteAgent } from './helpers';

const MIB = 1024 * 1024;
let pg: TestPostgres;
let s3: S3Service;
let proxy: AnswerProxy;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, s3 } = await startAll({ pg: startPostgres, s3: startS3 }));
  proxy = await startAnswerProxy(s3.endpoint);
  // The transfer gives up after FAST's 3 s without progress, the provider after 2.5 s.
  t = await startOffsiteAgent(pg, {
    ...FAST,
    providerOverrides: { ...FAST.providerOverrides, s3: { stallTimeoutMs: 2500, partSize: 5 * MIB } },
  });
  // Random bytes do not compress: a backup of three parts.
  await writeFile(join(t.agent.sources.scriptsDir, 'noise.bin'), randomBytes(12 * MIB));
  await t.agent.settings.update({
    offsite: { s3: s3Section(s3, { endpoint: proxy.endpoint, prefix: 'slow' }) },
  });
}, 120_000);

afterAll(async () => {
  await proxy?.close();
  await t?.close();
  await Promise.all([pg?.stop(), s3?.stop()]);
});

describe('an S3 server slow to complete the upload', () => {
  it('the sync waits past both stall limits for the answer and uploads the backup whole, once', async () => {
    const name = filenameOf(await backupNow(t));
    proxy.rule = { matches: completeRequest, answer: 'slow', delayMs: 5000 };
    const job = await runJob(t, 'POST', '/offsite/s3/sync');
    proxy.rule = undefined;
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(proxy.held).toBe(1);

    const provider = new S3Provider({
      endpoint: s3.endpoint,
      region: s3.region,
      bucket: s3.bucket,
      prefix: 'slow',
      accessKeyId: s3.accessKeyId,
      secretAccessKey: s3.secretAccessKey,
      forcePathStyle: true,
    });
    try {
      expect((await provider.list()).map((o) => o.name)).toEqual([name]);
      const hash = createHash('sha256');
      for await (const chunk of Readable.fromWeb((await provider.get(name)) as never)) hash.update(chunk);
      const local = createHash('sha256').update(await readFile(t.agent.catalog.pathOf(name)));
      expect(hash.digest('hex')).toBe(local.digest('hex'));
    } finally {
      await provider.close();
    }
  }, 60_000);
});
