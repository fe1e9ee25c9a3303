// Cloud DR end to end: install A pushes (reuse, temporary, multipart with cut connections and resume);
// A is deleted; install B recovers with A's id alone and ends with A's data, scripts, identity and keys; opt-out.
import { readdir, stat } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import type { DrFaults } from '../../agent/dr/client';
import type { PushResult } from '../../agent/dr/push';
import type { RecoverResult } from '../../agent/dr/recover';
import { type DrStatus, drServiceFor } from '../../agent/dr/service';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { addRandomData, folderFiles, pushViaApi, rowCounts, secureAttributes, startDrAgent } from './helpers';

const MiB = 1024 * 1024;
let pg: TestPostgres;
let cloud: DrCloud;
let a: TestAgent;
let b: TestAgent | undefined;
const faults: DrFaults = {};

// What A had, to compare B with after A is gone.
let aId = '';
let aSigningX = '';
let aCounts: Record<string, number> = {};
let aScripts: Record<string, string> = {};
let aConfig: Record<string, string> = {};
let aSecrets: Record<number, string> = {};

beforeAll(async () => {
  ({ pg, cloud } = await startAll({ pg: startPostgres, cloud: startDrCloud }));
  a = await startDrAgent(pg, cloud.url, {
    faults,
    tuning: { multipartThreshold: MiB, partSize: 5 * MiB, partAttempts: 3, retryDelayMs: 50 },
  });
  aId = a.agent.keyring.installationId;
  aSigningX = a.agent.keyring.signingKey.publicJwk.x;
});
afterAll(async () => {
  await b?.close();
  await a?.close().catch(() => {});
  await cloud?.dispose();
  await pg?.stop();
});

async function status(t: TestAgent): Promise<DrStatus> {
  return (await (await t.request('/api/v1/dr/status')).json()) as DrStatus;
}

describe('Cloud DR push, recovery on a fresh install, opt-out', () => {
  it('reuses a 2-hour-old local backup: no new backup is made, the local one stays', async () => {
    const ctx = standaloneContext(silentLogger);
    const old = await createBackup(backupDeps(a.agent), ctx, { now: new Date(Date.now() - 2 * 3600_000) });
    const before = (await stat(a.agent.catalog.pathOf(old.filename))).mtimeMs;
    const job = await pushViaApi(a);
    expect(job.error).toBeUndefined();
    const result = job.result as PushResult;
    expect(result).toMatchObject({ backup: old.filename, reused: true, temporary: false, multipart: false });
    expect((await a.agent.catalog.list()).map((x) => x.filename)).toEqual([old.filename]);
    expect((await stat(a.agent.catalog.pathOf(old.filename))).mtimeMs).toBe(before);
    expect(await cloud.listSlotObjects(aId)).toHaveLength(1);
    const s = await status(a);
    expect(s.lastPush).toMatchObject({
      outcome: 'succeeded',
      trigger: 'manual',
      size: result.size,
      reused: true,
    });
    expect(s.escrowKid).toBe('escrow-test-1');
    expect(s.enabled).toBe(true);
    await a.agent.catalog.delete(old.filename);
  });

  it('never reuses a safety backup, one whose verify failed or one dated after the clock: it makes a temporary one', async () => {
    const deps = backupDeps(a.agent);
    const ctx = standaloneContext(silentLogger);
    const safety = await createBackup(deps, ctx, { kind: 'safety', now: new Date(Date.now() - 3600_000) });
    const rotted = await createBackup(deps, ctx, { now: new Date(Date.now() - 2 * 3600_000) });
    // Made while the clock was a year ahead: "younger than 24 h" by subtraction, and the cloud refuses it.
    const ahead = await createBackup(deps, ctx, { now: new Date(Date.now() + 365 * 86_400_000) });
    await a.agent.catalog.updateRecord(rotted.filename, {
      verifiedAt: new Date().toISOString(),
      verifyResult: 'failed',
      verifyError: 'chunk 3: authentication failed',
    });
    try {
      const job = await pushViaApi(a);
      expect(job.error).toBeUndefined();
      const result = job.result as PushResult;
      expect(result).toMatchObject({ reused: false, temporary: true });
      expect([safety.filename, rotted.filename, ahead.filename]).not.toContain(result.backup);
      expect((await a.agent.catalog.list()).map((x) => x.filename).sort()).toEqual(
        [safety.filename, rotted.filename, ahead.filename].sort(),
      );
    } finally {
      await a.agent.catalog.delete(safety.filename);
      await a.agent.catalog.delete(rotted.filename);
      await a.agent.catalog.delete(ahead.filename);
    }
  });

  it('with no recent local backup, makes a temporary one and removes it after the push', async () => {
    const job = await pushViaApi(a);
    expect(job.error).toBeUndefined();
    const result = job.result as PushResult;
    expect(result).toMatchObject({ reused: false, temporary: true, multipart: false });
    expect(await a.agent.catalog.list()).toEqual([]);
    expect((await readdir(a.agent.paths.backups)).filter((n) => !n.startsWith('.'))).toEqual([]);
    expect(await cloud.listSlotObjects(aId)).toHaveLength(1);
  });

  it('goes multipart for a big backup and resumes after the connection is cut', async () => {
    await addRandomData(a.agent, 14);
    aCounts = await rowCounts(a.agent);
    aScripts = await folderFiles(a.agent.sources.scriptsDir);
    aConfig = await folderFiles(a.agent.sources.configDir);
    aSecrets = await secureAttributes(a.agent);
    expect(Object.keys(aSecrets).length).toBeGreaterThan(0);
    const dr = drServiceFor(a.agent);

    // Part 1 goes through; part 2 is cut on every try: the push fails, the upload is kept for later.
    faults.cutUploads = { after: 1, times: 3, afterBytes: 2 * MiB };
    const failed = await a.agent.jobs.waitFor((await dr.startPush()).id);
    expect(failed.state).toBe('failed');
    expect(failed.error?.code).toBe('dependency_down');
    const mid = await status(a);
    expect(mid.lastPush).toMatchObject({ outcome: 'failed' });
    expect(mid.upload).not.toBeNull();
    // The temporary backup waits for the resume.
    expect((await a.agent.catalog.list()).map((x) => x.filename)).toEqual([mid.upload!.backup]);

    // A fresh attempt asks which parts the cloud holds and sends only the rest; one more cut is retried.
    faults.cutUploads = { after: 0, times: 1, afterBytes: 1 * MiB };
    const job = await a.agent.jobs.waitFor((await dr.startPush()).id);
    expect(job.error).toBeUndefined();
    const result = job.result as PushResult;
    expect(result.size).toBeGreaterThan(10 * MiB);
    expect(result).toMatchObject({
      multipart: true,
      resumed: true,
      partsSkipped: 1,
      retries: 1,
      temporary: true,
    });
    expect(result.partsSent).toBe(Math.ceil(result.size / (5 * MiB)) - 1);
    expect(await a.agent.catalog.list()).toEqual([]);
    expect((await status(a)).upload).toBeNull();
    expect(await cloud.listSlotObjects(aId)).toHaveLength(1);
  });

  it('recovers install A onto a fresh install B with the installation id alone', async () => {
    // A's data dir (keyring included) is deleted.
    await a.close();
    b = await startDrAgent(pg, cloud.url, { seed: false });
    expect(b.agent.keyring.installationId).not.toBe(aId);
    expect(await rowCounts(b.agent)).toEqual({});

    // Typed the way it was read from a note: upper case, in groups of eight.
    const typed = aId.toUpperCase().replace(/(.{8})(?=.)/g, '$1 ');
    const res = await b.request('/api/v1/dr/recover', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ installationId: typed }),
    });
    expect(res.status).toBe(202);
    const job = await b.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    expect(job.error).toBeUndefined();
    expect(job.kind).toBe('dr-recover');
    const result = job.result as RecoverResult;

    expect(b.agent.keyring.installationId).toBe(aId);
    expect(b.agent.keyring.signingKey.publicJwk.x).toBe(aSigningX);
    expect(await rowCounts(b.agent)).toEqual(aCounts);
    expect(await folderFiles(b.agent.sources.scriptsDir)).toEqual(aScripts);
    expect(await folderFiles(b.agent.sources.configDir)).toEqual(aConfig);
    expect(await secureAttributes(b.agent)).toEqual(aSecrets);
    // The recovered backup is a local backup now, readable with the recovered keys.
    const local = await b.agent.catalog.info(result.backup);
    expect(local).toMatchObject({ installation: aId.slice(0, 8), verifyResult: 'ok' });
    expect(b.agent.keyring.isActive(local.installationTag)).toBe(true);
  });

  it('pushes again from B under A identity, then opting out deletes the slot', async () => {
    const job = await pushViaApi(b!);
    expect(job.error).toBeUndefined();
    expect(job.result).toMatchObject({ reused: true });
    expect(await cloud.listSlotObjects(aId)).toHaveLength(1);

    const res = await b!.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ cloudDr: { enabled: false } }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { warnings: { code: string }[] };
    expect(body.warnings.map((w) => w.code)).toContain('cloud_dr_opt_out');
    await drServiceFor(b!.agent).settled();
    expect(await cloud.listSlotObjects(aId)).toEqual([]);
    const s = await status(b!);
    expect(s.pendingDeletion).toBeNull();
    expect(s.enabled).toBe(false);
    expect(s.reason).toMatch(/turned off/);
    expect((await b!.request('/api/v1/dr/push', { method: 'POST' })).status).toBe(422);
  });
});
