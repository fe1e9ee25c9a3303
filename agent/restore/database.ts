/** The PostgreSQL side of a restore: rights, versions, staging database, pg_restore, renames, drops. */
import postgres from 'postgres';
import { AGENT_SCHEMA } from '../backup/dump';
import { AppError } from '../errors';
import {
  connectionArgs,
  connectionEnv,
  databaseUrl,
  type PgConnection,
  type PostgresTools,
} from '../system/postgres-tools';
import { runProcess, spawnProcess, waitForExit } from '../system/spawn';

/** Double-quotes an identifier for SQL (database names come from our own naming, never from an archive). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** A short-lived pool on one database of the server (max 1 connection: each use is brief and ordered). */
export function connect(conn: PgConnection, database: string): postgres.Sql {
  return postgres(databaseUrl(conn, database), { max: 1, onnotice: () => {}, connect_timeout: 10 });
}

/** Runs `fn` on the maintenance database (`postgres`), where databases can be created and renamed. */
export async function withMaintenance<T>(
  conn: PgConnection,
  fn: (sql: postgres.Sql) => Promise<T>,
): Promise<T> {
  const sql = connect(conn, 'postgres');
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Runs `fn` on database `database`, closing the connection afterwards (renames need it closed). */
export async function withDatabase<T>(
  conn: PgConnection,
  database: string,
  fn: (sql: postgres.Sql) => Promise<T>,
): Promise<T> {
  const sql = connect(conn, database);
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * Refuses, before anything is touched, when the database user cannot do what a restore needs:
 * create a database, and rename and drop the live one (owner or superuser).
 */
export async function checkRights(conn: PgConnection): Promise<void> {
  const rows = await withMaintenance(
    conn,
    (sql) => sql<{ superuser: boolean; createdb: boolean; owner: string | null }[]>`
      select r.rolsuper as superuser, r.rolcreatedb as createdb,
             (select pg_get_userbyid(d.datdba) from pg_database d where d.datname = ${conn.database}) as owner
      from pg_roles r where r.rolname = current_user`,
  ).catch((error: Error) => {
    throw new AppError('dependency_down', `cannot connect to the database server: ${error.message}`, {
      cause: error,
    });
  });
  const me = rows[0];
  if (!me) throw new AppError('restore_failed', `cannot read the rights of database user ${conn.user}`);
  if (me.superuser) return;
  const missing: string[] = [];
  if (!me.createdb) missing.push(`ALTER ROLE ${quoteIdent(conn.user)} CREATEDB`);
  if (me.owner !== conn.user)
    missing.push(`ALTER DATABASE ${quoteIdent(conn.database)} OWNER TO ${quoteIdent(conn.user)}`);
  if (missing.length > 0) {
    throw new AppError(
      'restore_failed',
      `the database user ${conn.user} may not create or rename databases, which a safe restore needs ` +
        `(nothing was changed). As a superuser run: ${missing.join('; ')}`,
      { details: { needs: missing } },
    );
  }
}

/** The major version in a version text ("pg_dump (PostgreSQL) 15.8" -> 15). */
export function majorOf(text: string): number | undefined {
  const match = /(\d+)(?:\.\d+)?/.exec(text);
  return match ? Number(match[1]) : undefined;
}

/**
 * The dump must be readable by our pg_restore (not made by a newer pg_dump) and restorable into
 * this server (not taken from a newer server).
 */
export async function checkVersions(
  conn: PgConnection,
  tools: PostgresTools,
  dump: { dumpVersion: string; serverVersion: string; serverVersionNum: number },
): Promise<void> {
  const ours = await tools.majorVersion('pg_restore');
  const dumpMajor = majorOf(dump.dumpVersion);
  if (dumpMajor !== undefined && dumpMajor > ours.major) {
    throw new AppError(
      'restore_failed',
      `this backup was made by pg_dump ${dumpMajor}, newer than this machine's pg_restore ${ours.major}: ` +
        `install postgresql-client-${dumpMajor} (or newer) and set GEM_PG_BIN to its bin folder`,
    );
  }
  const [server] = await withMaintenance(
    conn,
    (sql) => sql<{ num: string }[]>`select current_setting('server_version_num') as num`,
  );
  const serverMajor = Math.floor(Number(server!.num) / 10000);
  const backupMajor = Math.floor(dump.serverVersionNum / 10000);
  if (backupMajor > serverMajor) {
    throw new AppError(
      'restore_failed',
      `this backup comes from PostgreSQL ${dump.serverVersion}; this server runs PostgreSQL ${serverMajor}: ` +
        `upgrade the server to ${backupMajor} or later, then restore`,
    );
  }
}

/** Bytes the live database takes on disk (what the staging copy will roughly need again). */
export async function databaseSize(conn: PgConnection): Promise<number> {
  const [row] = await withMaintenance(
    conn,
    (sql) => sql<{ size: string }[]>`select pg_database_size(${conn.database}) as size`,
  );
  return Number(row!.size);
}

/** Names of the databases on the server. */
export async function listDatabases(conn: PgConnection): Promise<string[]> {
  const rows = await withMaintenance(
    conn,
    (sql) => sql<{ datname: string }[]>`select datname from pg_database`,
  );
  return rows.map((r) => r.datname);
}

/** Creates the staging database like the live one: same owner, encoding and collation, from template0. */
export async function createStagingDatabase(conn: PgConnection, staging: string): Promise<void> {
  await withMaintenance(conn, async (sql) => {
    const [live] = await sql<{ owner: string; encoding: string; collate: string; ctype: string }[]>`
      select pg_get_userbyid(datdba) as owner, pg_encoding_to_char(encoding) as encoding,
             datcollate as collate, datctype as ctype
      from pg_database where datname = ${conn.database}`;
    if (!live) throw new AppError('restore_failed', `the live database ${conn.database} does not exist`);
    await sql.unsafe(
      `create database ${quoteIdent(staging)} template template0 owner ${quoteIdent(live.owner)} ` +
        `encoding '${live.encoding.replace(/'/g, "''")}' lc_collate '${live.collate.replace(/'/g, "''")}' ` +
        `lc_ctype '${live.ctype.replace(/'/g, "''")}'`,
    );
  });
}

/** Drops a database if it exists, first closing any session on it. */
export async function dropDatabase(conn: PgConnection, name: string): Promise<void> {
  await withMaintenance(conn, async (sql) => {
    await sql`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`;
    await sql.unsafe(`drop database if exists ${quoteIdent(name)}`);
  });
}

/** The owner of the live database: restored objects are owned by it, as GEM's own objects were. */
async function liveOwner(conn: PgConnection): Promise<string> {
  const [row] = await withMaintenance(
    conn,
    (sql) =>
      sql<
        { owner: string }[]
      >`select pg_get_userbyid(datdba) as owner from pg_database where datname = ${conn.database}`,
  );
  return row?.owner ?? conn.user;
}

/** pg_restore error lines that do not affect GEM's data: grants to roles this server does not have. */
const HARMLESS = [/role "[^"]*" does not exist/];

function restoreErrors(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((line) => /error:/i.test(line))
    .filter((line) => !/errors ignored on restore/i.test(line))
    .filter((line) => !HARMLESS.some((re) => re.test(line)));
}

/**
 * pg_restore jobs for the staging restore. Measured on 2 cores with a 1 GB database (bench/RESULTS.md):
 * 4 jobs overlap one table's index builds with another's COPY and beat 2 by 10-17 %.
 */
export const RESTORE_JOBS = 4;

/**
 * Restores a custom-format dump into `database` with `pg_restore -j RESTORE_JOBS` (objects owned by the live
 * database's owner). pg_restore's exit code is not trusted either way: its errors are read, and
 * the caller compares row counts with the manifest.
 */
export async function restoreDump(options: {
  conn: PgConnection;
  tools: PostgresTools;
  database: string;
  dumpPath: string;
  signal?: AbortSignal;
  jobs?: number;
  onSpawn?: (pid: number) => void;
}): Promise<void> {
  const { conn, tools } = options;
  const owner = await liveOwner(conn);
  const args = [
    ...connectionArgs(conn),
    '--dbname',
    options.database,
    '--no-owner',
    ...(owner !== conn.user ? ['--role', owner] : []),
    `--jobs=${options.jobs ?? RESTORE_JOBS}`,
    options.dumpPath,
  ];
  const child = spawnProcess(tools.path('pg_restore'), args, {
    env: connectionEnv(conn),
    stdio: ['ignore', 'ignore', 'pipe'],
    signal: options.signal,
  });
  const exited = waitForExit(child);
  if (child.pid !== undefined) options.onSpawn?.(child.pid);
  const exit = await exited.catch((error: Error) => {
    throw new AppError('restore_failed', `pg_restore could not run: ${error.message}`);
  });
  if (options.signal?.aborted) throw new AppError('cancelled', 'the job was cancelled');
  if (exit.signal) {
    throw new AppError(
      'restore_failed',
      `pg_restore was stopped by ${exit.signal}; the live system is unchanged`,
    );
  }
  const errors = restoreErrors(exit.stderr);
  if (errors.length > 0 || (exit.code !== 0 && !/errors ignored on restore/i.test(exit.stderr))) {
    const first = errors.slice(0, 3).join(' | ') || exit.stderr || `exit ${exit.code}`;
    throw new AppError('restore_failed', `the database could not be restored: ${first.slice(0, 1000)}`);
  }
}

/**
 * Tables whose rows are counted, biggest first: the same selection as the backup's counts
 * (agent/backup/dump.ts), so that any drift between the two shows up as a mismatch, never a pass.
 */
const TABLES_BY_SIZE_SQL = `
  select n.nspname as schema, c.relname as name
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema', '${AGENT_SCHEMA}')
    and n.nspname not like 'pg_toast%' and n.nspname not like 'pg_temp%'
  order by c.relpages desc, 1, 2`;

/**
 * Connections counting the staging rows at once. The staging database is idle and freshly read, so
 * the count is CPU-bound: on 2 cores the bench database's counts (1 GB) took 0.76-1.06 s on one
 * connection and 0.47-0.63 s on three.
 */
export const COUNT_CONNECTIONS = 3;

/** Exact row counts of every GEM table of `database`, the biggest tables first on a few connections. */
export async function countStagingRows(
  conn: PgConnection,
  database: string,
): Promise<Record<string, number>> {
  const sql = postgres(databaseUrl(conn, database), {
    max: COUNT_CONNECTIONS,
    onnotice: () => {},
    connect_timeout: 10,
  });
  try {
    const tables = await sql.unsafe<{ schema: string; name: string }[]>(TABLES_BY_SIZE_SQL);
    const counts: Record<string, number> = {};
    let next = 0;
    const worker = async () => {
      for (let t = tables[next++]; t; t = tables[next++]) {
        const [row] = await sql.unsafe<{ n: string }[]>(
          `select count(*) as n from ${quoteIdent(t.schema)}.${quoteIdent(t.name)}`,
        );
        counts[`${t.schema}.${t.name}`] = Number(row!.n);
      }
    };
    await Promise.all(Array.from({ length: Math.min(COUNT_CONNECTIONS, tables.length) }, worker));
    return counts;
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Compares the staging database's exact row counts with the manifest's; any difference fails. */
export async function compareRowCounts(
  conn: PgConnection,
  database: string,
  expected: Record<string, number>,
): Promise<void> {
  const actual = await countStagingRows(conn, database);
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

/** True if the live database holds the agent's own schema. */
export async function hasAgentSchema(conn: PgConnection, database: string): Promise<boolean> {
  const rows = await withDatabase(
    conn,
    database,
    (sql) => sql`select 1 from pg_namespace where nspname = ${AGENT_SCHEMA}`,
  );
  return rows.length > 0;
}

/**
 * Copies the agent's own schema (settings, history) from the live database into the staging one,
 * so that a restore never rolls the agent's settings back: pg_dump -n gem_backup | pg_restore.
 */
export async function copyAgentSchema(options: {
  conn: PgConnection;
  tools: PostgresTools;
  staging: string;
  filePath: string;
}): Promise<void> {
  const { conn, tools } = options;
  if (!(await hasAgentSchema(conn, conn.database))) return;
  const dump = await runProcess(
    tools.path('pg_dump'),
    [
      ...connectionArgs(conn),
      '--format=custom',
      `--schema=${AGENT_SCHEMA}`,
      '--file',
      options.filePath,
      '--dbname',
      conn.database,
    ],
    { env: connectionEnv(conn) },
  );
  if (dump.code !== 0) {
    throw new AppError(
      'restore_failed',
      `could not copy the agent's settings: pg_dump: ${dump.stderr || `exit ${dump.code}`}`,
    );
  }
  await restoreDump({ conn, tools, database: options.staging, dumpPath: options.filePath, jobs: 1 });
  const copied = await hasAgentSchema(conn, options.staging);
  if (!copied)
    throw new AppError('restore_failed', "could not copy the agent's settings into the restored database");
}

/** Forbids (or allows again) new connections to a database: the swap's fence. */
export async function setAllowConnections(conn: PgConnection, name: string, allow: boolean): Promise<void> {
  await withMaintenance(conn, (sql) =>
    sql.unsafe(`alter database ${quoteIdent(name)} with allow_connections ${allow ? 'true' : 'false'}`),
  );
}

/** Terminates every other session on `name` and waits (up to ~10 s) until none remain. */
export async function terminateSessions(conn: PgConnection, name: string): Promise<void> {
  await withMaintenance(conn, async (sql) => {
    for (let attempt = 0; attempt < 50; attempt++) {
      await sql`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`;
      const [row] = await sql<{ n: string }[]>`
        select count(*) as n from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`;
      if (Number(row!.n) === 0) return;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    throw new AppError('restore_failed', `other sessions on database ${name} would not close`);
  });
}

/** Renames a database (it must have no sessions). */
export async function renameDatabase(conn: PgConnection, from: string, to: string): Promise<void> {
  await withMaintenance(conn, (sql) =>
    sql.unsafe(`alter database ${quoteIdent(from)} rename to ${quoteIdent(to)}`),
  );
}
