// The benchmark database: a pgbench table and a GEM-like attribute history, made once per size and kept in bench/cache.
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import postgres from 'postgres';
import { type ClusterHandle, ensureDatabase, startCluster } from '../agent/db/cluster';
import { writeSmallFileAtomic } from '../agent/system/atomic-file';
import { runProcess } from '../agent/system/spawn';

export const BENCH_DB = 'bench';

export interface BenchDatabase {
  cluster: ClusterHandle;
  /** URL of the database backed up. */
  url: string;
  /** Bytes on disk (pg_database_size). */
  bytes: number;
  rows: { accounts: number; history: number };
}

/** Rows of each part for `bytes` on disk: about 70 % pgbench_accounts, 30 % attribute history. */
export function planFor(bytes: number): { scale: number; historyRows: number } {
  const gb = bytes / 1e9;
  return {
    scale: Math.max(1, Math.round(gb * 47)),
    historyRows: Math.max(100_000, Math.round(gb * 2_500_000)),
  };
}

/** Starts (creating on first use) the cached cluster for this size and fills the database once. */
export async function benchDatabase(options: {
  cacheDir: string;
  binDir: string;
  bytes: number;
  log: (line: string) => void;
}): Promise<BenchDatabase> {
  const { cacheDir, binDir, bytes, log } = options;
  const plan = planFor(bytes);
  const tag = `${plan.scale}s-${plan.historyRows}h`;
  await mkdir(cacheDir, { recursive: true });
  const cluster = await startCluster({ dir: join(cacheDir, `pg-${tag}`), binDir });
  const url = cluster.url(BENCH_DB);
  const marker = join(cacheDir, `pg-${tag}.ready.json`);
  if (!existsSync(marker)) {
    log(
      `creating the benchmark database (pgbench scale ${plan.scale}, ${plan.historyRows} history rows): once`,
    );
    const sql = postgres(cluster.url('postgres'), { max: 1, onnotice: () => {} });
    await sql.unsafe(`drop database if exists ${BENCH_DB}`);
    await sql.end();
    await ensureDatabase(cluster.url('postgres'), BENCH_DB);
    const started = Date.now();
    const init = await runProcess(
      join(binDir, 'pgbench'),
      [
        '-i',
        '-q',
        '-s',
        String(plan.scale),
        '-h',
        '127.0.0.1',
        '-p',
        String(cluster.port),
        '-U',
        'postgres',
        BENCH_DB,
      ],
      { env: { ...process.env, PGPASSWORD: decodeURIComponent(new URL(cluster.url('postgres')).password) } },
    );
    if (init.code !== 0) throw new Error(`pgbench -i failed: ${init.stderr}`);
    const db = postgres(url, { max: 1, onnotice: () => {} });
    try {
      // GEM's attribute history: one row per change of a node attribute, numbers and short texts.
      await db.unsafe(`
        create table attribute_history (
          id bigserial primary key,
          node_id integer not null,
          attribute_id integer not null,
          value text,
          quality smallint not null default 192,
          changed_at timestamptz not null,
          changed_by text
        )`);
      await db.unsafe(`
        insert into attribute_history (node_id, attribute_id, value, quality, changed_at, changed_by)
        select g % 5000, g % 397,
               case when g % 5 = 0 then 'state ' || (g % 17)::text else round((random() * 1000)::numeric, 3)::text end,
               case when g % 97 = 0 then 0 else 192 end,
               timestamptz '2024-01-01' + (g * interval '1 second'),
               case when g % 11 = 0 then 'operator' || (g % 7)::text end
        from generate_series(1, ${plan.historyRows}) g`);
      await db.unsafe('create index attribute_history_node_time on attribute_history (node_id, changed_at)');
      await db.unsafe('vacuum analyze');
      const [size] = await db<{ n: string }[]>`select pg_database_size(current_database()) as n`;
      // Temp then rename: a run killed here must not leave a marker that says "ready".
      await writeSmallFileAtomic(
        marker,
        `${JSON.stringify({ tag, plan, bytes: Number(size!.n), seconds: (Date.now() - started) / 1000 }, null, 2)}\n`,
      );
      log(
        `benchmark database ready: ${(Number(size!.n) / 1e9).toFixed(2)} GB in ${((Date.now() - started) / 1000).toFixed(0)} s`,
      );
    } finally {
      await db.end();
    }
  }
  const info = JSON.parse(await readFile(marker, 'utf8')) as { bytes: number };
  return {
    cluster,
    url,
    bytes: info.bytes,
    rows: { accounts: plan.scale * 100_000, history: plan.historyRows },
  };
}
