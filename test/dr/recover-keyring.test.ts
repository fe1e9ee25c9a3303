// Recovery from a cloud that answers with a bad keyring (one without the backup's master key, or not
// a keyring at all): the job fails with a clear error and the installation keeps its keys, identity,
// backups and DR state. A real HTTP server in front of the Worker stands in for the compromised cloud.
import { randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { drServiceFor } from '../../agent/dr/service';
import type { Job } from '../../agent/jobs/runner';
import type { KeyringFile } from '../../agent/keys/keyring';
import { RECOVER_FILE_KEY_HEADER, RECOVER_KEYRING_HEADER } from '../../shared/api/cloud';
import { unwrapWithX25519, wrapForX25519 } from '../../shared/envelope';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud, x25519Pair } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { pushViaApi, rowCounts, startDrAgent } from './helpers';

/** Rewrites the keyring the cloud escrowed; the file key and the backup pass through genuine. */
type KeyringTamper = (keyring: Uint8Array) => Uint8Array;

interface TamperingCloud {
  url: string;
  tamper: KeyringTamper;
  close(): Promise<void>;
}

let pg: TestPostgres;
let cloud: DrCloud;
let proxy: TamperingCloud;
let a: TestAgent;
let b: TestAgent;
let aId = '';

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  proxy = await startTamperingCloud(cloud.url);
  a = await startDrAgent(pg, cloud.url);
  aId = a.agent.keyring.installationId;
  expect((await pushViaApi(a)).error).toBeUndefined();
  b = await startDrAgent(pg, proxy.url);
  const made = await b.agent.jobs.waitFor((await startBackup(b.agent, { kind: 'manual' })).id);
  expect(made.state).toBe('succeeded');
});
afterAll(async () => {
  await b?.close().catch(() => {});
  await a?.close().catch(() => {});
  await proxy?.close();
  await cloud?.dispose();
  await pg?.stop();
});

/**
 * A cloud that holds the escrow answer in its hands: it asks the real Worker for the recovery with a
 * one-time key of its own, opens the file key and the keyring, and hands the agent the genuine file
 * key with `tamper(keyring)`, both wrapped to the agent's one-time key, over the unchanged backup.
 */
async function startTamperingCloud(target: string): Promise<TamperingCloud> {
  const forward = async (req: http.IncomingMessage, body: Buffer): Promise<http.IncomingMessage> =>
    new Promise((resolve, reject) => {
      const headers = { ...req.headers, 'content-length': String(body.length) };
      const out = http.request(`${target}${req.url}`, { method: req.method, headers, agent: false }, resolve);
      out.on('error', reject);
      out.end(body);
    });
  const recover = async (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => {
    const asked = JSON.parse(body.toString('utf8')) as { installationId: string; recipient: JWK };
    const ours = await x25519Pair('tampering-cloud');
    const answer = await forward(req, Buffer.from(JSON.stringify({ ...asked, recipient: ours.publicJwk })));
    if (answer.statusCode !== 200) {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
      return;
    }
    const header = (name: string) => answer.headers[name.toLowerCase()] as string;
    const fileKey = await unwrapWithX25519(header(RECOVER_FILE_KEY_HEADER), ours.privateJwk);
    const keyring = await unwrapWithX25519(header(RECOVER_KEYRING_HEADER), ours.privateJwk);
    const headers = { ...answer.headers };
    headers[RECOVER_FILE_KEY_HEADER.toLowerCase()] = (
      await wrapForX25519(fileKey, asked.recipient, 'escrow')
    ).jwe;
    headers[RECOVER_KEYRING_HEADER.toLowerCase()] = (
      await wrapForX25519(state.tamper(keyring), asked.recipient, 'escrow-keyring')
    ).jwe;
    res.writeHead(200, headers);
    answer.pipe(res);
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const handled =
        req.method === 'POST' && req.url === '/v1/recover'
          ? recover(req, res, body)
          : forward(req, body).then((answer) => {
              res.writeHead(answer.statusCode ?? 502, answer.headers);
              answer.pipe(res);
            });
      handled.catch(() => res.destroy());
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  const state: TamperingCloud = {
    url: `http://127.0.0.1:${port}`,
    tamper: (k) => k,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
  return state;
}

function editKeyring(change: (file: KeyringFile) => void): KeyringTamper {
  return (bytes) => {
    const file = JSON.parse(Buffer.from(bytes).toString('utf8')) as KeyringFile;
    change(file);
    return Buffer.from(JSON.stringify(file));
  };
}

async function recoverViaApi(t: TestAgent, installationId: string): Promise<Job> {
  const res = await t.request('/api/v1/dr/recover', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    // B has a backup of its own: not a fresh install, so the recovery is confirmed.
    body: JSON.stringify({ installationId, confirm: installationId }),
  });
  if (res.status !== 202) throw new Error(`recover refused: ${res.status} ${await res.text()}`);
  return t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
}

/** Everything a refused recovery must leave as it was. */
async function snapshot(t: TestAgent) {
  return {
    keyringFile: await readFile(t.agent.paths.keyring),
    installationId: t.agent.keyring.installationId,
    masterKeyIds: t.agent.keyring.masterKeys.map((k) => k.id),
    catalog: await t.agent.catalog.list(),
    drState: await drServiceFor(t.agent).state.get(),
    rows: await rowCounts(t.agent),
    work: (await readdir(t.agent.paths.work).catch(() => [])).filter((n) => n.includes('dr-recover')),
  };
}

const NOT_THE_BACKUPS_KEY = /recovered keyring from the DR cloud does not hold the backup's master key/;
const NOT_A_KEYRING = /recovered keyring from the DR cloud is not a valid keyring/;

describe('Cloud DR recovery with a bad keyring from the cloud', () => {
  const cases: [string, KeyringTamper, RegExp][] = [
    [
      'a keyring whose master keys are others (same installation id)',
      editKeyring((file) => {
        file.masterKeys = [
          {
            id: `mk-${randomBytes(8).toString('hex')}`,
            key: randomBytes(32).toString('base64url'),
            createdAt: new Date().toISOString(),
            status: 'active',
            installationId: file.installationId,
          },
        ];
      }),
      NOT_THE_BACKUPS_KEY,
    ],
    [
      "a keyring with the backup's key id but other key bytes",
      editKeyring((file) => {
        for (const k of file.masterKeys) k.key = randomBytes(32).toString('base64url');
      }),
      NOT_THE_BACKUPS_KEY,
    ],
    ['bytes that are not JSON', () => Buffer.from('{"format":"gem-keyring","version":1,'), NOT_A_KEYRING],
  ];

  for (const [what, tamper, message] of cases) {
    it(`refuses ${what} and changes nothing`, async () => {
      const before = await snapshot(b);
      expect(before.catalog).toHaveLength(1);
      proxy.tamper = tamper;
      const job = await recoverViaApi(b, aId);
      expect(job.state).toBe('failed');
      const after = await snapshot(b);
      expect(after.keyringFile.equals(before.keyringFile)).toBe(true);
      expect(after).toEqual(before);
      expect(b.agent.keyring.installationId).not.toBe(aId);
      expect(job.error?.code).toBe('dependency_down');
      expect(job.error?.message).toMatch(message);
    });
  }

  it('recovers through the same stand-in when it passes the keyring through unchanged', async () => {
    proxy.tamper = (k) => k;
    const job = await recoverViaApi(b, aId);
    expect(job.error).toBeUndefined();
    expect(b.agent.keyring.installationId).toBe(aId);
  });
});
