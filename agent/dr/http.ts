/** One HTTP exchange with the DR cloud over node:http(s): streamed bodies with a Content-Length, a fault hook. */
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { AppError } from '../errors';

interface CloudRequest {
  method: string;
  headers: Record<string, string>;
  body?: Buffer | Readable;
  /** Socket idle time before the request is given up. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** Fault injection (tests, drills): destroy the connection after this many body bytes. */
  cutAfterBytes?: number;
}

export interface CloudResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: IncomingMessage;
}

/** Sends one request; resolves with the response head (the body is left to the caller to read or drain). */
export function sendRequest(url: URL, request: CloudRequest): Promise<CloudResponse> {
  const transport = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    let answered = false;
    // A fresh connection per request: a kept-alive socket the server just closed would fail the next one.
    const req = transport.request(
      url,
      {
        method: request.method,
        headers: request.headers,
        agent: false,
        ...(request.signal ? { signal: request.signal } : {}),
      },
      (res) => {
        answered = true;
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res });
      },
    );
    req.setTimeout(request.timeoutMs, () =>
      req.destroy(new Error(`no answer within ${request.timeoutMs} ms`)),
    );
    req.on('error', (error) => {
      if (!answered) reject(error);
    });
    const body = request.body;
    if (body === undefined) {
      req.end();
      return;
    }
    const limit = request.cutAfterBytes;
    void (async () => {
      let sent = 0;
      const chunks: AsyncIterable<Buffer> | Iterable<Buffer> = Buffer.isBuffer(body) ? [body] : body;
      for await (const chunk of chunks) {
        if (req.destroyed) return;
        if (limit !== undefined && sent + chunk.length >= limit) {
          req.write(chunk.subarray(0, Math.max(0, limit - sent)));
          req.destroy(new Error('the connection was cut (fault injection)'));
          return;
        }
        sent += chunk.length;
        if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      }
      req.end();
    })().catch((error: Error) => req.destroy(error));
  });
}

/** Reads a (small) response body whole; bigger than `limit` is an error. */
export async function readSmallBody(res: IncomingMessage, limit = 1024 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      res.destroy();
      throw new AppError('dependency_down', 'the DR cloud sent an answer that is far too large');
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
