/** The PostgreSQL side of a restore: rights, versions, staging database, pg_restore, renames, drops. */
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';
import type postgres from 'postgres';
import { AGENT_SCHEMA } from '../backup/dump';
import type { DatabaseSetting, ManifestMembership, ManifestRole } from '../backup/manifest';
import { openSql } from '../db/connect';
import { databaseUnreachable } from '../db/unreachable';
import { AppError } from '../errors';
import {
  connectionArgs,
  connectionEnv,
  databaseUrl,
  type PgConnection,
  type PostgresTools,
} from '../system/postgres-tools';
import { runProcess, spawnProcess, TailBuffer } from '../system/spawn';

/** Double-quotes an identifier for SQL (database names come from our own naming, never from an archive). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** A short-lived pool on one database of the server (max 1 connection: each use is brief and ordered). */
export function connect(conn: PgConnection, database: string): postgres.Sql {
  return openSql(databaseUrl(conn, database));
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
    throw databaseUnreachable(error);
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

/**
 * Bytes GEM's database takes on its server now, asked on its own connection (a DATABASE_URL user may
 * not reach the `postgres` database): recorded in each backup's manifest for the restore's disk check.
 */
export async function ownDatabaseSize(conn: PgConnection): Promise<number> {
  const [row] = await withDatabase(
    conn,
    conn.database,
    (sql) => sql<{ size: string }[]>`select pg_database_size(current_database()) as size`,
  );
  return Number(row!.size);
}

/** True when the server runs on this machine: a Unix socket folder, or a loopback address. */
export function serverIsLocal(conn: PgConnection): boolean {
  const host = conn.host.replace(/^\[|\]$/g, '').toLowerCase();
  return host.startsWith('/') || host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * The server's data directory (only a superuser or a member of pg_read_all_settings sees it:
 * pg_settings hides it from others) and max_wal_size, in bytes: the WAL a restore may leave before a
 * checkpoint recycles it.
 */
export async function serverStorage(conn: PgConnection): Promise<{ dir?: string; maxWalBytes: number }> {
  const [row] = await withDatabase(
    conn,
    conn.database,
    (sql) => sql<{ dir: string | null; wal: string }[]>`
      select (select setting from pg_settings where name = 'data_directory') as dir,
             pg_size_bytes(current_setting('max_wal_size')) as wal`,
  );
  return { ...(row?.dir ? { dir: row.dir } : {}), maxWalBytes: Number(row?.wal ?? 0) };
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

/** Settings whose value is a list of quoted names: pg_dump splits these and quotes each element. */
const LIST_QUOTED_SETTINGS = new Set([
  'local_preload_libraries',
  'search_path',
  'session_preload_libraries',
  'shared_preload_libraries',
  'temp_tablespaces',
  'unix_socket_directories',
]);

/** Splits a stored list setting ("$user", public) into its elements, as PostgreSQL's SplitGUCList does. */
export function splitSettingList(value: string): string[] {
  const out: string[] = [];
  let i = 0;
  const blank = (c: string | undefined) => c === ' ' || c === '\t' || c === '\n' || c === '\r';
  while (blank(value[i])) i++;
  if (i >= value.length) return out;
  for (;;) {
    let item = '';
    if (value[i] === '"') {
      for (i++; i < value.length; i++) {
        if (value[i] === '"') {
          if (value[i + 1] !== '"') break;
          i++;
        }
        item += value[i];
      }
      i++;
    } else {
      while (i < value.length && value[i] !== ',' && !blank(value[i])) item += value[i++];
    }
    out.push(item);
    while (blank(value[i])) i++;
    if (value[i] !== ',') return out;
    i++;
    while (blank(value[i])) i++;
  }
}

/** Quotes a text as an SQL string literal (standard_conforming_strings is on in every supported server). */
function quoteLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

/** `SET name = value` for ALTER DATABASE/ROLE, from one stored "name=value" setting (as pg_dump writes it). */
export function settingClause(stored: string): string {
  const at = stored.indexOf('=');
  const name = at < 0 ? stored : stored.slice(0, at);
  const value = at < 0 ? '' : stored.slice(at + 1);
  const values = LIST_QUOTED_SETTINGS.has(name.toLowerCase()) ? splitSettingList(value) : [value];
  return `set ${quoteIdent(name)} = ${values.length > 0 ? values.map(quoteLiteral).join(', ') : "''"}`;
}

/**
 * Gives the staging database the live one's own properties, which pg_restore without --create never
 * restores: its owner, connection limit, comment, privileges (datacl, reproduced item by item in
 * order, with grantors) and its settings (ALTER DATABASE ... SET, ALTER ROLE ... IN DATABASE ... SET).
 * Run before the swap, so the restored database is no more permissive than the one it replaces.
 * Then the backup's own settings (`backupSettings`, when its manifest has them) over the live ones of the
 * same name and role: the restored database runs as the backed-up one did, also on a new server whose
 * live database is a fresh one. A backup setting this server refuses (a parameter it does not know, a
 * role it lacks) is left out, the live value kept; the returned warnings say which.
 */
export async function copyDatabaseProperties(
  conn: PgConnection,
  staging: string,
  backupSettings?: DatabaseSetting[],
): Promise<string[]> {
  return withMaintenance(conn, async (sql) => {
    const [live] = await sql<{ owner: string; connlimit: number; comment: string | null; hasAcl: boolean }[]>`
      select pg_get_userbyid(d.datdba) as owner, d.datconnlimit as connlimit,
             shobj_description(d.oid, 'pg_database') as comment, d.datacl is not null as "hasAcl"
      from pg_database d where d.datname = ${conn.database}`;
    if (!live) throw new AppError('restore_failed', `the live database ${conn.database} does not exist`);
    const target = quoteIdent(staging);
    await sql.unsafe(`alter database ${target} owner to ${quoteIdent(live.owner)}`);
    await sql.unsafe(`alter database ${target} connection limit ${Number(live.connlimit)}`);
    if (live.comment !== null)
      await sql.unsafe(`comment on database ${target} is ${quoteLiteral(live.comment)}`);

    if (live.hasAcl) {
      // In datacl order: GRANTs rebuild the array item by item, so the copy's datacl reads the same.
      const items = await sql<
        { grantor: string; grantee: string | null; privilege: string; grantable: boolean }[]
      >`
        select pg_get_userbyid(a.grantor) as grantor,
               case when a.grantee = 0 then null else pg_get_userbyid(a.grantee) end as grantee,
               a.privilege_type as privilege, a.is_grantable as grantable
        from pg_database d, lateral aclexplode(d.datacl) with ordinality as a(grantor, grantee, privilege_type, is_grantable, n)
        where d.datname = ${conn.database} order by a.n`;
      // Starting from nothing: the defaults (PUBLIC and the owner) are revoked, then each item granted.
      await sql.unsafe(`revoke all on database ${target} from public`);
      await sql.unsafe(`revoke all on database ${target} from ${quoteIdent(live.owner)} cascade`);
      for (const item of items) {
        const grant =
          `grant ${item.privilege} on database ${target} to ` +
          `${item.grantee === null ? 'public' : quoteIdent(item.grantee)}${item.grantable ? ' with grant option' : ''}`;
        // A superuser's or the owner's GRANT is recorded as granted by the owner.
        if (item.grantor === live.owner) {
          await sql.unsafe(grant);
          continue;
        }
        // Granted by another role (holding a grant option): granted as that role, so the grantor matches.
        await sql
          .begin(async (tx) => {
            await tx.unsafe(`set local role ${quoteIdent(item.grantor)}`);
            await tx.unsafe(grant);
          })
          .catch(() => sql.unsafe(grant));
      }
    }

    // The array as JSON: the agent's pools read no array types (openSql).
    const settings = await sql<{ role: string | null; setconfig: string[] }[]>`
      select case when s.setrole = 0 then null else pg_get_userbyid(s.setrole) end as role,
             array_to_json(s.setconfig) as setconfig
      from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase
      where d.datname = ${conn.database} order by s.setrole`;
    for (const { role, setconfig } of settings) {
      for (const stored of setconfig) {
        const statement =
          role === null
            ? `alter database ${target} ${settingClause(stored)}`
            : `alter role ${quoteIdent(role)} in database ${target} ${settingClause(stored)}`;
        await sql.unsafe(statement).catch((error: Error) => {
          throw new AppError(
            'restore_failed',
            `could not give the restored database the live one's setting ${stored.split('=')[0]}` +
              `${role === null ? '' : ` for role ${role}`}: ${error.message}; the live system is unchanged`,
            { cause: error },
          );
        });
      }
    }
    return applyBackupSettings(sql, staging, backupSettings ?? []);
  });
}

/**
 * Settings that load libraries of the server when a session starts: a library the backup's server had
 * may be missing here, and then no session of the database (or of the role) opens at all, GEM's and the
 * agent's included. Never taken from a backup; the live value, if any, is kept.
 */
const SERVER_LIBRARY_SETTINGS = new Set(['session_preload_libraries', 'local_preload_libraries']);

/** The backup's settings on the staging database (copyDatabaseProperties); a warning for each left out. */
async function applyBackupSettings(
  sql: postgres.Sql,
  staging: string,
  settings: DatabaseSetting[],
): Promise<string[]> {
  const warnings: string[] = [];
  for (const { role, name, value } of settings) {
    const what = `the backup's setting ${name}${role === undefined ? '' : ` of role ${role}`}`;
    if (SERVER_LIBRARY_SETTINGS.has(name.toLowerCase())) {
      warnings.push(
        `${what} was not restored: it loads libraries of the server the backup was made on, which may be missing here (the live value, if any, is kept)`,
      );
      continue;
    }
    if (role !== undefined && (await sql`select 1 from pg_roles where rolname = ${role}`).length === 0) {
      warnings.push(`${what} was not restored: role ${role} does not exist here`);
      continue;
    }
    const clause = settingClause(`${name}=${value}`);
    const statement =
      role === undefined
        ? `alter database ${quoteIdent(staging)} ${clause}`
        : `alter role ${quoteIdent(role)} in database ${quoteIdent(staging)} ${clause}`;
    await sql.unsafe(statement).catch((error: Error) => {
      warnings.push(`${what} was not restored (the live value, if any, is kept): ${error.message}`);
    });
  }
  return warnings;
}

/** Drops a database if it exists, first closing any session on it. */
export async function dropDatabase(conn: PgConnection, name: string): Promise<void> {
  await withMaintenance(conn, async (sql) => {
    await sql`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`;
    await sql.unsafe(`drop database if exists ${quoteIdent(name)}`);
  });
}

/**
 * Ends the server sessions still creating a database whose name holds `namePart`, and waits until they
 * are gone. A client killed during CREATE DATABASE does not stop it: the server finishes the command
 * afterwards, so without this a recovery could list the databases before that one exists and leave it.
 */
export async function endDatabaseCreations(conn: PgConnection, namePart: string): Promise<void> {
  await withMaintenance(conn, async (sql) => {
    for (let attempt = 0; ; attempt++) {
      const creators = await sql<{ pid: number }[]>`
        select pid from pg_stat_activity
        where pid <> pg_backend_pid() and state = 'active'
          and query ilike 'create database%' and strpos(query, ${namePart}) > 0`;
      if (creators.length === 0) return;
      if (attempt === 100) throw new Error(`sessions creating a ${namePart} database did not end`);
      for (const { pid } of creators) await sql`select pg_terminate_backend(${pid})`;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  });
}

/** The owner of the live database: without the backup's owners, restored objects are owned by it. */
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

function restoreErrors(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((line) => /error:/i.test(line))
    .filter((line) => !/errors ignored on restore/i.test(line));
}

/** How the staging restore treats owners and the roles the backup names (prepareRoles). */
export interface RolePlan {
  /** pg_restore keeps the dump's owners (no --no-owner): the restoring user is a superuser. */
  keepOwners: boolean;
  /**
   * Roles whose "does not exist" errors leave an item out instead of failing the restore (each is
   * reported): the roles this server lacks and may not create; 'any' for a backup that lists none.
   */
  missing?: Set<string> | 'any';
  /** Roles created (without login) for this restore, in the order created. */
  created: string[];
  /** Memberships granted for this restore, in the order granted (dropRestoreRoles takes them back). */
  granted: GrantedMembership[];
  /** What the owner is told: roles created, memberships granted, owners or privileges that could not be kept. */
  warnings: string[];
}

/** A membership a restore granted: `member` in `role`, recorded as granted by `grantedBy` if named. */
export interface GrantedMembership {
  role: string;
  member: string;
  grantedBy?: string;
}

/** What a restore made of the server's roles: the roles it created and the memberships it granted. */
export type MadeRoles = Pick<RolePlan, 'created' | 'granted'>;

/**
 * Records durably what a restore has made of the roles and the one role or membership it is about to
 * make, before making it (role-record.ts): a restore killed before its swap commits leaves them to
 * the next start, which takes them back.
 */
export type RecordMadeRoles = (made: MadeRoles) => Promise<void>;

const ROLE_ATTRIBUTES = ['superuser', 'createdb', 'createrole', 'replication', 'bypassrls'] as const;

/**
 * Before the staging restore: the roles the backup's objects name (owners, grantees, policy roles)
 * that this server lacks are created without login (a superuser's or CREATEROLE user's right), so
 * pg_restore can give every object its owner and every privilege back, REVOKEs included. Without
 * the rights, or for a backup that lists no roles (made before 2026-12-01), everything is owned by
 * the live database's owner, as before, and the plan says what could not be kept. Then the backup's
 * `memberships` among roles this server has that it lacks are granted (grantMemberships). Each role
 * and membership is given to `record` before it is made, and what turned out not to be made is
 * taken off again. On a failure here, what it created is taken back before the error is thrown.
 */
export async function prepareRoles(
  conn: PgConnection,
  roles: ManifestRole[] | undefined,
  memberships: ManifestMembership[] = [],
  record: RecordMadeRoles = async () => {},
): Promise<RolePlan> {
  return withMaintenance(conn, async (sql) => {
    const [me] = await sql<{ superuser: boolean; createrole: boolean; owner: string | null }[]>`
      select r.rolsuper as superuser, r.rolcreaterole as createrole,
             (select pg_get_userbyid(d.datdba) from pg_database d where d.datname = ${conn.database}) as owner
      from pg_roles r where r.rolname = current_user`;
    const owner = me?.owner ?? conn.user;
    if (roles === undefined) {
      return {
        keepOwners: false,
        missing: 'any',
        created: [],
        granted: [],
        warnings: [
          `this backup does not list the roles that owned its objects (made by an older agent): every object ` +
            `is restored owned by ${owner}, and privileges naming a role this server lacks are left out`,
        ],
      };
    }
    const names = roles.map((r) => r.name);
    const present = new Set(
      (
        await sql<{ name: string }[]>`
          select rolname as name from pg_roles
          where rolname in (select jsonb_array_elements_text(${JSON.stringify(names)}::text::jsonb))`
      ).map((r) => r.name),
    );
    const plan: RolePlan = { keepOwners: me?.superuser === true, created: [], granted: [], warnings: [] };
    const cannot: string[] = [];
    const mayCreate = me?.superuser === true || me?.createrole === true;
    try {
      for (const role of roles) {
        if (present.has(role.name)) continue;
        // pg_* names are reserved for the server's own roles: a newer server's are not ours to make.
        if (!mayCreate || role.name.startsWith('pg_')) {
          cannot.push(role.name);
          continue;
        }
        await record({ created: [...plan.created, role.name], granted: plan.granted });
        const created = await sql
          .unsafe(`create role ${quoteIdent(role.name)} nologin ${role.inherit ? 'inherit' : 'noinherit'}`)
          .then(
            () => true,
            (error: Error & { code?: string }) => {
              // Made meanwhile by someone else: it exists, which is all the restore needs (and not ours to drop).
              if (error.code !== '42710') throw error;
              return false;
            },
          );
        if (!created) {
          await record(plan);
          continue;
        }
        plan.created.push(role.name);
        const had = ROLE_ATTRIBUTES.filter((a) => role[a]).map((a) => a.toUpperCase());
        plan.warnings.push(
          `created role ${role.name} (no login): set its password if GEM logs in with it` +
            (had.length > 0 ? ` (it also had ${had.join(', ')}, not given: grant it again if needed)` : ''),
        );
      }
      await grantMemberships(sql, memberships, plan, record);
    } catch (error) {
      const kept = await undoRolePlan(sql, plan).catch(() => []);
      if (kept.length === 0 || !(error instanceof Error)) throw error;
      throw new AppError('restore_failed', `${error.message}; ${kept.join('; ')}`, { cause: error });
    }
    if (cannot.length > 0) {
      plan.missing = new Set(cannot);
      plan.warnings.push(
        `role${cannot.length > 1 ? 's' : ''} ${cannot.join(', ')} named by the backup's objects do${cannot.length > 1 ? '' : 'es'} not exist ` +
          `here and the database user ${conn.user} may not create ${cannot.length > 1 ? 'them' : 'it'}: their privileges and policies are left out ` +
          `(a superuser can run CREATE ROLE ... NOLOGIN, then restore again)`,
      );
    }
    if (!plan.keepOwners) {
      const others = names.filter((n) => n !== owner && !n.startsWith('pg_'));
      if (others.length > 0)
        plan.warnings.push(
          `the database user ${conn.user} is not a superuser, so every object is restored owned by ${owner}, ` +
            `not by its owner in the backup (${others.join(', ')})`,
        );
    }
    return plan;
  });
}

/**
 * Grants the backup's memberships whose role and member this server has, for each pair (role, member)
 * it lacks: with the admin (and, from PostgreSQL 16, inherit and set) options, recorded as granted by
 * the backup's grantor where this server has that role and allows it, else by the restoring user. A
 * membership the server has is left as it is, and none is ever taken away: roles are the server's,
 * and may serve other databases. One that cannot be granted is said in the plan's warnings.
 */
async function grantMemberships(
  sql: postgres.Sql,
  memberships: ManifestMembership[],
  plan: RolePlan,
  record: RecordMadeRoles,
): Promise<void> {
  if (memberships.length === 0) return;
  const names = [
    ...new Set(memberships.flatMap((m) => [m.role, m.member, ...(m.grantor ? [m.grantor] : [])])),
  ];
  const here = new Set(
    (
      await sql<{ name: string }[]>`
        select rolname as name from pg_roles
        where rolname in (select jsonb_array_elements_text(${JSON.stringify(names)}::text::jsonb))`
    ).map((r) => r.name),
  );
  const pair = (role: string, member: string) => JSON.stringify([role, member]);
  const existing = new Set(
    (
      await sql<{ role: string; member: string }[]>`
        select pg_get_userbyid(roleid) as role, pg_get_userbyid(member) as member from pg_auth_members`
    ).map((m) => pair(m.role, m.member)),
  );
  for (const m of memberships) {
    if (!here.has(m.role) || !here.has(m.member) || existing.has(pair(m.role, m.member))) continue;
    const options =
      m.inherit !== undefined && m.set !== undefined
        ? ` with admin ${m.admin}, inherit ${m.inherit}, set ${m.set}`
        : m.admin
          ? ' with admin option'
          : '';
    const grant = `grant ${quoteIdent(m.role)} to ${quoteIdent(m.member)}${options}`;
    // Recorded before each attempt, with the grantor it names (the revoke must name the same one).
    const attempt = async (grantedBy: string | undefined) => {
      const granted = { role: m.role, member: m.member, ...(grantedBy === undefined ? {} : { grantedBy }) };
      await record({ created: plan.created, granted: [...plan.granted, granted] });
      const by = grantedBy === undefined ? '' : ` granted by ${quoteIdent(grantedBy)}`;
      return sql.unsafe(`${grant}${by}`).then(
        () => undefined,
        (error: Error) => error,
      );
    };
    let grantedBy = m.grantor !== undefined && here.has(m.grantor) ? m.grantor : undefined;
    let failure = grantedBy === undefined ? undefined : await attempt(grantedBy);
    if (grantedBy === undefined || failure) {
      grantedBy = undefined;
      failure = await attempt(undefined);
    }
    if (failure) {
      await record(plan);
      plan.warnings.push(
        `role ${m.member} could not be made a member of role ${m.role} as in the backup: ${failure.message}`,
      );
      continue;
    }
    existing.add(pair(m.role, m.member));
    plan.granted.push({ role: m.role, member: m.member, ...(grantedBy === undefined ? {} : { grantedBy }) });
    plan.warnings.push(
      `granted role ${m.role} to ${m.member}${m.admin ? ' (with admin option)' : ''}, as in the backup`,
    );
  }
}

/**
 * Takes back what a restore's plan did, newest first: its memberships are revoked, then each role it
 * created is dropped while it is as the restore made it (no login, no settings, no other membership)
 * and nothing depends on it (DROP ROLE refuses otherwise). For a restore that did not commit, once its
 * staging database is gone. Returns a line for each role or membership kept, and why.
 */
async function undoRolePlan(sql: postgres.Sql, plan: MadeRoles): Promise<string[]> {
  const kept: string[] = [];
  const why = (error: Error & { detail?: string }) =>
    `${error.message}${error.detail ? ` (${error.detail.replace(/\s+/g, ' ')})` : ''}`;
  for (const m of [...plan.granted].reverse()) {
    const by = m.grantedBy === undefined ? '' : ` granted by ${quoteIdent(m.grantedBy)}`;
    await sql
      .unsafe(`revoke ${quoteIdent(m.role)} from ${quoteIdent(m.member)}${by}`)
      .catch((error: Error) => {
        kept.push(
          `the membership of ${m.member} in role ${m.role} this restore granted was kept: ${why(error)}`,
        );
      });
  }
  for (const name of [...plan.created].reverse()) {
    const reason = await sql
      .begin(async (tx) => {
        const [role] = await tx<{ login: boolean; memberships: string; settings: string }[]>`
          select r.rolcanlogin as login,
                 (select count(*) from pg_auth_members m where r.oid in (m.roleid, m.member, m.grantor)
                    -- Not the one PostgreSQL 16 gives a CREATEROLE user in each role it creates (granted
                    -- by the bootstrap superuser): it goes with the role.
                    and not (m.roleid = r.oid and m.member = (select oid from pg_roles where rolname = current_user)
                             and m.grantor = 10)) as memberships,
                 (select count(*) from pg_db_role_setting s where s.setrole = r.oid) as settings
          from pg_roles r where r.rolname = ${name}`;
        if (!role) return undefined;
        if (role.login) return 'it may log in now';
        if (Number(role.memberships) > 0) return 'it has a membership this restore did not grant';
        if (Number(role.settings) > 0) return 'it has settings of its own now';
        await tx.unsafe(`drop role ${quoteIdent(name)}`);
        return undefined;
      })
      .catch(why);
    if (reason) kept.push(`the role ${name} this restore created was kept: ${reason}`);
  }
  return kept;
}

/**
 * After a restore that did not commit (failed, cancelled, its swap undone, or killed: its record at the
 * next start), once its staging database is dropped: takes back the roles and memberships it created
 * (undoRolePlan). Returns a line for each one kept, for the log.
 */
export async function dropRestoreRoles(conn: PgConnection, plan: MadeRoles): Promise<string[]> {
  if (plan.created.length === 0 && plan.granted.length === 0) return [];
  return withMaintenance(conn, (sql) => undoRolePlan(sql, plan));
}

/** A dump item pg_restore left out because a role it names does not exist (tolerated by the RolePlan). */
export interface LostItem {
  role: string;
  /** The statement(s) that failed, as pg_restore printed them. */
  command: string;
}

/** A line holding pg_restore's error for a statement naming a role the server lacks. */
const ROLE_MISSING = /ERROR: +role "(.*)" does not exist/;
/** The text of that error and its statement(s), as one write of pg_restore's (it ends with a blank line). */
const ROLE_ERROR = /ERROR: +role "([^\n]*)" does not exist\n(?:[^\n]*\n)*?Command was: ([\s\S]*?)\n\n/g;
/** stderr kept whole for ROLE_ERROR: beyond it, the errors not seen are not tolerated. */
const RAW_LIMIT = 32 * 1024 * 1024;

/** How many left-out items are kept to report (the count is always exact). */
const LOST_KEPT = 50;

/** One line per role: how many of the backup's items naming it were left out, and the first few. */
export function describeLost(lost: LostItem[], total = lost.length): string[] {
  const byRole = new Map<string, string[]>();
  for (const item of lost) byRole.set(item.role, [...(byRole.get(item.role) ?? []), item.command]);
  const lines = [...byRole].map(
    ([role, commands]) =>
      `role ${role} does not exist: ${commands.length} item${commands.length > 1 ? 's' : ''} of the backup not restored: ` +
      commands
        .slice(0, 5)
        .map((c) => c.replace(/\s+/g, ' ').slice(0, 200))
        .join(' | '),
  );
  if (total > lost.length) lines.push(`${total - lost.length} more items not restored for missing roles`);
  return lines;
}

/**
 * pg_restore jobs for the staging restore: one per core, at least 2, at most 4. Measured on 2 cores
 * (the agent's own -Z1 dump, quiet machine): -j 2 restored 1 GB in 7.0-8.0 s against 7.7-8.5 s for
 * -j 4, and 4 GB in 43.4-44.0 s against 45.6-45.9 s: more jobs than cores only compete for them.
 */
export const RESTORE_JOBS = Math.min(4, Math.max(2, availableParallelism()));

/** One step of a parallel pg_restore, as its --verbose output reports it. */
export interface RestoreItemEvent {
  kind: 'launching' | 'finished';
  /** The item's dump id (as in `pg_restore -l`). */
  id: number;
  /** What it is and its name, as printed: "TABLE DATA pgbench_accounts", "INDEX name", ... */
  what: string;
}

/** Item lines of pg_restore --verbose in parallel mode: "pg_restore: finished item 3379 TABLE DATA name". */
const ITEM_LINE = /^pg_restore: (launching|finished) item (\d+) (.*)$/;
/** Other --verbose progress lines: everything prefixed "pg_restore: " that is not an error, warning or hint. */
const PROGRESS_LINE = /^pg_restore: (?!error:|warning:|detail:|hint:)/;

/**
 * Restores a custom-format dump into `database` with `pg_restore -j RESTORE_JOBS`: objects owned as in
 * the dump with `roles.keepOwners`, else by the live database's owner. An error naming a role the
 * plan tolerates leaves its item out and is returned (`lost`); any other error fails the restore. pg_restore's exit code is not trusted either way: its errors are read, and
 * the caller compares row counts with the manifest. With `onItem`, pg_restore runs --verbose and
 * each item it launches and finishes is reported as it happens (progress lines are not kept, so
 * its error lines are never pushed out of the tail kept for the message).
 */
export async function restoreDump(options: {
  conn: PgConnection;
  tools: PostgresTools;
  database: string;
  dumpPath: string;
  signal?: AbortSignal;
  jobs?: number;
  onSpawn?: (pid: number) => void;
  onItem?: (event: RestoreItemEvent) => void;
  /** Owners kept and missing roles tolerated (prepareRoles); without it, as the live database's owner, none tolerated. */
  roles?: RolePlan;
}): Promise<{ lost: LostItem[]; lostCount: number }> {
  const { conn, tools, onItem } = options;
  const keepOwners = options.roles?.keepOwners === true;
  const owner = keepOwners ? conn.user : await liveOwner(conn);
  const missing = options.roles?.missing;
  const tolerated = (role: string) => missing === 'any' || missing?.has(role) === true;
  const jobs = options.jobs ?? RESTORE_JOBS;
  const args = [
    ...connectionArgs(conn),
    '--dbname',
    options.database,
    ...(keepOwners ? [] : ['--no-owner']),
    ...(!keepOwners && owner !== conn.user ? ['--role', owner] : []),
    `--jobs=${jobs}`,
    // Item lines are printed in parallel mode only.
    ...(onItem && jobs > 1 ? ['--verbose'] : []),
    options.dumpPath,
  ];
  const child = spawnProcess(tools.path('pg_restore'), args, {
    env: connectionEnv(conn),
    stdio: ['ignore', 'ignore', 'pipe'],
    signal: options.signal,
  });
  const kept = new TailBuffer();
  let partial = '';
  // All of stderr (up to RAW_LIMIT), for the errors naming missing roles: with -j the workers' lines
  // interleave mid-line ("pg_restore:pg_restore:  error: error: ..."), but each message's text after
  // its prefixes is one write, so it is found whole in the stream.
  let raw = '';
  const line = (text: string) => {
    const missingRole = ROLE_MISSING.exec(text);
    if (missingRole && tolerated(missingRole[1]!)) return;
    const item = ITEM_LINE.exec(text);
    if (item) {
      onItem?.({ kind: item[1] as RestoreItemEvent['kind'], id: Number(item[2]), what: item[3]! });
      return;
    }
    if (onItem && PROGRESS_LINE.test(text)) return;
    kept.push(`${text}\n`);
  };
  child.stderr?.on('data', (chunk: Buffer) => {
    if (raw.length < RAW_LIMIT) raw += chunk.toString();
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const text of lines) line(text);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  if (child.pid !== undefined) options.onSpawn?.(child.pid);
  const exit = await exited.catch((error: Error) => {
    throw new AppError('restore_failed', `pg_restore could not run: ${error.message}`);
  });
  if (partial) line(partial);
  const stderr = kept.toString();
  if (options.signal?.aborted) throw new AppError('cancelled', 'the job was cancelled');
  if (exit.signal) {
    throw new AppError(
      'restore_failed',
      `pg_restore was stopped by ${exit.signal}; the live system is unchanged`,
    );
  }
  // The errors naming a role the plan tolerates leave their item out; any other error fails.
  const lost: LostItem[] = [];
  let lostCount = 0;
  for (const match of raw.matchAll(ROLE_ERROR)) {
    if (!tolerated(match[1]!)) continue;
    lostCount++;
    if (lost.length < LOST_KEPT) lost.push({ role: match[1]!, command: match[2]!.trim() });
  }
  const ignored = /errors ignored on restore/i.test(stderr);
  const errors = restoreErrors(stderr).filter((text) => {
    const missingRole = ROLE_MISSING.exec(text);
    return !(missingRole && tolerated(missingRole[1]!));
  });
  // Its errors, counted by their "error: " prefix (one write each): pg_restore -j's own count, "errors
  // ignored on restore: N", counts an error of the leader's twice once its workers have started.
  const untolerated = (raw.match(/\berror: /g) ?? []).length - lostCount;
  // Beyond RAW_LIMIT the errors were not all counted: the lines kept decide, none tolerated.
  const unread = raw.length >= RAW_LIMIT && (lostCount > 0 || errors.length > 0);
  if (untolerated > 0 || unread || (exit.code !== 0 && !ignored)) {
    const first = errors.slice(0, 3).join(' | ') || stderr || `exit ${exit.code}`;
    // pg_restore wrote only into the staging database: the live one was never touched.
    const full = stderr.split('\n').find((l) => DISK_FULL.test(l));
    if (full) throw databaseDiskFull(full.trim());
    const lost = stderr.split('\n').find((l) => LOST_CONNECTION.test(l));
    if (lost) {
      throw new AppError(
        'dependency_down',
        `the connection to the database server was lost during the restore (${lost.trim().slice(0, 300)}); ` +
          `nothing was changed: GEM's database is as before; try again once PostgreSQL runs`,
      );
    }
    throw new AppError(
      'restore_failed',
      `the database could not be restored; nothing was changed: GEM's database is as before: ${first.slice(0, 1000)}`,
    );
  }
  // A REVOKE left out gives a privilege back (EXECUTE on a SECURITY DEFINER function to PUBLIC): refused.
  const revoke = lost.find((item) => /\bREVOKE\b/i.test(item.command));
  if (revoke) {
    throw new AppError(
      'restore_failed',
      `the backup takes privileges away from roles, but role ${revoke.role} it names does not exist here ` +
        `and could not be created, so restoring would give them back ("${revoke.command.split('\n')[0]!.slice(0, 200)}"); ` +
        `nothing was changed: GEM's database is as before; as a superuser run CREATE ROLE ${quoteIdent(revoke.role)} NOLOGIN ` +
        `(or ALTER ROLE ${quoteIdent(conn.user)} CREATEROLE), then restore again`,
      { details: { missingRole: revoke.role } },
    );
  }
  return { lost, lostCount };
}

/** PostgreSQL's words for a full disk under the server (SQLSTATE 53100, disk_full). */
export const DISK_FULL = /No space left on device|could not extend file|disk quota exceeded|\b53100\b/i;

/** The `no_space` error for the database's disk filling up while the staging copy was restored. */
export function databaseDiskFull(what: string): AppError {
  return new AppError(
    'no_space',
    `the database's disk filled up during the restore (${what.slice(0, 300)}); nothing was changed: ` +
      `GEM's database is as before; free some space on the disk that holds the database and try again`,
  );
}

/** libpq's words for a server that went away (stopped, restarted, or the network dropped it). */
const LOST_CONNECTION =
  /server closed the connection unexpectedly|could not connect to server|connection to server .*failed|no connection to the server|terminating connection due to administrator command|the database system is (shutting down|starting up)|could not (send|receive) data (to|from) server|SSL SYSCALL error|connection to server was lost/i;

/** Below runProcess's stdout limit (1 MiB): a listing this long may have lost its start. */
const LISTING_LIMIT = (1 << 20) - 4096;

/**
 * Kinds of dump items pg_restore -j restores in its parallel loop (the data and post-data sections),
 * each reported by a "finished item" line: the staging's steps. Schema items before them (tables,
 * types, functions) are created first, quickly, and are not counted.
 */
const STEP_KINDS = [
  'TABLE DATA',
  'SEQUENCE SET',
  'BLOBS',
  'LARGE OBJECTS',
  'MATERIALIZED VIEW DATA',
  'INDEX',
  'INDEX ATTACH',
  'CONSTRAINT',
  'FK CONSTRAINT',
  'TRIGGER',
  'EVENT TRIGGER',
  'POLICY',
  'STATISTICS',
];
const STEP_LINE = new RegExp(`^(\\d+); \\d+ \\d+ (?:${STEP_KINDS.join('|')}) `);

/** What `pg_restore --list` says of a dump: its table data items, and every item of its parallel loop. */
export interface DumpListing {
  /** The TABLE DATA items by dump id (a name with a space is left out). */
  tables: Map<number, { schema: string; name: string }>;
  /** The dump ids of the data and post-data items (STEP_KINDS): the staging's steps, loaded in any order. */
  steps: Set<number>;
}

/**
 * Lists a custom-format dump (`pg_restore -l`). Only unambiguous lines are kept; on any failure both
 * are empty: the restore itself then reports what is wrong with the dump.
 */
export async function listDump(tools: PostgresTools, dumpPath: string): Promise<DumpListing> {
  const listed: DumpListing = { tables: new Map(), steps: new Set() };
  const listing = await runProcess(tools.path('pg_restore'), ['--list', dumpPath]).catch(() => undefined);
  // A listing cut to the tail runProcess keeps could start mid-line, with a wrong id: not used then.
  if (listing?.code !== 0 || listing.stdout.length >= LISTING_LIMIT) return listed;
  for (const text of listing.stdout.split('\n')) {
    const step = STEP_LINE.exec(text);
    if (step) listed.steps.add(Number(step[1]));
    const match = /^(\d+); \d+ \d+ TABLE DATA (.*)$/.exec(text);
    if (!match) continue;
    const parts = match[2]!.split(' ');
    if (parts.length === 3) listed.tables.set(Number(match[1]), { schema: parts[0]!, name: parts[1]! });
  }
  return listed;
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
    // Its output file is the one thing pg_dump writes: a full disk there is the work folder's, not the database's.
    const full = dump.stderr.split('\n').find((l) => DISK_FULL.test(l) && /output file/.test(l));
    if (full) {
      const dir = dirname(options.filePath);
      throw new AppError(
        'no_space',
        `the disk filled up under ${dir} while the agent's settings were copied into the restored database ` +
          `(${full.trim().slice(0, 300)}); nothing was changed; free some space (old backups, logs) and try again`,
        { details: { dir } },
      );
    }
    throw new AppError(
      'restore_failed',
      `could not copy the agent's settings: pg_dump: ${dump.stderr || `exit ${dump.code}`}; the live system is unchanged`,
    );
  }
  await restoreDump({ conn, tools, database: options.staging, dumpPath: options.filePath, jobs: 1 });
  const copied = await hasAgentSchema(conn, options.staging);
  if (!copied)
    throw new AppError(
      'restore_failed',
      "could not copy the agent's settings into the restored database; the live system is unchanged",
    );
}

/** Forbids (or allows again) new connections to a database: the swap's fence. */
export async function setAllowConnections(conn: PgConnection, name: string, allow: boolean): Promise<void> {
  await withMaintenance(conn, (sql) =>
    sql.unsafe(`alter database ${quoteIdent(name)} with allow_connections ${allow ? 'true' : 'false'}`),
  );
}

/** How long terminateSessions waits for the terminated sessions to end. */
const TERMINATE_WAIT_MS = 10_000;

/** Terminates every other session on `name` and waits (up to ~10 s) until none remain. */
export async function terminateSessions(conn: PgConnection, name: string): Promise<void> {
  await withMaintenance(conn, async (sql) => {
    const deadline = performance.now() + TERMINATE_WAIT_MS;
    // A terminated backend is usually gone within milliseconds: look again soon, then less often
    // (a fixed 200 ms pause could add 0.2 s per database whose sessions were still ending).
    for (let pause = 5; ; pause = Math.min(200, pause * 2)) {
      await sql`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`;
      const [row] = await sql<{ n: string }[]>`
        select count(*) as n from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`;
      if (Number(row!.n) === 0) return;
      if (performance.now() > deadline)
        throw new AppError('restore_failed', `other sessions on database ${name} would not close`);
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  });
}

/** Renames a database (it must have no sessions). */
export async function renameDatabase(conn: PgConnection, from: string, to: string): Promise<void> {
  await withMaintenance(conn, (sql) =>
    sql.unsafe(`alter database ${quoteIdent(from)} rename to ${quoteIdent(to)}`),
  );
}
