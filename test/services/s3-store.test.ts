// The tests' S3 server (s3rver, started by startS3) stores objects the way S3 does: a PUT is answered
// once the object is stored, and an overwrite, finished or cut off, never shows a reader a part object.
import { createHash, randomBytes } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { type ClientRequest, request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type S3Service, startS3 } from './s3';
import { until, within } from './wait';

let s3: S3Service;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(() => s3?.stop());

const MIB = 1024 * 1024;
const sha = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

function url(key: string): URL {
  return new URL(`${s3.endpoint}/${s3.bucket}/${key}`);
}

/** An anonymous request (s3rver lets those through), its status and whole body. */
function send(
  method: 'GET' | 'PUT' | 'POST',
  key: string,
  body?: Buffer | string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Buffer; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(url(key), { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      // A body shorter than its Content-Length ends in 'error' (premature close), not 'end'.
      res.on('error', reject);
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), headers: res.headers }),
      );
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function put(key: string, body: Buffer): Promise<void> {
  const answer = await send('PUT', key, body);
  expect(answer.status).toBe(200);
}

/** The object's bytes as a GET returns them, as a sha256 (a readable failure message). */
async function read(key: string): Promise<string> {
  const answer = await within(send('GET', key), 30_000, `a GET of ${key}`);
  expect(answer.status).toBe(200);
  return sha(answer.body);
}

/** Every file under the bucket's folder with its size. */
async function files(): Promise<{ name: string; size: number }[]> {
  const folder = join(s3.root, s3.bucket);
  const names = (await readdir(folder, { recursive: true })) as string[];
  return Promise.all(names.map(async (name) => ({ name, size: (await stat(join(folder, name))).size })));
}

/**
 * A PUT of `body` whose first `sent` bytes are on their way and stored somewhere under the bucket
 * (s3rver writes as they arrive), the rest held back until `finish`; `cut` drops the connection.
 */
async function heldPut(key: string, body: Buffer, sent: number) {
  let req!: ClientRequest;
  const answered = new Promise<number>((resolve, reject) => {
    req = request(url(key), { method: 'PUT', headers: { 'content-length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
  });
  answered.catch(() => {});
  req.write(body.subarray(0, sent));
  await until(async () => (await files()).some((file) => file.size === sent), `${sent} bytes stored`);
  return {
    finish: () => {
      req.end(body.subarray(sent));
      return within(answered, 30_000, 'the answer to the PUT');
    },
    cut: () => req.destroy(),
  };
}

describe('s3rver as the tests start it', () => {
  it('keeps the old object whole while an overwrite arrives, and after one that is cut off', async () => {
    const old = randomBytes(3 * MIB);
    const replacement = randomBytes(2 * MIB + 17);
    await put('held', old);

    const overwrite = await heldPut('held', replacement, MIB);
    expect(await read('held')).toBe(sha(old));
    expect(await overwrite.finish()).toBe(200);
    expect(await read('held')).toBe(sha(replacement));

    const cut = await heldPut('held', old, MIB + 5);
    cut.cut();
    expect(await read('held')).toBe(sha(replacement));
    // What the cut-off PUT had written is removed: only the object's own files stay.
    await until(async () => (await files()).length === 3, 'the cut-off PUT to be cleaned up');
    expect((await files()).map((file) => file.name).sort()).toEqual([
      'held._S3rver_metadata.json',
      'held._S3rver_object',
      'held._S3rver_object.md5',
    ]);
    expect(await read('held')).toBe(sha(replacement));
  });

  it('reads back every object whole right after its PUT is answered', async () => {
    for (let round = 0; round < 40; round++) {
      const body = randomBytes(4 * MIB + round);
      await put('fresh', body);
      expect(await read('fresh'), `round ${round}`).toBe(sha(body));
    }
  });

  it('shows a reader during overwrites the old or the new object whole, never a part', async () => {
    const one = randomBytes(3 * MIB);
    const two = randomBytes(2 * MIB + 1);
    const whole = new Set([sha(one), sha(two)]);
    await put('busy', one);
    let writing = true;
    const seen: string[] = [];
    const reader = (async () => {
      while (writing) seen.push(await read('busy').catch((error: Error) => `failed: ${error.message}`));
    })();
    try {
      for (let round = 0; round < 30; round++) await put('busy', round % 2 ? one : two);
    } finally {
      writing = false;
    }
    await reader;
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.filter((digest) => !whole.has(digest))).toEqual([]);
  });

  it('reads back a multipart upload whole right after it completes', async () => {
    for (let round = 0; round < 10; round++) {
      const parts = [randomBytes(5 * MIB), randomBytes(MIB + round)];
      const started = await send('POST', 'parts?uploads');
      const uploadId = /<UploadId>([^<]+)<\/UploadId>/.exec(started.body.toString())![1]!;
      const etags: string[] = [];
      for (const [index, part] of parts.entries()) {
        const answer = await send('PUT', `parts?partNumber=${index + 1}&uploadId=${uploadId}`, part);
        expect(answer.status).toBe(200);
        etags.push(String(answer.headers['etag']));
      }
      const list = etags.map(
        (etag, index) => `<Part><PartNumber>${index + 1}</PartNumber><ETag>${etag}</ETag></Part>`,
      );
      const done = await send(
        'POST',
        `parts?uploadId=${uploadId}`,
        `<CompleteMultipartUpload>${list.join('')}</CompleteMultipartUpload>`,
      );
      expect(done.status).toBe(200);
      expect(await read('parts'), `round ${round}`).toBe(sha(Buffer.concat(parts)));
    }
  });

  it('copies an object whole with its metadata', async () => {
    const body = randomBytes(MIB + 3);
    expect((await send('PUT', 'original', body, { 'x-amz-meta-sha256': sha(body) })).status).toBe(200);
    const copied = await send('PUT', 'copy', undefined, { 'x-amz-copy-source': `/${s3.bucket}/original` });
    expect(copied.status).toBe(200);
    const answer = await send('GET', 'copy');
    expect(sha(answer.body)).toBe(sha(body));
    expect(answer.headers['x-amz-meta-sha256']).toBe(sha(body));
    expect(answer.headers['etag']).toBe(`"${createHash('md5').update(body).digest('hex')}"`);
  });
});
