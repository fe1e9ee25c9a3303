/** The page's asset route serves its fixed list only: names of Object.prototype are unknown pages, not errors. */
import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import type { Agent } from '../../agent/agent';
import { onError } from '../../agent/http/errors';
import { uiRoutes } from '../../agent/http/routes/ui';
import { createLogger } from '../../agent/log';

function uiApp(lines: string[]): Hono {
  const app = new Hono();
  app.onError(onError(createLogger({ write: (line) => lines.push(line) })));
  // The asset route needs nothing of the agent; the download route (its audit) is not called here.
  app.route('/', uiRoutes({ audit: { record: async () => {} } } as unknown as Agent));
  return app;
}

describe('page assets', () => {
  it('answers 404, without an error in the log, for names of Object.prototype', async () => {
    const lines: string[] = [];
    const app = uiApp(lines);
    for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf', 'nope.js']) {
      const res = await app.request(`/ui/${name}`);
      expect(res.status, name).toBe(404);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('not_found');
    }
    expect(lines.filter((line) => JSON.parse(line).level === 'error')).toEqual([]);
    const page = await app.request('/ui/index.html');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toContain('text/html');
  });
});
