// A recovery from the DR cloud that stops after its keys step (here: the restore finds no disk space)
// leaves the box under the recovered identity with its own data. It is recorded, `dr status` shows it,
// every push (API, service, nightly) is refused and the cloud copy stays byte for byte the one A pushed;
// running the recovery again (the id typed in upper case, grouped) reuses the copy already stored and
// finishes it; `--abandon` takes another box back to its own identity instead.

import { createHash } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { startBackup } from '../../agent/backup/operations';
import { DrClient } from '../../agent/dr/client';
import type { RecoverFaults, RecoverResult } from '../../agent/dr/recover';
import { type DrStatus, drServiceFor } from '../../agent/dr/service';
import { normalizeInstallationId } from '../../agent/dr/unfinished';
import { healthFor } from '../../agent/health/service';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { startRestore } from '../../agent/restore/restore';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { runProcess } from '../../agent/system/spawn';
import { installationTag } from '../../shared/envelope';
import { type BuiltCli, buildCli } from '../cli/built-cli';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud, x25519Pair } from '../services/dr-cloud';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import { cliEnvOf, pushViaApi, rowCounts, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
/** The CLI built from the current sources (test/cli/built-cli.ts), as the operator's `gem-backup`. */
let built: BuiltCli;
let a: TestAgent;
let b: TestAgent;
let c: TestAgent;
let aId = '';
let aCounts: Record<string, number> = {};
/** What the cloud answered A's id with, as B downloaded it the first time. */
let goodSha = '';
const bFaults: RecoverFaults = {};
const cFaults: RecoverFaults = {};
const FULL_DISK = { requiredBytes: Number.MAX_SAFE_INTEGER };

beforeAll(async () => {
  ({ pg, cloud, built } = await startAll({ pg: startPostgres, cloud: startDrCloud, built: buildCli }));
  [a, b, c] = await Promise.all([
    startDrAgent(pg, cloud.url),
    startDrAgent(pg, cloud.url, { recoverFaults: bFaults }),
    startDrAgent(pg, cloud.url, { recoverFaults: cFaults }),
  ]);
  aId = a.agent.keyring.installationId;
  // A's data differs from the sample data every fresh box is seeded with.
  await withSql(databaseUrl(a.agent.sources.conn), async (sql) => {
    await sql`create table public.drill_extra (id int primary key)`;
    await sql`insert into public.drill_extra select generate_series(1, 7)`;
  });
  aCounts = await rowCounts(a.agent);
  expect((await pushViaApi(a)).error).toBeUndefined();
});
afterAll(async () => {
  await c?.close().catch(() => {});
  await b?.close().catch(() => {});
  await a?.close().catch(() => {});
  await cloud?.dispose();
  await pg?.stop();
  await built?.remove();
});

async function status(t: TestAgent): Promise<DrStatus> {
  return (await (await t.request('/api/v1/dr/status')).json()) as DrStatus;
}

/** The sha256 of the backup the cloud hands out for `installationId` now (one recovery request). */
async function cloudCopySha(installationId: string): Promise<string> {
  const client = new DrClient({
    baseUrl: cloud.url,
    identity: () => ({ installationId: aId, signingKey: a.agent.keyring.signingKey }),
  });
  const res = await client.recover(installationId, (await x25519Pair('fetch-back')).publicJwk);
  const hash = createHash('sha256');
  for await (const chunk of res.body) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Grouped in fours with spaces and dashes, upper case: as an id read out over the phone is written down. */
function asTyped(id: string): string {
  return id
    .toUpperCase()
    .match(/.{4}/g)!
    .map((g, i) => (i % 2 ? `${g} - ` : g))
    .join('')
    .replace(/ - $/, '');
}

describe('an unfinished DR recovery', () => {
  it('normalizes an installation id typed in upper case, with spaces or dashes', () => {
    const id = '9ebf5135b0630078788c892f21762d3c';
    expect(normalizeInstallationId('9EBF5135B0630078788C892F21762D3C')).toBe(id);
    expect(normalizeInstallationId(' 9ebf5135 b0630078 788c892f 21762d3c ')).toBe(id);
    expect(normalizeInstallationId('9ebf-5135-b063-0078-788c-892f-2176-2d3c')).toBe(id);
    expect(normalizeInstallationId(asTyped(id))).toBe(id);
    expect(normalizeInstallationId('9ebf5135b0630078788c892f21762d3')).toBeUndefined();
    expect(normalizeInstallationId('9ebf5135b0630078788c892f21762d3g')).toBeUndefined();
  });

  it('stops after the keys step, is recorded and shown, and every push is refused', async () => {
    bFaults.restore = FULL_DISK;
    const bOwnId = b.agent.keyring.installationId;
    const bCounts = await rowCounts(b.agent);
    const job = await b.agent.jobs.waitFor((await drServiceFor(b.agent).startRecover(asTyped(aId))).id);
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('no_space');
    // The keys were installed: B now carries A's identity with its own (sample) data.
    expect(b.agent.keyring.installationId).toBe(aId);
    expect(b.agent.keyring.installationId).not.toBe(bOwnId);
    expect(await rowCounts(b.agent)).toEqual(bCounts);

    const record = JSON.parse(await readFile(join(b.dataDir, 'dr-recovery.json'), 'utf8')) as {
      installationId: string;
      backup: string;
      sha256: string;
    };
    expect(record.installationId).toBe(aId);
    goodSha = record.sha256;

    const s = await status(b);
    expect(s.unfinishedRecovery).toMatchObject({ installationId: aId });
    // The installation by its first 8 characters: the whole id is the DR recovery credential, and this
    // sentence goes to job records, API answers and terminals.
    const sentence = `a recovery from the DR cloud of installation ${aId.slice(0, 8)}… did not finish: run \`gem-backup dr recover --installation-id ID\` again with the whole id (\`gem-backup dr status --show-installation-id\`)`;
    expect(s.unfinishedRecovery?.message).toContain(sentence);
    expect(s.unfinishedRecovery?.message).not.toContain(aId);
    expect(s.unfinishedRecovery?.reason).not.toContain(aId);
    // Health (and so the page's status panel and the alerts) says it, without the id.
    const health = await healthFor(b.agent).evaluate();
    expect(health.areas.dr).toMatchObject({ status: 'failing', reason: s.unfinishedRecovery?.reason });

    // Push Now through the API, the service (as the CLI calls it), and the nightly run.
    const refused = await b.request('/api/v1/dr/push', { method: 'POST' });
    expect(refused.status).toBe(422);
    const refusal = ((await refused.json()) as { error: { message: string } }).error.message;
    expect(refusal).toContain(sentence);
    expect(refusal).not.toContain(aId);
    await expect(drServiceFor(b.agent).startPush('manual')).rejects.toThrow(sentence);
    await drServiceFor(b.agent).runNightly();
    const after = await status(b);
    expect(after.lastPush).toMatchObject({ trigger: 'nightly', outcome: 'skipped' });
    expect(after.lastPush?.reason).not.toContain(aId);
    expect(after.lastSuccess).toBeNull();

    // Back up now and the schedule are refused too: B's own data would go under A's name.
    const listed = (await b.agent.catalog.list()).map((x) => x.filename);
    const backup = await b.request('/api/v1/backups', { method: 'POST' });
    expect(backup.status).toBe(409);
    const message = ((await backup.json()) as { error: { message: string } }).error.message;
    expect(message).toMatch(/^no backup is made now, because a recovery from the DR cloud did not finish/);
    expect(message).not.toContain(aId);
    await expect(startBackup(b.agent, { kind: 'scheduled' })).rejects.toThrow(/no backup is made now/);
    expect((await b.agent.catalog.list()).map((x) => x.filename)).toEqual(listed);
  });

  it('the CLI refuses dr push with the same sentence, shows it in dr status, names its option for a bad id', async () => {
    const env = cliEnvOf(b, pg, cloud.url);
    const cli = (...args: string[]) => runProcess(process.execPath, [built.path, ...args], { env });
    const push = await cli('dr', 'push');
    expect(push.code).toBe(1);
    expect(push.stderr.trim()).toContain(
      `a recovery from the DR cloud of installation ${aId.slice(0, 8)}… did not finish: run \`gem-backup dr recover --installation-id ID\` again with the whole id`,
    );
    expect(push.stderr).not.toContain(aId);
    const shown = await cli('dr', 'status', '--json', '--show-installation-id');
    expect(shown.code, shown.stderr).toBe(0);
    expect((JSON.parse(shown.stdout) as DrStatus).unfinishedRecovery?.installationId).toBe(aId);
    const create = await cli('create');
    expect(create.code).toBe(1);
    expect(create.stderr).toContain(
      'no backup is made now, because a recovery from the DR cloud did not finish',
    );
    const bad = await cli('dr', 'recover', '--installation-id', '9EBF 5135 nope');
    expect(bad.code).toBe(1);
    expect(bad.stderr.trim()).toMatch(/^gem-backup: --installation-id must be the 32 hex characters/);
    expect(await cloud.listSlotObjects(aId)).toHaveLength(1);
  });

  it('--abandon takes another box back to its own identity, and it pushes to its own slot', async () => {
    cFaults.restore = FULL_DISK;
    const cOwnId = c.agent.keyring.installationId;
    const cOwnKey = c.agent.keyring.activeKey.id;
    const dr = drServiceFor(c.agent);
    const job = await c.agent.jobs.waitFor((await dr.startRecover(aId)).id);
    expect(job.state).toBe('failed');
    expect(c.agent.keyring.installationId).toBe(aId);
    expect((await status(c)).unfinishedRecovery).not.toBeNull();

    expect(await dr.abandonRecovery()).toBe(true);
    expect(c.agent.keyring.installationId).toBe(cOwnId);
    expect(c.agent.keyring.activeKey.id).toBe(cOwnKey);
    expect((await status(c)).unfinishedRecovery).toBeNull();
    expect(await dr.abandonRecovery()).toBe(false);
    const pushed = await pushViaApi(c);
    expect(pushed.error).toBeUndefined();
    expect(await cloud.listSlotObjects(cOwnId)).toHaveLength(1);
  });

  it('--abandon refuses a damaged record of an unfinished recovery, and changes nothing', async () => {
    const dr = drServiceFor(c.agent);
    const ownId = c.agent.keyring.installationId;
    const path = c.agent.paths.drRecovery;
    await writeFile(path, '{"installationId": "damaged');
    try {
      await expect(dr.abandonRecovery()).rejects.toMatchObject({
        code: 'unprocessable',
        message: expect.stringMatching(
          /is damaged: .*; giving it up is refused, because the record no longer says which identity was this box's own: nothing was changed$/,
        ),
      });
      expect(await readFile(path, 'utf8')).toBe('{"installationId": "damaged');
      expect(c.agent.keyring.installationId).toBe(ownId);
      // Its hold stays: no push goes while the record cannot be read.
      expect((await status(c)).unfinishedRecovery).not.toBeNull();
    } finally {
      await rm(path, { force: true });
    }
  });

  it("the cloud copy is still A's, byte for byte", async () => {
    expect(goodSha).toMatch(/^[0-9a-f]{64}$/);
    expect(await cloudCopySha(aId)).toBe(goodSha);
    expect(await cloud.listSlotObjects(aId)).toHaveLength(1);
  });

  it('running the recovery again reuses the stored copy, finishes it and lets pushes go again', async () => {
    delete bFaults.restore;
    const before = (await b.agent.catalog.list()).filter((x) => x.installationTag === installationTag(aId));
    expect(before).toHaveLength(1);
    // What an earlier version let a backup do meanwhile: B's own data under A's name, younger than A's copy.
    const meanwhile = await createBackup(backupDeps(b.agent), standaloneContext(silentLogger), {
      kind: 'manual',
    });
    const job = await b.agent.jobs.waitFor((await drServiceFor(b.agent).startRecover(asTyped(aId))).id);
    expect(job.error).toBeUndefined();
    const result = job.result as RecoverResult;
    expect(result.backup).toBe(before[0]!.filename);
    // Beside it only the safety backup the restore took of B's own data.
    const after = (await b.agent.catalog.list()).filter((x) => x.installationTag === installationTag(aId));
    expect(
      after
        .filter((x) => x.kind !== 'safety')
        .map((x) => x.filename)
        .sort(),
    ).toEqual([result.backup, meanwhile.filename].sort());
    expect(await rowCounts(b.agent)).toEqual(aCounts);
    expect((await status(b)).unfinishedRecovery).toBeNull();
    await expect(readFile(join(b.dataDir, 'dr-recovery.json'))).rejects.toThrow(/ENOENT/);
    // The push sends what runs now: not the younger backup of B's own data made before the restore.
    const pushed = await pushViaApi(b);
    expect(pushed.error).toBeUndefined();
    // The backup it restored is what runs: that one goes again, as is.
    expect(pushed.result).toMatchObject({ backup: result.backup, reused: true, temporary: false });
  });

  it("a restore by hand of the recovered installation's backup finishes the recovery: backups and pushes go again", async () => {
    const dFaults: RecoverFaults = { restore: FULL_DISK };
    const d = await startDrAgent(pg, cloud.url, { recoverFaults: dFaults });
    try {
      const failed = await d.agent.jobs.waitFor((await drServiceFor(d.agent).startRecover(aId)).id);
      expect(failed.error?.code, failed.error?.message).toBe('no_space');
      expect((await status(d)).unfinishedRecovery).not.toBeNull();
      const stored = (await d.agent.catalog.list()).find((x) => x.installationTag === installationTag(aId));
      expect(stored).toBeDefined();
      const restored = await d.agent.jobs.waitFor((await startRestore(d.agent, stored!.filename)).id);
      expect(restored.state, JSON.stringify(restored.error)).toBe('succeeded');
      expect(await rowCounts(d.agent)).toEqual(aCounts);
      expect((await status(d)).unfinishedRecovery).toBeNull();
      expect((await d.request('/api/v1/backups', { method: 'POST' })).status).toBe(202);
    } finally {
      await d.close().catch(() => {});
    }
  });

  it('the API answers a malformed id with the rule', async () => {
    await expect(drServiceFor(b.agent).startRecover('not-an-id')).rejects.toThrow(/32 hex characters/);
  });
});
