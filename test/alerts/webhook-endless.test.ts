// A webhook that answers 200 and then sends without end: the delivery counts, and its body is never read.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postWebhook } from '../../agent/alerts/webhook';

/** The endpoint sends this much at most (then holds the answer open): enough to tell "read" from "cancelled". */
const SENT_AT_MOST = 64 * 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024, 0x61);

let server: Server;
let url: string;
/** Per request: bytes handed to the socket before it closed, and a promise of the close. */
const answers: Array<{ written: () => number; closed: Promise<void> }> = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    req.resume();
    let written = 0;
    let open = true;
    const closed = new Promise<void>((resolve) => res.on('close', () => resolve()));
    closed.then(() => {
      open = false;
    });
    answers.push({ written: () => written, closed });
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const pump = () => {
      // As fast as the client reads (the socket's buffers full: wait for drain), up to SENT_AT_MOST.
      while (open && written < SENT_AT_MOST) {
        written += CHUNK.length;
        if (!res.write(CHUNK)) {
          res.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

describe('a webhook whose answer never ends', () => {
  it('is a delivery, and the agent closes the connection instead of reading the answer', async () => {
    const delivery = await postWebhook(url, 'secret', '{"test":true}', { timeoutMs: 5_000 });
    expect(delivery).toEqual({ channel: `webhook ${new URL(url).origin}`, ok: true });
    const [answer] = answers;
    // Cancelled, the connection closes at once; read, it stays open as long as the endpoint holds it.
    await Promise.race([answer!.closed, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    // Read to the end (or to the timeout), the whole 64 MiB would have gone; cancelled, what fits the socket's buffers.
    expect(answer!.written()).toBeLessThan(8 * 1024 * 1024);
  });
});
