// An outage of GEM's database heals without restarting the agent (agent/db/watch.ts): the embedded
// server is started again, and a restore the outage cut off mid-swap is rolled back once the database
// answers again. A real cluster, stopped for real; the agent's pool and restore are the real ones.
import { existsSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type DatabaseWatch, watchDatabase } from '../../agent/db/watch';
import { createLogger } from '../../agent/log';
import { journalPath } from '../../agent/restore/swap';
import { backupNow, leftovers, liveState, runRestore } from '../restore/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { until } from '../services/wait';

let pg: TestPostgres;
let t: TestAgent;
let watch: DatabaseWatch | undefined;
const lines: Record<string, unknown>[] = [];

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, {
    log: createLogger({ write: (line) => lines.push(JSON.parse(line) as Record<string, unknown>) }),
    // The pool fails through every outage here, and the watch's check waits behind its next connect:
    // up to 2 s (agent/db/connect.ts, tested in test/db/connect.test.ts); how long is not the point.
    pool: { reconnectBackoff: () => 0.05 },
  });
});
afterEach(async () => {
  await watch?.stop();
  watch = undefined;
  delete t.agent.cluster;
  await pg.cluster.restart();
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

const FINISHED = 'finished a restore that the database outage had cut off';
const messages = () => lines.filter((l) => l.area === 'database-watch').map((l) => l.msg);

const answers = () =>
  t.agent.sql`select 1`.then(
    () => true,
    () => false,
  );

describe("the service's watch over GEM's database", () => {
  it('starts the embedded server again when it went down, on the same port: the pool answers again', async () => {
    // As the embedded cluster of the service (no DATABASE_URL): GEM's database lives on it.
    t.agent.cluster = pg.cluster;
    lines.length = 0;
    watch = watchDatabase(t.agent, { intervalMs: 200 });
    await pg.cluster.stop();
    expect(await answers()).toBe(false);
    await until(answers, 'the database answers through the agent', 300);
    await until(
      async () => messages().includes("GEM's database answers again"),
      'the watch saw it answer',
      300,
    );
    expect(await pg.cluster.running()).toBe(true);
    expect(messages()).toEqual([
      "GEM's database does not answer",
      'the embedded PostgreSQL server was down; started it again',
      "GEM's database answers again",
    ]);
    // And it serves jobs as before.
    await backupNow(t.agent, 'after the outage');
  });

  it('rolls back a restore whose swap the outage cut off, once the database answers again', async () => {
    const backup = await backupNow(t.agent, 'to restore');
    const before = await liveState(t.agent);
    lines.length = 0;
    // Not embedded: GEM's own PostgreSQL, which someone else restarts.
    watch = watchDatabase(t.agent, { intervalMs: 200 });
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(backup), {
      skipSafetyBackup: true,
      faults: {
        beforeSwapStep: async (step) => {
          // The live database is already renamed aside: without an undo, GEM has no database.
          if (step === 'rename-staging-database') await pg.cluster.stop();
        },
      },
    });
    expect(job.state).toBe('failed');
    expect(job.error?.message).toMatch(/undoing it failed/);
    expect(existsSync(journalPath(t.dataDir))).toBe(true);

    await pg.cluster.restart();
    await until(async () => messages().includes(FINISHED), 'the watch finished the restore', 300);
    expect(existsSync(journalPath(t.dataDir))).toBe(false);
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
    await until(
      async () => messages().at(-1) === "GEM's database answers again",
      'the watch saw GEM answer again',
      300,
    );
  });

  it('leaves a restore journal alone while a job holds the job lock, and finishes it after', async () => {
    const backup = await backupNow(t.agent, 'held');
    const before = await liveState(t.agent);
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(backup), {
      skipSafetyBackup: true,
      faults: {
        beforeSwapStep: async (step) => {
          if (step === 'rename-staging-database') await pg.cluster.stop();
        },
      },
    });
    expect(job.error?.message).toMatch(/undoing it failed/);
    await pg.cluster.restart();
    // A mutating job holds the job lock meanwhile: the watch must wait for it to end.
    let finish!: () => void;
    const held = await t.agent.jobs.start(
      'maintenance',
      () =>
        new Promise<void>((resolve) => {
          finish = resolve;
        }),
    );
    lines.length = 0;
    watch = watchDatabase(t.agent, { intervalMs: 200 });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(messages()).not.toContain(FINISHED);
    expect(existsSync(journalPath(t.dataDir))).toBe(true);
    finish();
    await t.agent.jobs.waitFor(held.id);
    await until(async () => messages().includes(FINISHED), 'the watch finished the restore', 300);
    expect(existsSync(journalPath(t.dataDir))).toBe(false);
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
  });
});
