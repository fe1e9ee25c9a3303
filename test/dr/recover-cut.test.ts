// A DR recovery whose download from the cloud is cut halfway (the connection lost, stalled past the
// client's timeout, or ended cleanly but short) fails with a clear dependency_down error that says so,
// not Node's bare "aborted" nor a damaged backup:
// nothing of the download is left (work folder, open files), the keys and backups are as they were,
// and the same recovery run again completes. A real HTTP server in front of the Worker cuts the answer.
import { readdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { drServiceFor } from '../../agent/dr/service';
import type { Job } from '../../agent/jobs/runner';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { openFilesUnder, pushViaApi, startDrAgent } from './helpers';

/** What the stand-in does with the recovery's body after its first CUT_AT bytes. */
let mode: 'cut' | 'stall' | 'end' | 'pass' = 'pass';
const CUT_AT = 50_000;

let pg: TestPostgres;
let cloud: DrCloud;
let server: http.Server;
let a: TestAgent;
let b: TestAgent;

/** Forwards every request to the Worker; the answer's body is cut, stalled or passed after CUT_AT bytes. */
async function startCuttingCloud(target: string): Promise<http.Server> {
  const cutting = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const headers = { ...req.headers, 'content-length': String(body.length) };
      const out = http.request(
        `${target}${req.url}`,
        { method: req.method, headers, agent: false },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          let sent = 0;
          let cut = false;
          answer.on('data', (chunk: Buffer) => {
            if (cut) return;
            if (mode === 'pass' || sent + chunk.length < CUT_AT) {
              sent += chunk.length;
              res.write(chunk);
              return;
            }
            // Cut once the head and the first bytes are on their way: the agent has begun its download.
            cut = true;
            res.write(chunk.subarray(0, CUT_AT - sent), () => {
              if (mode === 'cut') setTimeout(() => res.destroy(), 100);
            });
            // 'end': the answer ends cleanly (its last chunk sent), as a server whose read failed may end it.
            if (mode === 'end') res.end();
            answer.destroy();
          });
          // Only an answer passed whole ends: the Worker's end, already on its way when the answer was
          // cut, would otherwise end a cut or stalled one cleanly.
          answer.on('end', () => {
            if (!cut) res.end();
          });
        },
      );
      out.on('error', () => res.destroy());
      out.end(body);
    });
  });
  await new Promise<void>((r) => cutting.listen(0, '127.0.0.1', r));
  return cutting;
}

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  server = await startCuttingCloud(cloud.url);
  a = await startDrAgent(pg, cloud.url);
  expect((await pushViaApi(a)).state).toBe('succeeded');
  const { port } = server.address() as AddressInfo;
  b = await startDrAgent(pg, `http://127.0.0.1:${port}`, { timeoutMs: 1500 });
});
afterAll(async () => {
  await b?.close();
  await a?.close();
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r));
  await cloud?.dispose();
  await pg?.stop();
});

async function recover(t: TestAgent): Promise<Job> {
  return t.agent.jobs.waitFor((await drServiceFor(t.agent).startRecover(a.agent.keyring.installationId)).id);
}

describe('a DR recovery whose download is cut halfway', () => {
  for (const how of ['cut', 'stall'] as const) {
    it(`(${how === 'cut' ? 'the connection lost' : 'stalled past the timeout'}) fails saying so and changes nothing`, async () => {
      const keyring = await readFile(b.agent.paths.keyring);
      mode = how;
      const job = await recover(b);
      expect(job.state).toBe('failed');
      expect(job.error?.code).toBe('dependency_down');
      expect(job.error?.message).toMatch(
        /^the recovery download from the DR cloud was cut off after \d+ of \d+ bytes .*: nothing was changed/,
      );
      expect(job.error?.message).not.toContain(a.agent.keyring.installationId);
      expect(await readdir(b.agent.paths.work).catch(() => [])).toEqual([]);
      expect(await openFilesUnder(b.agent.paths.work)).toEqual([]);
      expect((await readFile(b.agent.paths.keyring)).equals(keyring)).toBe(true);
      expect(await b.agent.catalog.list()).toEqual([]);
      expect(await drServiceFor(b.agent).unfinished.read()).toBeNull();
    });
  }

  it('(ended cleanly but short) fails saying it was cut short, not that the backup is corrupt, and changes nothing', async () => {
    const keyring = await readFile(b.agent.paths.keyring);
    mode = 'end';
    const job = await recover(b);
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('dependency_down');
    expect(job.error?.message).toMatch(
      /^the recovery download from the DR cloud was cut short: \d+ of \d+ bytes: nothing was changed; run the recovery again$/,
    );
    expect(await readdir(b.agent.paths.work).catch(() => [])).toEqual([]);
    expect((await readFile(b.agent.paths.keyring)).equals(keyring)).toBe(true);
    expect(await b.agent.catalog.list()).toEqual([]);
    expect(await drServiceFor(b.agent).unfinished.read()).toBeNull();
  });

  it('run again over a whole connection, recovers', async () => {
    mode = 'pass';
    const job = await recover(b);
    expect(job.error).toBeUndefined();
    expect(b.agent.keyring.installationId).toBe(a.agent.keyring.installationId);
  });
});
