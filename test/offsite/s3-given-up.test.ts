// What a sync says when its S3 upload is given up: before every byte was sent nothing can be stored
// under the backup's name; after it (the server took all the data and gave no answer to the Complete
// in time) the server may still finish, and the words must not say nothing was stored. moto behind a
// loopback proxy that freezes a part or answers the Complete with whitespace only; the provider's stall
// and answer limits are shortened through the options.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Provider } from '../../agent/providers/s3';
import type { TestAgent } from '../services/agent';
import { type MotoService, motoClient, startMoto } from '../services/moto';
import { startPostgres, type TestPostgres } from '../services/postgres';
import {
  type AnswerProxy,
  completeRequest,
  partRequest,
  startAnswerProxy,
} from '../services/s3-answer-proxy';
import { startAll } from '../services/start-all';
import { backupNow, FAST, filenameOf, runJob, startOffsiteAgent } from './helpers';

const MIB = 1024 * 1024;
const BUCKET = 'gem-given-up';
/** moto's bucket under the sync's prefix, as the settings and a provider past the proxy name it. */
const WHERE = {
  region: 'us-east-1',
  bucket: BUCKET,
  prefix: 'given-up',
  accessKeyId: 'moto',
  secretAccessKey: 'moto',
  forcePathStyle: true,
};
let pg: TestPostgres;
let moto: MotoService;
let proxy: AnswerProxy;
let t: TestAgent;
let name: string;

beforeAll(async () => {
  ({ pg, moto } = await startAll({ pg: startPostgres, moto: startMoto }));
  proxy = await startAnswerProxy(moto.endpoint);
  const raw = motoClient(moto.endpoint);
  await raw.send(new CreateBucketCommand({ Bucket: BUCKET })).finally(() => raw.destroy());
  // The provider gives up after 2.5 s without new bytes, or 2 s without an answer once all are sent.
  t = await startOffsiteAgent(pg, {
    ...FAST,
    providerOverrides: {
      ...FAST.providerOverrides,
      s3: { stallTimeoutMs: 2500, answerTimeoutMs: 2000, partSize: 5 * MIB },
    },
  });
  // Random bytes do not compress: a backup of three parts.
  await writeFile(join(t.agent.sources.scriptsDir, 'noise.bin'), randomBytes(12 * MIB));
  await t.agent.settings.update({
    offsite: {
      s3: { enabled: true, provider: 'other', endpoint: proxy.endpoint, ...WHERE, autoUpload: false },
    },
  });
  name = filenameOf(await backupNow(t));
}, 120_000);

afterAll(async () => {
  await proxy?.close();
  await t?.close();
  await Promise.all([pg?.stop(), moto?.stop()]);
});

/** The names the bucket holds under the sync's prefix, read past the proxy. */
async function stored(): Promise<string[]> {
  const provider = new S3Provider({ endpoint: moto.endpoint, ...WHERE });
  try {
    return (await provider.list()).map((o) => o.name);
  } finally {
    await provider.close();
  }
}

/** The sync's error while the proxy holds what `rule` names. */
async function failedSync(rule: NonNullable<AnswerProxy['rule']>): Promise<string | undefined> {
  proxy.rule = rule;
  proxy.held = 0;
  try {
    const job = await runJob(t, 'POST', '/offsite/s3/sync');
    expect(job.state).toBe('failed');
    expect(proxy.held).toBeGreaterThan(0);
    return job.error?.message;
  } finally {
    proxy.rule = undefined;
  }
}

describe('an S3 upload given up', () => {
  it('before every byte was sent (a part the server stopped taking): nothing was stored under its name', async () => {
    const message = await failedSync({ matches: partRequest(1), answer: 'frozen' });
    expect(message).toBe(
      `1 transfer failed; nothing was pruned. ${name}: The storage at ${proxy.endpoint} stopped answering during the upload of ${name}: it took no data for 3 s, so the upload was given up (nothing was stored under its name). Check that the server is running and reachable; the next sync or backup uploads it again.`,
    );
    expect(await stored()).toEqual([]);
  }, 60_000);

  it('after every byte was sent (no answer to the Complete): it may still appear, and the next sync checks it', async () => {
    const message = await failedSync({ matches: completeRequest, answer: 'whitespace' });
    expect(message).toBe(
      `1 transfer failed; nothing was pruned. ${name}: The storage at ${proxy.endpoint} stopped answering during the upload of ${name}: it took all the data, then gave no answer for 2 s, so the upload was given up; the server may still finish storing it, and the backup then appears there whole. Check that the server is running and reachable; the next sync checks for it and uploads it again if it is not there.`,
    );
    // This proxy never passed the Complete on: the next sync finds nothing and uploads it.
    const again = await runJob(t, 'POST', '/offsite/s3/sync');
    expect(again.state, JSON.stringify(again.error)).toBe('succeeded');
    expect((again.result as { uploaded: string[] }).uploaded).toEqual([name]);
    expect(await stored()).toEqual([name]);
  }, 60_000);
});
