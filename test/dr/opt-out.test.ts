// Opting out while a push is completing its upload: the deletion waits for the push to end, and the slot ends empty.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { drServiceFor } from '../../agent/dr/service';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { startDrAgent } from './helpers';

const MiB = 1024 * 1024;
let pg: TestPostgres;
let cloud: DrCloud;
let proxy: HoldingProxy;
const agents: TestAgent[] = [];

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  proxy = await startHoldingProxy(cloud.url);
});
afterAll(async () => {
  for (const t of agents) await t.close().catch(() => {});
  await proxy?.close();
  await cloud?.dispose();
  await pg?.stop();
});

interface HoldingProxy {
  url: string;
  /** what the proxy saw, in order */
  events: string[];
  /** resolves when a multipart completion has arrived and is being held */
  completeHeld: Promise<void>;
  close(): Promise<void>;
}

/**
 * A pass-through proxy to the Worker that holds the first multipart completion until its client
 * gives up (the push was cancelled) or an opt-out DELETE of the slot arrives, whichever comes
 * first; then it forwards it, so the completion reaches the cloud in either case.
 */
async function startHoldingProxy(target: string): Promise<HoldingProxy> {
  const events: string[] = [];
  let held: (() => void) | undefined;
  let release: (() => void) | undefined;
  const released = new Promise<void>((r) => {
    release = r;
  });
  const completeHeld = new Promise<void>((r) => {
    held = r;
  });
  let holding = false;
  const forward = (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => {
    const out = http.request(
      `${target}${req.url}`,
      { method: req.method, headers: req.headers, agent: false },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    out.on('error', () => res.destroy());
    out.end(body);
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const path = req.url ?? '';
      if (req.method === 'DELETE' && path === '/v1/dr/backup') {
        events.push('delete slot');
        release?.();
      }
      if (req.method === 'POST' && /\/complete$/.test(path) && !holding) {
        holding = true;
        events.push('complete held');
        req.socket.once('close', () => {
          events.push('complete given up by the agent');
          release?.();
        });
        held?.();
        void released.then(() => forward(req, res, body));
        return;
      }
      forward(req, res, body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    events,
    completeHeld,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

it('an opt-out during a push deletes only after the push ended, and the slot stays empty', async () => {
  const t = await startDrAgent(pg, proxy.url, {
    tuning: { multipartThreshold: 1, partSize: 5 * MiB, retryDelayMs: 10 },
  });
  agents.push(t);
  const id = t.agent.keyring.installationId;
  const dr = drServiceFor(t.agent);
  const job = await dr.startPush();
  await proxy.completeHeld;

  const res = await t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ cloudDr: { enabled: false } }),
  });
  expect(res.status).toBe(200);
  const ended = await t.agent.jobs.waitFor(job.id);
  await dr.settled();

  expect(ended.state).not.toBe('succeeded');
  // The push gave its completion up (the job's signal) before the slot's DELETE was sent.
  expect(proxy.events.indexOf('complete given up by the agent')).toBeGreaterThan(-1);
  expect(proxy.events.indexOf('complete given up by the agent')).toBeLessThan(
    proxy.events.indexOf('delete slot'),
  );
  expect((await dr.state.get()).pendingDeletion).toBeUndefined();
  expect(await cloud.listSlotObjects(id)).toEqual([]);
});
