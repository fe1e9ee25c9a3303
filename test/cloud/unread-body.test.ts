// Refusals of chunked bodies (no Content-Length) come before the body is read whole: a refused client is not buffered.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CloudUnderTest, ENROLLMENT_TOKEN, refusedUnread, startCloud } from './harness';

let cloud: CloudUnderTest;

beforeAll(async () => {
  cloud = await startCloud();
});
afterAll(async () => {
  await cloud?.dispose();
});

describe('chunked bodies of refused requests', () => {
  it('an unsigned chunked PUT /v1/dr/backup gets its 401 before its body is read to the end', async () => {
    const res = await refusedUnread(
      cloud,
      'PUT',
      '/v1/dr/backup',
      async () => ({ 'transfer-encoding': 'chunked' }),
      401,
    );
    expect(JSON.parse(res.body).error.code).toBe('unauthorized');
  });

  it('a chunked JSON body past 64 KiB on /v1/recover gets its 413 before it is read to the end', async () => {
    const res = await refusedUnread(
      cloud,
      'POST',
      '/v1/recover',
      async () => ({
        'transfer-encoding': 'chunked',
        'content-type': 'application/json',
        'cf-connecting-ip': '198.51.100.77',
      }),
      413,
    );
    expect(JSON.parse(res.body).error.code).toBe('too_large');
  });

  it('a chunked JSON body past 64 KiB on /v1/installations gets its 413 before it is read to the end', async () => {
    const res = await refusedUnread(
      cloud,
      'POST',
      '/v1/installations',
      async () => ({
        'transfer-encoding': 'chunked',
        'content-type': 'application/json',
        authorization: `Bearer ${ENROLLMENT_TOKEN}`,
      }),
      413,
    );
    expect(JSON.parse(res.body).error.code).toBe('too_large');
  });
});
