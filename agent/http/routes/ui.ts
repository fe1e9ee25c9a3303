import { readFile } from 'node:fs/promises';
import { Hono } from 'hono';
import type { Agent } from '../../agent';
import { AppError } from '../../errors';
import { auditRoutes } from '../audit';
import { ticketsFor } from '../download-tickets';
import { backupFileResponse } from './backups';

const UI_DIR = new URL('../../ui/', import.meta.url);

/** The only files served: a fixed list, so no request path ever reaches the file system. */
const ASSETS: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'api.js': 'text/javascript; charset=utf-8',
  'dialogs.js': 'text/javascript; charset=utf-8',
  'keys.js': 'text/javascript; charset=utf-8',
  'backups.js': 'text/javascript; charset=utf-8',
  'settings.js': 'text/javascript; charset=utf-8',
  'offsite.js': 'text/javascript; charset=utf-8',
  'format.js': 'text/javascript; charset=utf-8',
  'health.js': 'text/javascript; charset=utf-8',
  'favicon.svg': 'image/svg+xml',
};

// The page loads nothing but its own files: no inline script, no third-party origin, no framing.
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

const cache = new Map<string, Buffer>();

async function asset(name: string): Promise<Response> {
  // Own keys only: `constructor`, `__proto__` or `toString` are not page assets.
  const type = Object.hasOwn(ASSETS, name) ? ASSETS[name] : undefined;
  if (!type) throw new AppError('not_found', `no such page asset: ${name}`);
  let bytes = cache.get(name);
  if (!bytes) {
    bytes = await readFile(new URL(name, UI_DIR));
    // Cached only outside development so edits to agent/ui/ show on reload while working on the page.
    if (process.env.NODE_ENV !== 'development') cache.set(name, bytes);
  }
  return new Response(new Uint8Array(bytes), {
    headers: { 'content-type': type, 'cache-control': 'no-cache', ...SECURITY_HEADERS },
  });
}

/** Public routes mounted at `/`: the page needs no token to load; every API call it makes sends one. */
export function uiRoutes(agent: Agent): Hono {
  const app = new Hono();

  app.get('/', () => asset('index.html'));
  app.get('/ui/:name', (c) => asset(c.req.param('name')));

  // The ticket (from POST /api/v1/backups/:f/download-link) stands in for the token, once, for 60 s.
  app.use('/download/*', auditRoutes(agent.audit));
  app.get('/download/:ticket', async (c) => {
    // Hono answers HEAD with this handler: a HEAD (a link preview, a scanner, `curl -I`) downloads
    // nothing, so it leaves the one-time link usable.
    const tickets = ticketsFor(agent);
    const ticket = c.req.param('ticket');
    const name = c.req.method === 'HEAD' ? tickets.peek(ticket) : tickets.redeem(ticket);
    if (!name) throw new AppError('not_found', 'this download link has expired or was already used');
    return backupFileResponse(agent, name, c.req.method);
  });

  return app;
}
