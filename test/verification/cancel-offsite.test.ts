// A Cancel of the scheduled verification while an offsite destination does not answer: the job ends at
// once, not when the destination's connection gives up.
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { settingsModule } from '../../agent/http/routes/settings';
import { startVerification } from '../../agent/verification/run';
import { call } from '../health/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
/** A server that takes connections and never says a word: an S3 server that stopped answering. */
let silent: Server;
const held = new Set<Socket>();

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule] });
  silent = createServer((socket) => {
    held.add(socket);
    socket.on('close', () => held.delete(socket));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const { port } = silent.address() as { port: number };
  const saved = await call(t, 'PUT', '/settings', {
    offsite: {
      s3: {
        enabled: true,
        provider: 'other',
        endpoint: `http://127.0.0.1:${port}`,
        region: 'us-east-1',
        bucket: 'gem-backups',
        accessKeyId: 'not-used',
        secretAccessKey: 'not-used-either',
        forcePathStyle: true,
        autoUpload: false,
      },
    },
  });
  expect(saved.status, JSON.stringify(saved.body)).toBe(200);
}, 120_000);
afterAll(async () => {
  await t?.close();
  for (const socket of held) socket.destroy();
  await new Promise((resolve) => silent?.close(resolve));
  await pg?.stop();
});

describe('a Cancel of the verification', () => {
  it('ends it at once while an offsite destination does not answer its listing', async () => {
    const job = await startVerification(t.agent);
    while (held.size === 0) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 500));
    const cancelledAt = Date.now();
    t.agent.jobs.cancel(job.id);
    const ended = await t.agent.jobs.waitFor(job.id);
    expect(ended.state).toBe('cancelled');
    expect(Date.now() - cancelledAt).toBeLessThan(5000);
  }, 90_000);
});
