// The scheduled verification's Cloud DR check against the real Worker: size, created-at and sha256 of the slot vs the last push.
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DrStatus, drServiceFor } from '../../agent/dr/service';
import { isAppError } from '../../agent/errors';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { runVerification } from '../../agent/verification';
import type { TargetResult } from '../../agent/verification/state';
import { BACKUP_CREATED_AT_HEADER } from '../../shared/api/cloud';
import { SIGNATURE_SCHEME, signRequest } from '../../shared/signing';
import { pushViaApi, startDrAgent } from '../dr/helpers';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let cloud: DrCloud;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  t = await startDrAgent(pg, cloud.url);
}, 120_000);
afterAll(async () => {
  await t?.close();
  await cloud?.dispose();
  await pg?.stop();
});

/** The cloud target of one verification run (the run throws when a target failed; its details carry the results). */
async function cloudResult(): Promise<TargetResult> {
  let results: TargetResult[];
  try {
    results = (await runVerification(t.agent, standaloneContext(silentLogger))).results;
  } catch (error) {
    if (!isAppError(error, 'corrupt_backup')) throw error;
    results = (error.details as { results: TargetResult[] }).results;
  }
  const cloudTarget = results.find((r) => r.target === 'cloud');
  if (!cloudTarget) throw new Error('the verification has no cloud target');
  return cloudTarget;
}

/** Uploads `bytes` into the slot with the installation's own signing key, as anyone holding it could. */
async function replaceSlot(bytes: Uint8Array, createdAt: string): Promise<number> {
  const { keyring } = t.agent;
  const token = await signRequest({
    installationId: keyring.installationId,
    method: 'PUT',
    path: '/v1/dr/backup',
    bodySha256: createHash('sha256').update(bytes).digest('hex'),
    bodyLength: bytes.length,
    backupCreatedAt: createdAt,
    privateJwk: keyring.signingKey.privateJwk as JWK,
  });
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${cloud.url}/v1/dr/backup`,
      {
        method: 'PUT',
        agent: false,
        headers: {
          authorization: `${SIGNATURE_SCHEME} ${token}`,
          'content-length': String(bytes.length),
          [BACKUP_CREATED_AT_HEADER]: createdAt,
        },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(bytes);
  });
}

describe('the Cloud DR slot check of the scheduled verification', () => {
  let pushed: { size: number; sha256: string; createdAt: string };

  it('records size, sha256 and created-at of the pushed bytes, and the cloud target is ok', async () => {
    const job = await pushViaApi(t);
    expect(job.error, JSON.stringify(job.error)).toBeUndefined();
    const status = (await (await t.request('/api/v1/dr/status')).json()) as DrStatus;
    const last = status.lastSuccess!;
    expect(last.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(last.createdAt).toBeTruthy();
    expect(last.size).toBeGreaterThan(0);
    pushed = { size: last.size!, sha256: last.sha256!, createdAt: last.createdAt! };

    const result = await cloudResult();
    expect(result, JSON.stringify(result)).toMatchObject({ target: 'cloud', ok: true, check: 'metadata' });
    expect((result.details as { slot: unknown }).slot).toEqual(pushed);
  }, 120_000);

  it('fails naming sha256 alone when the slot holds other bytes of the same size and created-at', async () => {
    expect(await replaceSlot(randomBytes(pushed.size), pushed.createdAt)).toBe(201);
    const result = await cloudResult();
    expect(result).toMatchObject({ target: 'cloud', ok: false, check: 'metadata' });
    expect(result.error?.code).toBe('integrity');
    expect(result.error?.message).toMatch(/^sha256 differs: /);
    expect(result.error?.message).not.toMatch(/size|created-at/);
    expect(result.error?.message).toContain(pushed.sha256.slice(0, 12));
  }, 60_000);

  it('fails naming size, created-at and sha256 when a newer upload of other bytes replaced the slot', async () => {
    // Newer by a millisecond: the agent's next backup (made later) may still replace it.
    const newer = new Date(Date.parse(pushed.createdAt) + 1).toISOString();
    expect(await replaceSlot(randomBytes(pushed.size + 100), newer)).toBe(201);
    const result = await cloudResult();
    expect(result).toMatchObject({ target: 'cloud', ok: false, check: 'metadata' });
    const message = result.error?.message ?? '';
    expect(message).toContain(`size differs: the cloud copy is ${pushed.size + 100} bytes, ${pushed.size}`);
    expect(message).toContain(`created-at differs: the cloud copy was made at ${newer}`);
    expect(message).toContain('sha256 differs');
    // The agent's record is what it sent, not what the cloud now holds.
    expect((await drServiceFor(t.agent).status()).lastSuccess?.sha256).toBe(pushed.sha256);
  }, 60_000);

  it("is ok again after the next push puts the agent's own bytes back", async () => {
    const job = await pushViaApi(t);
    expect(job.error, JSON.stringify(job.error)).toBeUndefined();
    const result = await cloudResult();
    expect(result, JSON.stringify(result)).toMatchObject({ target: 'cloud', ok: true, check: 'metadata' });
  }, 120_000);
});
