// `dr recover` on a box that is not a fresh install (its own backups, enrolled with and pushing to the DR
// cloud) replaces its data, keys and identity: the API needs {"confirm": <the same id>} and the CLI
// --yes, as a restore does; refused without, it says what would be replaced and changes nothing. A
// fresh box recovers without. A refusal is audited with its code; the download reports its total.

import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { type DrStatus, drServiceFor } from '../../agent/dr/service';
import type { Job } from '../../agent/jobs/runner';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { runProcess } from '../../agent/system/spawn';
import { type BuiltCli, buildCli } from '../cli/built-cli';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import { cliEnvOf, pushViaApi, rowCounts, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
let built: BuiltCli;
/** The installation to recover, pushed to the cloud. */
let a: TestAgent;
/** A box in use: a backup of its own, enrolled with and pushed to the DR cloud. */
let live: TestAgent;
let aId = '';
let aCounts: Record<string, number> = {};
let aSize = 0;
let liveBackup = '';

beforeAll(async () => {
  ({ pg, cloud, built } = await startAll({ pg: startPostgres, cloud: startDrCloud, built: buildCli }));
  [a, live] = await Promise.all([startDrAgent(pg, cloud.url), startDrAgent(pg, cloud.url)]);
  aId = a.agent.keyring.installationId;
  await withSql(databaseUrl(a.agent.sources.conn), async (sql) => {
    await sql`create table public.drill_extra (id int primary key)`;
    await sql`insert into public.drill_extra select generate_series(1, 5)`;
  });
  aCounts = await rowCounts(a.agent);
  const pushed = await pushViaApi(a);
  expect(pushed.error).toBeUndefined();
  aSize = (pushed.result as { size: number }).size;
  liveBackup = (await createBackup(backupDeps(live.agent), standaloneContext(silentLogger))).filename;
  expect((await pushViaApi(live)).error).toBeUndefined();
});
afterAll(async () => {
  await live?.close().catch(() => {});
  await a?.close().catch(() => {});
  await cloud?.dispose();
  await pg?.stop();
  await built?.remove();
});

function recover(t: TestAgent, body: Record<string, unknown>): Promise<Response> {
  return t.request('/api/v1/dr/recover', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

/** What a refused recovery must leave as it was. */
async function snapshot(t: TestAgent) {
  const status = (await (await t.request('/api/v1/dr/status')).json()) as DrStatus;
  return {
    installationId: t.agent.keyring.installationId,
    activeKey: t.agent.keyring.activeKey.id,
    counts: await rowCounts(t.agent),
    backups: (await t.agent.catalog.list()).map((b) => b.filename),
    recoveries: t.agent.jobs.list().filter((j) => j.kind === 'dr-recover').length,
    unfinished: await stat(join(t.dataDir, 'dr-recovery.json')).then(
      () => true,
      () => false,
    ),
    lastSuccess: status.lastSuccess,
    slot: await cloud.listSlotObjects(t.agent.keyring.installationId),
  };
}

/** The audit log's records of CLI commands, oldest first. */
async function cliAudit(t: TestAgent): Promise<Record<string, unknown>[]> {
  return (await readFile(join(t.dataDir, 'audit.log'), 'utf8'))
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((entry) => entry.via === 'cli');
}

describe('dr recover on a box that is not a fresh install', () => {
  it('the CLI refuses without --yes, saying what would be replaced; refusals are audited with their code', async () => {
    const env = cliEnvOf(live, pg, cloud.url);
    const cli = (...args: string[]) => runProcess(process.execPath, [built.path, ...args], { env });
    const before = await snapshot(live);
    const liveId = live.agent.keyring.installationId;

    const refused = await cli('dr', 'recover', '--installation-id', aId);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toBe(
      `gem-backup: this box is not a fresh install (a backup of its own installation ${liveId.slice(0, 8)}… (the newest ${liveBackup}); enrolled with the DR cloud as ${liveId.slice(0, 8)}… since ${(await drServiceFor(live.agent).state.get()).enrollment?.at}; pushed to the DR cloud ${before.lastSuccess?.at}): a recovery replaces its database, scripts and config with the recovered installation's, and its keys and identity with that installation's: add --yes to confirm`,
    );
    expect(refused.stderr).not.toContain(aId);
    expect(await snapshot(live)).toEqual(before);
    expect((await cliAudit(live)).at(-1)).toMatchObject({
      command: 'dr recover',
      outcome: 'error',
      error: 'bad_request',
    });

    // Confirmed, an id the cloud has no backup for: the cloud's clean 404, audited as not_found.
    const unknown = await cli('dr', 'recover', '--installation-id', '0'.repeat(32), '--yes');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('the DR cloud answered 404 no_backup');
    expect((await cliAudit(live)).at(-1)).toMatchObject({
      command: 'dr recover',
      outcome: 'error',
      error: 'not_found',
    });
    expect({ ...(await snapshot(live)), recoveries: 0 }).toEqual({ ...before, recoveries: 0 });
  });

  it('the API refuses without "confirm" (or with another id in it), then recovers with it; the download shows its total', async () => {
    const before = await snapshot(live);
    const refused = await recover(live, { installationId: aId });
    expect(refused.status).toBe(400);
    const { error } = (await refused.json()) as { error: { code: string; message: string } };
    expect(error.code).toBe('bad_request');
    expect(error.message).toMatch(/^this box is not a fresh install \(a backup of its own installation /);
    expect(error.message).toContain(`(the newest ${liveBackup})`);
    expect(error.message).toContain('; enrolled with the DR cloud as ');
    expect(error.message).toContain(`; pushed to the DR cloud ${before.lastSuccess?.at}`);
    expect(error.message).toMatch(
      /: to recover over it, send \{"installationId": "<id>", "confirm": "<the same id>"\}$/,
    );
    expect(error.message).not.toContain(aId);

    const other = await recover(live, { installationId: aId, confirm: 'f'.repeat(32) });
    expect(other.status).toBe(400);
    expect(((await other.json()) as { error: { message: string } }).error.message).toBe(
      '"confirm" must be the same installation id as "installationId"',
    );
    expect(await snapshot(live)).toEqual(before);

    // The id typed back in another form is the same id.
    const updates: Job[] = [];
    const off = live.agent.jobs.subscribeAll((e) => {
      if (e.type === 'update' && e.job.kind === 'dr-recover') updates.push({ ...e.job });
    });
    const res = await recover(live, {
      installationId: aId.toUpperCase(),
      confirm: aId.replace(/(.{8})/g, '$1-').slice(0, -1),
    });
    expect(res.status).toBe(202);
    const job = await live.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    off();
    expect(job.error).toBeUndefined();
    expect(live.agent.keyring.installationId).toBe(aId);
    expect(await rowCounts(live.agent)).toEqual(aCounts);
    // The slot's size, which the cloud names beside its streamed answer, is the download's total.
    // (The phase starts before the request, when nothing is known yet.)
    const download = updates.filter((j) => j.phase === 'download' && j.bytesDone > 0);
    expect(download.length).toBeGreaterThan(0);
    expect(download.map((j) => j.bytesTotal)).toEqual(download.map(() => aSize));
    expect(download.at(-1)?.bytesDone).toBe(aSize);
  });
});

describe('dr recover on a fresh install', () => {
  it('needs no confirmation; each sign of a box in use alone asks for it', async () => {
    const fresh = await startDrAgent(pg, cloud.url);
    try {
      const dr = drServiceFor(fresh.agent);
      const ownId = fresh.agent.keyring.installationId;
      const refusal = async () => {
        const res = await recover(fresh, { installationId: aId });
        expect(res.status).toBe(400);
        return ((await res.json()) as { error: { message: string } }).error.message;
      };
      const own = await createBackup(backupDeps(fresh.agent), standaloneContext(silentLogger));
      expect(await refusal()).toContain(
        `(a backup of its own installation ${ownId.slice(0, 8)}… (the newest ${own.filename}))`,
      );
      await fresh.agent.catalog.delete(own.filename);

      const at = new Date().toISOString();
      await dr.state.update((s) => {
        s.enrollment = { installationId: ownId, publicKeyX: fresh.agent.keyring.signingKey.publicJwk.x, at };
      });
      expect(await refusal()).toContain(`(enrolled with the DR cloud as ${ownId.slice(0, 8)}… since ${at})`);
      await dr.state.update((s) => {
        delete s.enrollment;
        s.lastSuccess = { at, trigger: 'manual', outcome: 'succeeded' };
      });
      expect(await refusal()).toContain(`(pushed to the DR cloud ${at})`);
      await dr.state.update((s) => {
        delete s.lastSuccess;
        s.recovered = { at, createdAt: at, backup: 'gem-backup-2026-01-01-000000.tar.gz' };
      });
      expect(await refusal()).toContain(`(recovered from the DR cloud ${at})`);
      await dr.state.update((s) => {
        delete s.recovered;
      });

      const res = await recover(fresh, { installationId: aId });
      expect(res.status).toBe(202);
      const job = await fresh.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
      expect(job.error).toBeUndefined();
      expect(fresh.agent.keyring.installationId).toBe(aId);
      expect(await rowCounts(fresh.agent)).toEqual(aCounts);
    } finally {
      await fresh.close().catch(() => {});
    }
  });
});
