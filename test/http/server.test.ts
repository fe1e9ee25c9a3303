/** The agent's HTTP server: no request timeout (long backup uploads), Node's headers timeout kept. */
import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { serveApp } from '../../agent/app';

describe('HTTP server', () => {
  it('never cuts a long request off, but still bounds slow headers', async () => {
    const app = new Hono();
    app.get('/', (c) => c.text('ok'));
    let port = 0;
    const server = await new Promise<ReturnType<typeof serveApp>>((resolve) => {
      const s = serveApp(app, { hostname: '127.0.0.1', port: 0 }, (info) => {
        port = info.port;
        resolve(s);
      });
    });
    try {
      const http = server as unknown as { requestTimeout: number; headersTimeout: number };
      expect(http.requestTimeout).toBe(0);
      expect(http.headersTimeout).toBe(60_000);
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe('ok');
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
