/** pg_dump of GEM's database in one consistent snapshot, with exact row counts taken in that same snapshot. */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type postgres from 'postgres';
import { openSql, reserveConnection } from '../db/connect';
import { databaseUnreachable } from '../db/unreachable';
import { AppError, isNoSpace } from '../errors';
import {
  connectionArgs,
  connectionEnv,
  databaseUrl,
  type PgConnection,
  type PostgresTools,
} from '../system/postgres-tools';
import { spawnProcess, waitForExit } from '../system/spawn';
import type { DatabaseSetting, ManifestMembership, ManifestRole } from './manifest';

/** The agent's own schema (settings, history): never part of a GEM backup. */
export const AGENT_SCHEMA = 'gem_backup';

export interface DumpResult {
  size: number;
  sha256: string;
  rowCounts: Record<string, number>;
  serverVersion: string;
  serverVersionNum: number;
  dumpVersion: string;
  /** The roles the dumped objects name, for the manifest (manifest.ts `roles`). */
  roles: ManifestRole[];
  /** The memberships among those roles (manifest.ts `memberships`). */
  memberships: ManifestMembership[];
  /** The database's own settings (manifest.ts `postgres.settings`). */
  settings: DatabaseSetting[];
}

/**
 * Every role the dump names: owners of its objects, grantees and grantors of their privileges
 * (tables, columns, functions, schemas, types, large objects, foreign data wrappers and servers,
 * default privileges), policy roles and the roles whose default privileges are set. Objects are
 * the database's own (oid >= 16384, FirstNormalObjectId) or the public schema, outside the agent's
 * schema; built-in ones are the same on every server. Only non-secret attributes are read.
 */
export const DUMP_ROLES_SQL = `
  with objs as (
    select c.relowner as owner, c.relacl as acl from pg_class c
      where c.oid >= 16384 and c.relnamespace <> coalesce(to_regnamespace('${AGENT_SCHEMA}')::oid, 0)
    union all select p.proowner, p.proacl from pg_proc p
      where p.oid >= 16384 and p.pronamespace <> coalesce(to_regnamespace('${AGENT_SCHEMA}')::oid, 0)
    union all select n.nspowner, n.nspacl from pg_namespace n
      where (n.oid >= 16384 or n.nspname = 'public') and n.nspname <> '${AGENT_SCHEMA}'
    union all select t.typowner, t.typacl from pg_type t
      where t.oid >= 16384 and t.typnamespace <> coalesce(to_regnamespace('${AGENT_SCHEMA}')::oid, 0)
    union all select l.lomowner, l.lomacl from pg_largeobject_metadata l
    union all select w.fdwowner, w.fdwacl from pg_foreign_data_wrapper w where w.oid >= 16384
    union all select s.srvowner, s.srvacl from pg_foreign_server s where s.oid >= 16384
    union all select d.defaclrole, d.defaclacl from pg_default_acl d
    union all select null::oid, a.attacl from pg_attribute a join pg_class c on c.oid = a.attrelid
      where a.attacl is not null and c.oid >= 16384
        and c.relnamespace <> coalesce(to_regnamespace('${AGENT_SCHEMA}')::oid, 0)
    union all select x.owner, null from (
      select collowner as owner, oid from pg_collation union all select conowner, oid from pg_conversion
      union all select oprowner, oid from pg_operator union all select opcowner, oid from pg_opclass
      union all select opfowner, oid from pg_opfamily union all select cfgowner, oid from pg_ts_config
      union all select dictowner, oid from pg_ts_dict union all select evtowner, oid from pg_event_trigger
      union all select pubowner, oid from pg_publication union all select stxowner, oid from pg_statistic_ext
      union all select extowner, oid from pg_extension) x where x.oid >= 16384
  ),
  named as (
    select owner as role from objs where owner is not null
    union select (aclexplode(acl)).grantee from objs where acl is not null
    union select (aclexplode(acl)).grantor from objs where acl is not null
    union select unnest(p.polroles) from pg_policy p
  )
  select r.rolname as name, r.rolcanlogin as login, r.rolinherit as inherit, r.rolsuper as superuser,
         r.rolcreatedb as createdb, r.rolcreaterole as createrole, r.rolreplication as replication,
         r.rolbypassrls as bypassrls
  from pg_roles r where r.oid in (select role from named) order by r.rolname`;

/**
 * The memberships among the roles named in $1 (a JSON array): the grantor only while it exists (a
 * server before 16 keeps the oid of a dropped one), the inherit and set options only where the server
 * has them (16 and later).
 */
const MEMBERSHIPS_SQL = `
  select pg_get_userbyid(m.roleid) as role, pg_get_userbyid(m.member) as member, m.admin_option as admin,
         g.rolname as grantor, (to_jsonb(m) ->> 'inherit_option')::boolean as inherit,
         (to_jsonb(m) ->> 'set_option')::boolean as set
  from pg_auth_members m left join pg_roles g on g.oid = m.grantor
  where pg_get_userbyid(m.roleid) in (select jsonb_array_elements_text($1::text::jsonb))
    and pg_get_userbyid(m.member) in (select jsonb_array_elements_text($1::text::jsonb))
  order by 1, 2, 4`;

/**
 * The settings of the current database (ALTER DATABASE ... SET: no role) and of roles in it (ALTER
 * ROLE ... IN DATABASE ... SET), each list as JSON (the agent's pools read no array types).
 */
const SETTINGS_SQL = `
  select case when s.setrole = 0 then null else pg_get_userbyid(s.setrole) end as role,
         array_to_json(s.setconfig) as setconfig
  from pg_db_role_setting s
  where s.setdatabase = (select oid from pg_database where datname = current_database())
  order by 1 nulls first`;

/** What the snapshot says of the dumped database's roles and settings, for the manifest. */
async function readRolesAndSettings(
  tx: postgres.ReservedSql,
): Promise<Pick<DumpResult, 'roles' | 'memberships' | 'settings'>> {
  const roles = (await tx.unsafe<ManifestRole[]>(DUMP_ROLES_SQL)).map((r) => ({ ...r }));
  const members = await tx.unsafe<
    {
      role: string;
      member: string;
      admin: boolean;
      grantor: string | null;
      inherit: boolean | null;
      set: boolean | null;
    }[]
  >(MEMBERSHIPS_SQL, [JSON.stringify(roles.map((r) => r.name))]);
  const memberships = members.map(({ role, member, admin, grantor, inherit, set }) => ({
    role,
    member,
    admin,
    ...(grantor === null ? {} : { grantor }),
    ...(inherit === null ? {} : { inherit }),
    ...(set === null ? {} : { set }),
  }));
  const settings: DatabaseSetting[] = [];
  for (const { role, setconfig } of await tx.unsafe<{ role: string | null; setconfig: string[] }[]>(
    SETTINGS_SQL,
  )) {
    for (const stored of setconfig) {
      const at = stored.indexOf('=');
      settings.push({
        ...(role === null ? {} : { role }),
        name: at < 0 ? stored : stored.slice(0, at),
        value: at < 0 ? '' : stored.slice(at + 1),
      });
    }
  }
  return { roles, memberships, settings };
}

/**
 * Tables whose rows we count: every ordinary or partitioned table outside the system and agent
 * schemas, as `schema, name`. A restore counts the same selection (agent/restore/counts.ts), so any
 * drift between the two would show up as a mismatch, never a pass.
 */
export const GEM_TABLES_SQL = `
  select n.nspname as schema, c.relname as name
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema', '${AGENT_SCHEMA}')
    and n.nspname not like 'pg_toast%' and n.nspname not like 'pg_temp%'`;

const TABLES_SQL = `${GEM_TABLES_SQL} order by 1, 2`;

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

const CANCELLED = 'the job was cancelled';

/**
 * pg_dump's (libpq's) words for a server that went away or refused it mid-dump; the same as
 * restore/database.ts reads in pg_restore's.
 */
const LOST_CONNECTION =
  /server closed the connection unexpectedly|could not connect to server|connection to server .*failed|no connection to the server|terminating connection due to administrator command|the database system is (shutting down|starting up)|could not (send|receive) data (to|from) server|SSL SYSCALL error|connection to server was lost|PQgetCopyData\(\) failed/i;

/**
 * Exact row counts of every GEM table, in the transaction `sql` is in. On `signal` the running count
 * is cancelled on the server: one waiting for a lock GEM holds on its table would otherwise wait
 * until GEM lets go.
 */
export async function countRows(
  sql: postgres.Sql | postgres.ReservedSql,
  signal?: AbortSignal,
): Promise<Record<string, number>> {
  let pending: { cancel(): void } | undefined;
  // cancel() sends a CancelRequest on a connection of its own (this one is busy with the count).
  const cancel = () => void Promise.resolve(pending?.cancel()).catch(() => {});
  signal?.addEventListener('abort', cancel, { once: true });
  try {
    const run = <T extends postgres.Row[]>(text: string): Promise<T> => {
      if (signal?.aborted) throw new AppError('cancelled', CANCELLED);
      const query = sql.unsafe<T>(text);
      pending = query;
      return query;
    };
    const tables = await run<{ schema: string; name: string }[]>(TABLES_SQL);
    const counts: Record<string, number> = {};
    for (const t of tables) {
      const [row] = await run<{ n: string }[]>(
        `select count(*) as n from ${quoteIdent(t.schema)}.${quoteIdent(t.name)}`,
      );
      counts[`${t.schema}.${t.name}`] = Number(row!.n);
    }
    return counts;
  } catch (error) {
    if (signal?.aborted) throw new AppError('cancelled', CANCELLED, { cause: error });
    throw error;
  } finally {
    signal?.removeEventListener('abort', cancel);
  }
}

/**
 * Dumps the database (custom format, light compression: the work of compression belongs in this
 * stage, which has a core to spare while the server feeds it) into `target`, hashing as it writes.
 * A repeatable-read transaction exports its snapshot to pg_dump, and the row counts are taken in it,
 * so the manifest describes exactly the dump. A failed write of the dump (no_space for a full disk),
 * then pg_dump's exit code and stderr, fail the dump.
 */
export async function dumpDatabase(options: {
  conn: PgConnection;
  tools: PostgresTools;
  target: string;
  signal?: AbortSignal;
  onProgress?: (bytes: number) => void;
  compressLevel?: number;
}): Promise<DumpResult> {
  const { conn, tools, target, signal } = options;
  const sql = openSql(databaseUrl(conn));
  // On cancel the pool is ended at once: whatever waits on it (the snapshot's row counts, blocked
  // behind a lock GEM holds) rejects, so the job ends now instead of when GEM lets go.
  const endNow = () => void sql.end({ timeout: 0 }).catch(() => {});
  signal?.addEventListener('abort', endNow, { once: true });
  try {
    const tx = await reserveConnection(sql, signal).catch((error: Error) => {
      throw databaseUnreachable(error);
    });
    try {
      await tx`begin isolation level repeatable read read only`;
      const [info] = await tx<{ snapshot: string; version: string; num: string }[]>`
        select pg_export_snapshot() as snapshot, current_setting('server_version') as version,
               current_setting('server_version_num') as num`;
      const dumpVersion = (await tools.majorVersion('pg_dump')).text;
      const child = spawnProcess(
        tools.path('pg_dump'),
        [
          ...connectionArgs(conn),
          '--format=custom',
          `--compress=${options.compressLevel ?? 1}`,
          `--snapshot=${info!.snapshot}`,
          `--exclude-schema=${AGENT_SCHEMA}`,
          '--dbname',
          conn.database,
        ],
        { env: connectionEnv(conn), stdio: ['ignore', 'pipe', 'pipe'], signal },
      );
      const exited = waitForExit(child);
      const hash = createHash('sha256');
      let size = 0;
      const written = pipeline(
        child.stdout!,
        new Transform({
          transform(chunk: Buffer, _e, cb) {
            hash.update(chunk);
            size += chunk.length;
            options.onProgress?.(size);
            cb(null, chunk);
          },
        }),
        createWriteStream(target, { flags: 'wx' }),
      );
      // In the same snapshot, after the counts (one query at a time on the connection).
      const counted = countRows(tx, signal).then(async (counts) => ({
        counts,
        ...(await readRolesAndSettings(tx)),
      }));
      const [rowCounts, exit, write] = await Promise.allSettled([counted, exited, written]);
      if (signal?.aborted) throw new AppError('cancelled', CANCELLED);
      // A failed write comes first: pg_dump then dies of SIGPIPE, and its exit code says nothing of why.
      if (write.status === 'rejected') {
        if (isNoSpace(write.reason))
          throw new AppError('no_space', 'the disk is full: free some space and try again', {
            cause: write.reason,
          });
        throw write.reason;
      }
      if (exit.status === 'rejected') {
        throw new AppError('dump_failed', `pg_dump could not run: ${(exit.reason as Error).message}`);
      }
      if (exit.value.code !== 0) {
        // The server went away mid-dump (restarted, stopped): nothing was kept, and the backup can be
        // tried again once it runs, as a restore says it.
        const lost = exit.value.stderr.split('\n').find((line) => LOST_CONNECTION.test(line));
        if (lost) {
          throw new AppError(
            'dependency_down',
            `the connection to the database server was lost during the backup (${lost.trim().slice(0, 300)}); ` +
              'nothing was kept; try again once PostgreSQL runs',
          );
        }
        throw new AppError(
          'dump_failed',
          `pg_dump failed (exit ${exit.value.code ?? exit.value.signal}): ${exit.value.stderr || 'no message'}`,
        );
      }
      if (rowCounts.status === 'rejected') throw rowCounts.reason;
      await tx`commit`;
      return {
        size,
        sha256: hash.digest('hex'),
        rowCounts: rowCounts.value.counts,
        roles: rowCounts.value.roles,
        memberships: rowCounts.value.memberships,
        settings: rowCounts.value.settings,
        serverVersion: info!.version,
        serverVersionNum: Number(info!.num),
        dumpVersion,
      };
    } finally {
      tx.release();
    }
  } catch (error) {
    // A step cut off by the ended pool (connecting, the snapshot) fails with a connection error.
    if (signal?.aborted) throw new AppError('cancelled', CANCELLED, { cause: error });
    throw error;
  } finally {
    signal?.removeEventListener('abort', endNow);
    await sql.end({ timeout: 5 });
  }
}
