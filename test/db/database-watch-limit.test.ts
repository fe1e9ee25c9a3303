// The database watch's check is bounded: a `select 1` that never answers on the agent's pool (here every
// connection of the pool is held, as by queries that hang) is a failed check, logged, and neither stops
// the watch for good nor keeps the agent's shutdown waiting on it.
import type postgres from 'postgres';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { reserveConnection } from '../../agent/db/connect';
import { watchDatabase } from '../../agent/db/watch';
import { createLogger } from '../../agent/log';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { until, within } from '../services/wait';

let pg: TestPostgres;
let t: TestAgent;
const lines: Record<string, unknown>[] = [];
const held: postgres.ReservedSql[] = [];

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, {
    log: createLogger({ write: (line) => lines.push(JSON.parse(line) as Record<string, unknown>) }),
  });
});
afterAll(async () => {
  for (const connection of held.splice(0)) connection.release();
  await t?.close();
  await pg?.stop();
});

const watchLines = () => lines.filter((l) => l.area === 'database-watch');

it('a check whose select 1 gets no answer fails after its limit, and the watch goes on and stops', async () => {
  // The agent's pool has five connections: all five held, a query on it waits for one.
  for (let i = 0; i < 5; i++) held.push(await reserveConnection(t.agent.sql));
  lines.length = 0;
  const watch = watchDatabase(t.agent, { intervalMs: 100, checkLimitMs: 300 });
  try {
    await until(async () => watchLines().length > 0, 'the watch to report the pool not answering', 100);
    expect(watchLines()[0]).toMatchObject({
      level: 'warn',
      msg: "GEM's database does not answer",
      error: 'no answer in 0.3 s',
    });
    // The watch goes on: once a connection is free, the next check sees the database answer again.
    held.pop()?.release();
    await until(
      async () => watchLines().some((l) => l.msg === "GEM's database answers again"),
      'the watch to see the database answer again',
      100,
    );
    // Held again: a stop in the middle of a check waits for at most the check's limit.
    held.push(await reserveConnection(t.agent.sql));
    const checks = watchLines().length;
    await until(async () => watchLines().length > checks, 'the next failed check', 100);
  } finally {
    await within(watch.stop(), 5_000, 'the watch to stop');
  }
});
