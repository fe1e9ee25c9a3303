// An agent closing while its look at the DR slot (started by a status request) waits on the cloud: the
// close waits for the look to end, so nothing writes the DR state into a data dir being removed.
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { until, within } from '../services/wait';
import { pushViaApi, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
let proxy: Server;
let agent: TestAgent | undefined;

// A plain HTTP relay to the Worker that holds HEAD requests (the look at the slot) while `holding`.
let holding = false;
const held: Array<() => void> = [];

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  proxy = createServer((req, res) => {
    const forward = () => {
      const upstream = request(
        { host: '127.0.0.1', port: cloud.port, path: req.url, method: req.method, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on('error', () => res.destroy());
      req.pipe(upstream);
    };
    if (req.method === 'HEAD' && holding) held.push(forward);
    else forward();
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
});
afterAll(async () => {
  for (const forward of held.splice(0)) forward();
  await agent?.close().catch(() => {});
  proxy?.closeAllConnections();
  await new Promise((resolve) => proxy?.close(resolve));
  await cloud?.dispose();
  await pg?.stop();
});

it('waits for a look at the slot in flight before the data dir goes', async () => {
  const url = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  agent = await startDrAgent(pg, url);
  const job = await pushViaApi(agent);
  expect(job.error).toBeUndefined();

  holding = true;
  // The status of a copy never looked at starts a look at the slot, in the background.
  expect((await agent.request('/api/v1/dr/status')).status).toBe(200);
  await until(async () => held.length === 1, 'the look at the slot to reach the cloud');

  let closed = false;
  const closing = agent.close().then(() => {
    closed = true;
  });
  // The close waits while the look is held (half a second is ample for a close that would not).
  await new Promise((resolve) => setTimeout(resolve, 500));
  expect(closed).toBe(false);
  holding = false;
  held.splice(0)[0]?.();
  await within(closing, 15_000, 'the close once the look was answered');
  agent = undefined;
});
