/** A real PostgreSQL cluster for a test file: created in a temp dir with the machine's binaries, removed at the end. */
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { findPgBinDir } from '../../agent/config';
import {
  type ClusterHandle,
  clusterPasswordPath,
  ensureDatabase,
  startCluster,
} from '../../agent/db/cluster';
import { runProcess } from '../../agent/system/spawn';
import { PG_TEMPLATE_ENV } from './postgres-template';

export interface TestPostgres {
  cluster: ClusterHandle;
  binDir: string;
  /** A new empty database on the cluster; returns its URL. */
  createDatabase(name?: string): Promise<string>;
  stop(): Promise<void>;
}

let counter = 0;

/**
 * Starts a throwaway cluster. Fails loudly, with the install command, if PostgreSQL is missing.
 * The server's fsync is off unless `fsync: true` (ALTER SYSTEM; the run's template cluster has it
 * off already): commits, CREATE and DROP DATABASE and checkpoints then stop waiting for the disk (a
 * test restore 1.1 -> 0.75 s, a test agent's start 0.5 -> 0.38 s on this machine). Only a crash of
 * the machine itself could lose data then; a server or agent killed still finds every write (the
 * kernel holds it), so tests that kill processes run with it too.
 */
export async function startPostgres(options: { fsync?: boolean } = {}): Promise<TestPostgres> {
  const binDir = findPgBinDir(process.env.GEM_PG_BIN);
  const root = await mkdtemp(join(tmpdir(), 'gem-pg-'));
  await chmod(root, 0o755);
  const dir = join(root, 'cluster');
  const fromTemplate = await copyTemplate(dir);
  const cluster = await startCluster({ dir, binDir });
  const fsync = options.fsync ?? false;
  // A copy of the template starts with fsync off; a cluster initdb made here starts with it on.
  if (fsync === fromTemplate) {
    await withSql(cluster.url('postgres'), async (sql) => {
      await sql.unsafe(`alter system set fsync = ${fsync ? 'on' : 'off'}`);
      await sql`select pg_reload_conf()`;
    });
  }
  return {
    cluster,
    binDir,
    async createDatabase(name = `test_${process.pid}_${++counter}`) {
      await ensureDatabase(cluster.url('postgres'), name);
      return cluster.url(name);
    },
    async stop() {
      await cluster.stop().catch(() => {});
      await rm(root, { recursive: true, force: true });
    },
  };
}

/**
 * A TestPostgres over a cluster the test starts and stops itself (one it stops under the agent, or puts
 * on a small disk): its databases are made as startPostgres makes them, and stop() leaves it running.
 */
export function testPostgresOn(
  cluster: ClusterHandle,
  binDir: string,
  defaultDatabase: string,
): TestPostgres {
  return {
    cluster,
    binDir,
    async createDatabase(name = defaultDatabase) {
      await ensureDatabase(cluster.url('postgres'), name);
      return cluster.url(name);
    },
    async stop() {},
  };
}

/**
 * Copies the run's template cluster (test/services/postgres-template.ts) to `dir`, owners and modes
 * kept (cp -a: the cluster belongs to user postgres when the tests run as root); startCluster then
 * starts it as a cluster made earlier. Outside a vitest run there is no template: initdb makes it.
 * True if it copied the template.
 */
async function copyTemplate(dir: string): Promise<boolean> {
  const template = process.env[PG_TEMPLATE_ENV];
  if (!template) return false;
  for (const [from, to] of [
    [template, dir],
    [clusterPasswordPath(template), clusterPasswordPath(dir)],
  ] as const) {
    const copied = await runProcess('cp', ['-a', from, to]);
    if (copied.code !== 0) throw new Error(`copying the template cluster ${from} failed: ${copied.stderr}`);
  }
  return true;
}

/** Runs `fn` with a short-lived connection to `url`. */
export async function withSql<T>(url: string, fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * Holds `table` ACCESS EXCLUSIVE in a transaction on `url` until the returned function is called (it
 * resolves once that transaction ended). pg_dump locks each table it dumps first, so a backup's dump
 * stays alive, waiting, meanwhile: a test can find it and stop it however slowly it looks.
 */
export async function holdTableLock(url: string, table: string): Promise<() => Promise<void>> {
  let release!: () => void;
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  let locked!: () => void;
  const isLocked = new Promise<void>((resolve) => {
    locked = resolve;
  });
  const holder = withSql(url, (sql) =>
    sql.begin(async (tx) => {
      await tx.unsafe(`lock table ${table} in access exclusive mode`);
      locked();
      await released;
    }),
  );
  await Promise.race([isLocked, holder]);
  return async () => {
    release();
    await holder;
  };
}
