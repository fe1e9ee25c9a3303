// Debian's Chromium driven by playwright-core, and the agent's app served on a real port for it.
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { TEST_TOKEN } from './agent';

const CHROMIUM = '/usr/bin/chromium';

/**
 * Chromium for this worker process, launched by its first file that asks: a worker runs its files one
 * after another (isolate: false in vitest.config.ts), so the next file gets the same browser instead of
 * launching another. Each file works in browser contexts of its own (their own cookies, storage and
 * cache); a browser that went away is launched again.
 */
let running: Promise<Browser> | undefined;

/**
 * Headless Chromium as SERVICES.md says, as one file sees it: close() closes the contexts the file
 * opened and leaves Chromium to the worker's next file. Throws with the apt command if it is missing.
 */
export async function launchBrowser(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error('Chromium is not installed: apt-get install -y chromium');
  const current = await running?.catch(() => undefined);
  if (!current?.isConnected()) running = launch();
  return forOneFile(await running!);
}

function launch(): Promise<Browser> {
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

/** `browser` for one file: the contexts it opens (newContext, newPage) are what its close() closes. */
function forOneFile(browser: Browser): Browser {
  const contexts = new Set<BrowserContext>();
  const own: Partial<Browser> = {
    newContext: async (options) => {
      const context = await browser.newContext(options);
      contexts.add(context);
      return context;
    },
    newPage: async (options) => {
      const page = await browser.newPage(options);
      contexts.add(page.context());
      return page;
    },
    close: async () => {
      await Promise.all([...contexts].map((context) => context.close().catch(() => {})));
      contexts.clear();
    },
  };
  return new Proxy(browser, {
    get(target, key) {
      if (key in own) return own[key as keyof Browser];
      const value = Reflect.get(target, key, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
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
