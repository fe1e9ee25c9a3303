import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;

/** V8's collector, exposed at run time: the test's fork is started without --expose-gc. */
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (options?: { type: 'minor' | 'major' }) => void;

const MiB = 1024 * 1024;

/**
 * Appends `mib` rows of 1 MiB of random bytes, made by the server: incompressible, so the backup grows by
 * about as much, and none of it passes through this process (its freed buffers would stay in the RSS the
 * backups are measured from, and hide a held dump).
 */
async function grow(mib: number): Promise<void> {
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `insert into big_history (payload) select pg_read_binary_file('/dev/urandom', 0, ${MiB}) from generate_series(1, ${mib})`,
    ),
  );
}

/** What this process's JavaScript holds: its heap and the buffers outside it. */
const held = () => {
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
};

/**
 * Backs up through the API while sampling every 20 ms; returns the backup's size and the peak growth of
 * the RSS and of what JavaScript holds. The sampler collects garbage as it goes (a young-generation pass
 * each sample, a full one every 10th): without it, buffers already done with but not yet collected
 * (60-96 MiB measured, whatever the size: V8 collects when external memory grows by about 64 MiB) hid
 * what the pipeline really holds. The RSS alone may not show a held dump: memory freed before the
 * baseline stays resident and is used again; what JavaScript holds does not have that blind spot.
 */
async function measuredBackup(): Promise<{ size: number; rss: number; held: number }> {
  gc();
  const base = { rss: process.memoryUsage().rss, held: held() };
  const peak = { ...base };
  const sample = () => {
    peak.rss = Math.max(peak.rss, process.memoryUsage().rss);
    peak.held = Math.max(peak.held, held());
  };
  let samples = 0;
  const sampler = setInterval(() => {
    gc(++samples % 10 === 0 ? undefined : { type: 'minor' });
    sample();
  }, 20);
  try {
    const res = await t.request('/api/v1/backups', { method: 'POST' });
    const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    expect(job.error).toBeUndefined();
    const size = (job.result as { backup: { size: number } }).backup.size;
    return { size, rss: peak.rss - base.rss, held: peak.held - base.held };
  } finally {
    clearInterval(sampler);
  }
}

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  // Unlogged: the rows are dumped all the same, and filling it writes no WAL.
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe('create unlogged table big_history (id serial primary key, payload bytea not null)'),
  );
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('memory while backing up a large table', () => {
  it('keeps the RSS flat: the pipeline streams, it never holds the dump', async () => {
    // A small backup first, then one about 80 MiB larger: what the RSS does beyond the small one's
    // growth is what the size costs. The first backup also warms what any backup starts once (code,
    // the hashing worker's buffers, connection pools), which an absolute bound had to allow for.
    await grow(8);
    const small = await measuredBackup();
    await grow(72);
    const large = await measuredBackup();
    const extra = large.size - small.size;
    const mib = (n: number) => `${(n / MiB).toFixed(0)} MiB`;
    console.log(
      `backups ${mib(small.size)} and ${mib(large.size)} (${mib(extra)} more): peak RSS growth ` +
        `${mib(small.rss)} and ${mib(large.rss)}, held by JavaScript ${mib(small.held)} and ${mib(large.held)}`,
    );
    expect(small.size).toBeGreaterThan(8 * MiB);
    expect(extra).toBeGreaterThan(72 * MiB);
    // A pipeline that held the dump or the file would grow by at least the extra size (over 72 MiB) more
    // in the larger backup; holding even half of it fails here.
    expect(large.rss - small.rss).toBeLessThan(extra / 2);
    expect(large.held - small.held).toBeLessThan(extra / 2);
  });
});
