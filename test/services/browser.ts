// Debian's Chromium driven by playwright-core, and the agent's app served on a real port for it.
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { type Browser, chromium, type Page } from 'playwright-core';
import { TEST_TOKEN } from './agent';

const CHROMIUM = '/usr/bin/chromium';

/** Launches headless Chromium as SERVICES.md says. Throws with the apt command if it is missing. */
export async function launchBrowser(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error('Chromium is not installed: apt-get install -y chromium');
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

export interface ServedApp {
  url: string;
  close(): Promise<void>;
}

/** Serves a Hono app's fetch on a free port of 127.0.0.1 (a real HTTP server the browser can reach). */
export function serveApp(app: {
  fetch: (request: Request) => Response | Promise<Response>;
}): Promise<ServedApp> {
  return new Promise((resolve) => {
    const server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, (info: AddressInfo) => {
      resolve({
        url: `http://127.0.0.1:${info.port}`,
        close: () =>
          new Promise<void>((done) => {
            // Open event streams would keep close() waiting; end them.
            (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
            server.close(() => done());
          }),
      });
    });
  });
}

/**
 * Opens the page at `url` and signs in with the test agent's admin token when the page asks for it
 * (a tab keeps the token in sessionStorage: a later visit is signed in already).
 */
export async function openSignedIn(page: Page, url: string): Promise<void> {
  await page.goto(url);
  const token = page.getByLabel('Admin token');
  // The page shows one of the two once its scripts ran: wait for whichever is visible.
  await token
    .or(page.getByRole('heading', { name: 'Local backups' }))
    .filter({ visible: true })
    .waitFor();
  if (await token.isVisible()) {
    await token.fill(TEST_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
  }
}
