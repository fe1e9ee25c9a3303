/** Exact row counts of the staging database, taken while pg_restore is still busy, compared with the manifest. */
import type postgres from 'postgres';
import { GEM_TABLES_SQL } from '../backup/dump';
import { openSql } from '../db/connect';
import { AppError } from '../errors';
import { databaseUrl, type PgConnection } from '../system/postgres-tools';
import { quoteIdent, type RestoreItemEvent } from './database';

/** The tables the backup counted (GEM_TABLES_SQL), biggest first. */
const TABLES_BY_SIZE_SQL = `${GEM_TABLES_SQL} order by c.relpages desc, 1, 2`;

/**
 * Connections counting the staging rows at once once pg_restore is done. The count is CPU-bound:
 * on 2 cores the bench database's counts (1 GB) took 0.76-1.06 s on one connection and 0.47-0.63 s
 * on three.
 */
const COUNT_CONNECTIONS = 3;

/** How long pg_restore's item lines must be quiet after a "finished item" before a free slot is believed. */
const SLOT_SETTLE_MS = 25;

interface Table {
  schema: string;
  name: string;
}

const keyOf = (t: Table) => `${t.schema}.${t.name}`;

/**
 * Counts the rows of the staging database. A table whose data pg_restore reports loaded ("finished
 * item N TABLE DATA") is counted before pg_restore is done, while it builds indexes, as soon as one
 * of its job slots stays free, so the count never competes with its COPYs for the cores. Nothing after a
 * table's data item changes its rows (indexes, constraints and triggers come after; only plain
 * tables that are neither partitions nor inheritance parents are counted early: rows loaded through a
 * partitioned parent could land in another partition, and a parent's count(*) includes its children's
 * rows, loaded later), so an early count is the final one. Every other table is
 * counted once pg_restore is done (`finish`).
 */
export class StagingRowCounter {
  private readonly sql: postgres.Sql;
  private readonly early = new Map<string, number>();
  private readonly queue: Table[] = [];
  private readonly counting = new Set<Promise<void>>();
  /** pg_restore items in flight, from its launching / finished lines. */
  private running = 0;
  /** The pump after a finished item, once pg_restore had the time to launch the next one. */
  private settle: NodeJS.Timeout | undefined;

  constructor(
    conn: PgConnection,
    database: string,
    /** TABLE DATA items of the dump by id (listDump's `tables`). */
    private readonly items: Map<number, Table>,
    /** pg_restore's jobs: its slots. */
    private readonly jobs: number,
  ) {
    this.sql = openSql(databaseUrl(conn, database), COUNT_CONNECTIONS);
  }

  /** Tables counted while pg_restore still ran (for the log). */
  get countedEarly(): number {
    return this.early.size;
  }

  /** Feeds one pg_restore item event (restoreDump's onItem). */
  onItem(event: RestoreItemEvent): void {
    if (event.kind === 'launching') {
      this.running++;
      return;
    }
    this.running = Math.max(0, this.running - 1);
    const table = this.items.get(event.id);
    // The listing and the progress line must name the same table, or it waits for the end.
    if (table && event.what === `TABLE DATA ${table.name}`) this.queue.push(table);
    // pg_restore launches the next ready item right after it reports one finished: a slot is free
    // only if no launch follows, so look once its lines have been quiet for a moment.
    clearTimeout(this.settle);
    this.settle = setTimeout(() => {
      this.settle = undefined;
      this.pump();
    }, SLOT_SETTLE_MS);
  }

  private pump(): void {
    while (this.queue.length > 0 && this.counting.size < this.jobs - this.running) {
      const table = this.queue.shift()!;
      const run: Promise<void> = this.countEarly(table).finally(() => {
        this.counting.delete(run);
        this.pump();
      });
      this.counting.add(run);
    }
  }

  /** An early count; any failure only leaves the table for the final pass. */
  private async countEarly(table: Table): Promise<void> {
    try {
      const [kind] = await this.sql<{ plain: boolean }[]>`
        select c.relkind = 'r' and not c.relispartition and not c.relhassubclass as plain
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = ${table.schema} and c.relname = ${table.name}`;
      if (!kind?.plain) return;
      this.early.set(keyOf(table), await this.count(table));
    } catch {
      // Counted again at the end, where a failure does fail the restore.
    }
  }

  private async count(table: Table): Promise<number> {
    const [row] = await this.sql.unsafe<{ n: string }[]>(
      `select count(*) as n from ${quoteIdent(table.schema)}.${quoteIdent(table.name)}`,
    );
    return Number(row!.n);
  }

  /** After pg_restore succeeded: exact counts of every GEM table (the early ones, the rest now). */
  async finish(): Promise<Record<string, number>> {
    clearTimeout(this.settle);
    this.queue.length = 0;
    await Promise.all(this.counting);
    const tables = await this.sql.unsafe<Table[]>(TABLES_BY_SIZE_SQL);
    const counts: Record<string, number> = {};
    const rest: Table[] = [];
    for (const t of tables) {
      const early = this.early.get(keyOf(t));
      if (early === undefined) rest.push(t);
      else counts[keyOf(t)] = early;
    }
    let next = 0;
    const worker = async () => {
      for (let t = rest[next++]; t; t = rest[next++]) counts[keyOf(t)] = await this.count(t);
    };
    await Promise.all(Array.from({ length: Math.min(COUNT_CONNECTIONS, rest.length) }, worker));
    return counts;
  }

  /** Ends the connections (after finish, or when the restore failed). */
  async close(): Promise<void> {
    clearTimeout(this.settle);
    this.queue.length = 0;
    await Promise.allSettled(this.counting);
    await this.sql.end({ timeout: 5 });
  }
}

/** Compares exact row counts with the manifest's; any difference fails the restore. */
export function compareRowCounts(expected: Record<string, number>, actual: Record<string, number>): void {
  const names = new Set([...Object.keys(expected), ...Object.keys(actual)]);
  const differences: string[] = [];
  for (const name of [...names].sort()) {
    if (expected[name] !== actual[name]) {
      differences.push(
        `${name}: backup has ${expected[name] ?? 'no table'}, restored ${actual[name] ?? 'no table'}`,
      );
    }
  }
  if (differences.length > 0) {
    throw new AppError(
      'restore_failed',
      `the restored data does not match the backup (${differences.length} table(s) differ: ${differences
        .slice(0, 5)
        .join('; ')}); the live system is unchanged`,
      { details: { differences } },
    );
  }
}
