// A DR recovery that fails or is cancelled after it installed the recovered keys (its store or restore
// step) leaves this box under the recovered identity, with backups and pushes held until it is run
// again or given up. Its end says so, on the page (the job's error) and in the CLI (after a Ctrl-C
// too), instead of the restore's "nothing was changed" or the CLI's "cancelled: nothing was changed".
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RecoverFaults } from '../../agent/dr/recover';
import { drServiceFor } from '../../agent/dr/service';
import type { Job } from '../../agent/jobs/runner';
import { type BuiltCli, buildCli } from '../cli/built-cli';
import type { TestAgent } from '../services/agent';
import { type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { addRandomData, cliEnvOf, pushViaApi, startDrAgent } from './helpers';

let pg: TestPostgres;
let cloud: DrCloud;
let built: BuiltCli;
let a: TestAgent;
let b: TestAgent;
let aId = '';
const bFaults: RecoverFaults = {};

beforeAll(async () => {
  ({ pg, cloud, built } = await startAll({ pg: startPostgres, cloud: startDrCloud, built: buildCli }));
  [a, b] = await Promise.all([
    startDrAgent(pg, cloud.url),
    startDrAgent(pg, cloud.url, { recoverFaults: bFaults }),
  ]);
  aId = a.agent.keyring.installationId;
  // Enough data that the restore takes a while: the CLI is interrupted in the middle of it.
  await addRandomData(a.agent, 8);
  expect((await pushViaApi(a)).error).toBeUndefined();
});
afterAll(async () => {
  await b?.close().catch(() => {});
  await a?.close().catch(() => {});
  await cloud?.dispose();
  await pg?.stop();
  await built?.remove();
});

const SENTENCE = () =>
  `a recovery from the DR cloud of installation ${aId.slice(0, 8)}… did not finish: run \`gem-backup dr recover --installation-id ID\` again`;

async function recover(): Promise<Job> {
  return b.agent.jobs.waitFor((await drServiceFor(b.agent).startRecover(aId)).id);
}

describe('a DR recovery that stops after its keys step', () => {
  it('failed in its restore, says the box carries the recovered identity now', async () => {
    bFaults.restore = { requiredBytes: Number.MAX_SAFE_INTEGER };
    const job = await recover();
    delete bFaults.restore;
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('no_space');
    expect(b.agent.keyring.installationId).toBe(aId);
    expect(job.error?.message).toContain(SENTENCE());
    expect(job.error?.message).not.toContain(aId);
    expect(await drServiceFor(b.agent).abandonRecovery()).toBe(true);
  });

  it('cancelled once its keys are in, says so too', async () => {
    const off = b.agent.jobs.subscribeAll((e) => {
      const { job } = e;
      if (job.kind === 'dr-recover' && job.phase === 'store' && !job.endedAt) b.agent.jobs.cancel(job.id);
    });
    const job = await recover();
    off();
    expect(job.state).toBe('cancelled');
    expect(b.agent.keyring.installationId).toBe(aId);
    expect(job.error?.message).toContain(SENTENCE());
    expect(job.error?.message).not.toContain(aId);
    expect(await drServiceFor(b.agent).abandonRecovery()).toBe(true);
  });

  it('interrupted by Ctrl-C in the CLI once its keys are in, does not say "nothing was changed"', async () => {
    const env = cliEnvOf(b, pg, cloud.url);
    expect(b.agent.keyring.installationId).not.toBe(aId);
    const child = spawn(process.execPath, [built.path, 'dr', 'recover', '--installation-id', aId, '--yes'], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    const exited = once(child, 'close') as Promise<[number | null]>;
    // The keys go in right after dr-recovery.json is written; the restore of 8 MiB takes seconds after.
    for (let i = 0; i < 600; i++) {
      const keyring = await readFile(b.agent.paths.keyring, 'utf8');
      if (JSON.parse(keyring).installationId === aId) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill('SIGINT');
    const [code] = await exited;
    expect(code, stderr).toBe(130);
    expect(b.agent.keyring.installationId).toBe(aId);
    expect(stderr).not.toContain('nothing was changed');
    expect(stderr).toContain(SENTENCE());
    expect(stderr).not.toContain(aId);
  });
});

describe('running a recovery that stopped after its keys step again', () => {
  it('asks for the confirmation the first attempt needed: the box is still enrolled and pushed as its own id', async () => {
    const faults: RecoverFaults = {};
    const c = await startDrAgent(pg, cloud.url, { recoverFaults: faults });
    try {
      const ownId = c.agent.keyring.installationId;
      // Enrolled and pushed as its own id, with no backup of its own kept here (the push's was temporary).
      expect((await pushViaApi(c)).error).toBeUndefined();
      expect(await c.agent.catalog.list()).toEqual([]);
      const recover = (body: Record<string, unknown>) =>
        c.request('/api/v1/dr/recover', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
      const first = await recover({ installationId: aId });
      expect(first.status).toBe(400);
      const asked = ((await first.json()) as { error: { message: string } }).error.message;
      expect(asked).toContain(`enrolled with the DR cloud as ${ownId.slice(0, 8)}…`);

      faults.restore = { requiredBytes: Number.MAX_SAFE_INTEGER };
      const confirmed = await recover({ installationId: aId, confirm: aId });
      expect(confirmed.status).toBe(202);
      const job = await c.agent.jobs.waitFor(((await confirmed.json()) as { jobId: string }).jobId);
      delete faults.restore;
      expect(job.state).toBe('failed');
      expect(c.agent.keyring.installationId).toBe(aId);

      // Run again, the box's data is still its own: judged as the first attempt was.
      const again = await recover({ installationId: aId });
      expect(again.status).toBe(400);
      expect(((await again.json()) as { error: { message: string } }).error.message).toBe(asked);
      expect(c.agent.jobs.list().filter((j) => j.kind === 'dr-recover')).toHaveLength(1);
    } finally {
      await c.close().catch(() => {});
    }
  });
});
