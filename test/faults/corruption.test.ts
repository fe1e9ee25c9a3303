/** Corruption: 1,000 seeded single-bit flips and truncations of a real backup; verify and restore reject every one. */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { readBackup } from '../../agent/backup/reader';
import { restoreFromFile } from '../../agent/restore/restore';
import { tryParseHeader } from '../../shared/envelope';
import { leftovers, liveState } from '../restore/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { mulberry32 } from './random';
import { faultReport } from './report';

const SEED = Number(process.env.GEM_FAULTS_SEED ?? 20261128);
const CASES = Number(process.env.GEM_FAULTS_CORRUPTIONS ?? 1000);
const RESTORE_SAMPLE = 30;
const report = faultReport('corruption', 'corruptions');

let pg: TestPostgres;
let t: TestAgent;
let original: Buffer;
let headerLength: number;
let chunkSize: number;

interface Corruption {
  what: string;
  bytes: Buffer;
}

/** One seeded corruption: a bit flip or a truncation, in the header, a middle chunk or the last chunk. */
function corruption(random: () => number, index: number): Corruption {
  const sealed = chunkSize + 16;
  const payload = original.length - headerLength;
  const lastStart = headerLength + Math.floor((payload - 1) / sealed) * sealed;
  const region = ['header', 'chunks', 'last'][index % 3]!;
  const [from, to] =
    region === 'header'
      ? [0, headerLength]
      : region === 'chunks'
        ? [headerLength, lastStart]
        : [lastStart, original.length];
  const at = from + Math.floor(random() * (to - from));
  if (index % 2 === 0) {
    const bytes = Buffer.from(original);
    const bit = Math.floor(random() * 8);
    bytes[at] = bytes[at]! ^ (1 << bit);
    return { what: `#${index} flip bit ${bit} at ${at} (${region})`, bytes };
  }
  // Every few truncations land exactly on a chunk boundary: the cut a length check alone would miss.
  const cut =
    index % 10 === 1 && region !== 'header'
      ? headerLength + Math.max(1, Math.floor(((at - headerLength) / sealed) | 0)) * sealed
      : at;
  return {
    what: `#${index} truncate to ${cut} (${region})`,
    bytes: original.subarray(0, Math.min(cut, original.length - 1)),
  };
}

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
  // Enough rows that the backup spans several chunks, so "middle" and "last" chunks both exist: 8,000
  // rows make about 370 KB, 5-6 chunks of 64 KiB (20,000 made 14: each verify took 2.5 times as long,
  // and a damaged chunk is no more likely to pass among 14 than among 5; checked just below).
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `create table noise as select g as id, md5(g::text) || md5(random()::text) as v from generate_series(1, 8000) g`,
    ),
  );
  // 64 KiB chunks (new backups use 1 MiB), so this backup has many chunks to damage.
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent, { chunkSize: 64 * 1024 })).id);
  expect(job.error).toBeUndefined();
  original = await readFile(
    t.agent.catalog.pathOf((job.result as { backup: { filename: string } }).backup.filename),
  );
  const parsed = tryParseHeader(original)!;
  headerLength = parsed.length;
  chunkSize = parsed.header.core.chunkSize;
  expect(original.length - headerLength).toBeGreaterThan(3 * (chunkSize + 16));
});

afterAll(async () => {
  report.print();
  await t?.close();
  await pg?.stop();
});

describe('a corrupted backup', () => {
  it('the original verifies', async () => {
    await expect(
      readBackup(Readable.from([original]), { keys: t.agent.keyring.masterKeys }),
    ).resolves.toBeTruthy();
  });

  it(`is rejected by verify every time (${CASES} seeded flips and truncations)`, async () => {
    const random = mulberry32(SEED);
    const accepted: string[] = [];
    for (let i = 0; i < CASES; i++) {
      const c = corruption(random, i);
      report.inject();
      const rejected = await readBackup(Readable.from([c.bytes]), { keys: t.agent.keyring.masterKeys }).then(
        () => false,
        (error: { code?: string }) => ['corrupt_backup', 'not_a_backup', 'no_key'].includes(error.code ?? ''),
      );
      report.tried(rejected, `${c.what} accepted (seed ${SEED})`);
      if (!rejected) accepted.push(c.what);
    }
    console.log(
      `faults: ${CASES} corruptions injected, ${CASES - accepted.length} rejected, ${accepted.length} accepted`,
    );
    expect(accepted).toEqual([]);
  });

  it(`is rejected by restore before anything is touched (a sample of ${RESTORE_SAMPLE})`, async () => {
    const random = mulberry32(SEED);
    const cases = Array.from({ length: CASES }, (_, i) => corruption(random, i));
    const before = await liveState(t.agent);
    const listing = (await t.agent.catalog.list()).map((b) => b.filename);
    const step = Math.floor(CASES / RESTORE_SAMPLE);
    for (let s = 0; s < RESTORE_SAMPLE; s++) {
      const c = cases[s * step]!;
      const path = join(t.dataDir, 'corrupt.tar.gz');
      await writeFile(path, c.bytes);
      report.inject();
      const job = await t.agent.jobs.start('restore', (ctx) => restoreFromFile(t.agent, ctx, path), {
        mutating: true,
      });
      const done = await t.agent.jobs.waitFor(job.id);
      await rm(path, { force: true });
      const ok =
        done.state === 'failed' &&
        ['corrupt_backup', 'not_a_backup', 'no_key'].includes(done.error?.code ?? '');
      report.tried(ok, `${c.what}: restore ${done.state} ${done.error?.code ?? ''}`);
      expect(done.state, c.what).toBe('failed');
      expect(['corrupt_backup', 'not_a_backup', 'no_key'], c.what).toContain(done.error?.code);
    }
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
    // No safety backup or anything else appeared: every check ran before the first change.
    expect((await t.agent.catalog.list()).map((b) => b.filename)).toEqual(listing);
  });
});
