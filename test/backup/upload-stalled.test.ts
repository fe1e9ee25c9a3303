// An upload whose sender goes silent mid-body (a laptop that sleeps, a network that drops without a
// reset: no FIN, no RST reaches the agent) is ended once nothing has arrived for the upload's idle limit:
// its temp file, and the disk space it holds, go, and the request is answered. The agent's server has no
// request timeout (a large upload may last hours): before, such an upload held both until the agent
// restarted. A real HTTP server (serveApp) and a raw socket that sends half a backup and then nothing.
import { readdir, readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveApp } from '../../agent/app';
import { uploadTiming } from '../../agent/backup/upload';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { until } from '../services/wait';

let pg: TestPostgres;
let t: TestAgent;
let server: ReturnType<typeof serveApp>;
let port = 0;
let good: Buffer;
let name = '';
const idleMs = uploadTiming.idleMs;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  name = (job.result as { backup: { filename: string } }).backup.filename;
  good = await readFile(t.agent.catalog.pathOf(name));
  // Sent again under its own name (the name must fit the header's date), so the copy here goes first.
  await t.agent.catalog.delete(name);
  server = await new Promise((resolve) => {
    const s = serveApp(t.app, { hostname: '127.0.0.1', port: 0 }, (info) => {
      port = info.port;
      resolve(s);
    });
  });
}, 60_000);
afterAll(async () => {
  uploadTiming.idleMs = idleMs;
  (server as import('node:http').Server | undefined)?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await t?.close();
  await pg?.stop();
});

describe('an upload whose sender goes silent', () => {
  it('is ended after the idle limit: its temp file goes and the request is answered', async () => {
    expect(idleMs).toBe(5 * 60_000);
    uploadTiming.idleMs = 1500;
    const before = (await readdir(t.agent.paths.backups)).sort();
    const socket = connect(port, '127.0.0.1');
    let answer = '';
    socket.setEncoding('utf8').on('data', (chunk: string) => {
      answer += chunk;
    });
    try {
      await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      socket.write(
        `POST /api/v1/backups/upload?filename=${name} HTTP/1.1\r\n` +
          `host: 127.0.0.1\r\nauthorization: Bearer ${TEST_TOKEN}\r\n` +
          `content-length: ${good.length}\r\n\r\n`,
      );
      // Half the backup, then silence with the connection still open.
      socket.write(good.subarray(0, Math.floor(good.length / 2)));
      const temps = async () => (await readdir(t.agent.paths.backups)).filter((n) => !before.includes(n));
      await until(async () => (await temps()).length > 0, 'the upload to start');
      await until(async () => answer.includes('\r\n\r\n'), 'the answer to the upload', 150);
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer).toContain('nothing arrived for 1.5 s');
      expect(await temps()).toEqual([]);
      expect(await t.agent.catalog.exists(name)).toBe(false);
    } finally {
      socket.destroy();
    }
  }, 60_000);
});
