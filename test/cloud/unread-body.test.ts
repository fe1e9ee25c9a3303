// Refusals of chunked bodies (no Content-Length) come before the body is read whole: a refused client is not buffered.
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CloudUnderTest, ENROLLMENT_TOKEN, startCloud } from './harness';

let cloud: CloudUnderTest;

beforeAll(async () => {
  cloud = await startCloud();
});
afterAll(async () => {
  await cloud?.dispose();
});

/** Far more than any limit involved; the client never gets near it when the Worker stops reading early. */
const CAP = 48 * 1024 * 1024;

/**
 * Sends a chunked body piece by piece until the answer arrives or CAP bytes are sent, whichever is
 * first; the body is ended only at CAP. An answer to a request whose body was never ended proves
 * the Worker answered without reading the body to its end.
 */
function chunkedUntilAnswered(
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: string; ended: boolean; sent: number; reset?: boolean }> {
  return new Promise((resolve, reject) => {
    let ended = false;
    let sent = 0;
    let answered: (() => void) | undefined;
    const answer = new Promise<void>((r) => {
      answered = r;
    });
    let isAnswered = false;
    const req = http.request(
      `${cloud.url}${path}`,
      { method: path === '/v1/dr/backup' ? 'PUT' : 'POST', headers, agent: false },
      (res) => {
        isAnswered = true;
        answered?.();
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), ended, sent });
        });
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (isAnswered) return; // the Worker dropping the unread rest after its answer: expected
      // The Worker closed with unread bytes on the wire, and the reset overtook its answer.
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
        resolve({ status: 0, body: '', ended, sent, reset: true });
      } else reject(err);
    });
    const piece = Buffer.alloc(256 * 1024, 0x7b);
    void (async () => {
      while (!isAnswered && sent < CAP) {
        const flushed = req.write(piece);
        sent += piece.length;
        if (!flushed) await Promise.race([new Promise((r) => req.once('drain', r)), answer]);
      }
      if (!isAnswered) {
        ended = true;
        req.end();
      }
    })().catch(() => {});
  });
}

/**
 * Asks up to five times. Every attempt must end before its body was sent whole (the proof that the
 * Worker did not read it to the end); a closed socket can overtake the answer now and then, so at
 * least one attempt must also have read the expected status.
 */
async function refusedUnread(
  path: string,
  headers: Record<string, string>,
  status: number,
): Promise<{ status: number; body: string }> {
  for (let attempt = 1; attempt <= 5; attempt++) {
    const res = await chunkedUntilAnswered(path, headers);
    expect(res.ended).toBe(false);
    expect(res.sent).toBeLessThan(CAP);
    if (!res.reset) {
      expect(res.status).toBe(status);
      return res;
    }
  }
  throw new Error(`five resets and no ${status} answer from ${path}`);
}

describe('chunked bodies of refused requests', () => {
  it('an unsigned chunked PUT /v1/dr/backup gets its 401 before its body is read to the end', async () => {
    const res = await refusedUnread('/v1/dr/backup', { 'transfer-encoding': 'chunked' }, 401);
    expect(JSON.parse(res.body).error.code).toBe('unauthorized');
  });

  it('a chunked JSON body past 64 KiB on /v1/recover gets its 413 before it is read to the end', async () => {
    const res = await refusedUnread(
      '/v1/recover',
      {
        'transfer-encoding': 'chunked',
        'content-type': 'application/json',
        'cf-connecting-ip': '198.51.100.77',
      },
      413,
    );
    expect(JSON.parse(res.body).error.code).toBe('too_large');
  });

  it('a chunked JSON body past 64 KiB on /v1/installations gets its 413 before it is read to the end', async () => {
    const res = await refusedUnread(
      '/v1/installations',
      {
        'transfer-encoding': 'chunked',
        'content-type': 'application/json',
        authorization: `Bearer ${ENROLLMENT_TOKEN}`,
      },
      413,
    );
    expect(JSON.parse(res.body).error.code).toBe('too_large');
  });
});
