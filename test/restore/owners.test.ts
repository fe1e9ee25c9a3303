/**
 * A restore gives every object its owner and every privilege back (fidelity F2, F3): roles app_owner,
 * app_writer and app_reader own a schema, a table, a view, a SECURITY DEFINER function and a large
 * object, with a REVOKE FROM PUBLIC, GRANTs (one WITH GRANT OPTION), a policy and default privileges.
 * Before, pg_restore ran --no-owner (everything came back owned by the database's owner, here the
 * superuser) and its 'role "x" does not exist' errors were ignored, so a role dropped after the backup
 * silently took the REVOKE, other roles' GRANTs in the same entry, the policy and the default
 * privileges with it. Now the backup lists the roles its objects name; the restore creates the missing
 * ones without login (and says so), then restores the owners; a backup listing no roles is restored
 * as before, saying so, and refused when a missing role would cost a REVOKE.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeLost, prepareRoles, restoreDump } from '../../agent/restore/database';
import { restoreSettled } from '../../agent/restore/restore';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { runProcess } from '../../agent/system/spawn';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { backupNow, runRestore, sealArchive, unpackBackup, withManifest } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let url: string;

const SETUP = `
  create role app_owner login; create role app_writer; create role app_reader noinherit;
  create schema app authorization app_owner;
  set role app_owner;
  create table app.things (id serial primary key, v text);
  insert into app.things (v) values ('one'), ('two');
  alter table app.things enable row level security;
  alter table app.things force row level security;
  create policy p_reader on app.things for select to app_reader using (v <> 'secret');
  grant select on app.things to app_reader;
  grant insert, update on app.things to app_writer with grant option;
  grant usage on schema app to app_reader, app_writer;
  alter default privileges in schema app grant select on tables to app_reader;
  reset role;
  create view app.v as select id, v from app.things;
  alter view app.v owner to app_reader;
  create function app.sec() returns int language sql security definer as 'select 1';
  alter function app.sec() owner to app_writer;
  revoke execute on function app.sec() from public;
  grant execute on function app.sec() to app_reader;
  select lo_create(424242);
  alter large object 424242 owner to app_owner;
  grant select on large object 424242 to app_reader;`;

/** The schema as pg_dump writes it (owners, ACLs, policies, default privileges), without the agent's. */
async function schema(): Promise<string> {
  const out = await runProcess(join(pg.binDir, 'pg_dump'), [
    '--schema-only',
    '--exclude-schema=gem_backup',
    '--dbname',
    url,
  ]);
  expect(out.code, out.stderr).toBe(0);
  // pg_dump's \restrict key is new on every run.
  return out.stdout.replace(/^\\(un)?restrict .*$/gm, '');
}

/** What pg_dump --schema-only leaves out: large objects' owners and ACLs, and the roles' attributes. */
async function extras(): Promise<unknown> {
  return withSql(url, async (sql) => ({
    lobs: await sql`select oid::int as oid, pg_get_userbyid(lomowner) as owner, lomacl::text as acl
      from pg_largeobject_metadata order by oid`,
    roles: await sql`select rolname, rolcanlogin, rolinherit from pg_roles
      where rolname like 'app\\_%' order by rolname`,
  }));
}

async function dropReader(): Promise<void> {
  // A restore drops the database it replaced after it reports success; until then that database's
  // objects still depend on the role (roles are the server's, DROP OWNED only this database's).
  await restoreSettled(t.agent.config.dataDir);
  await withSql(url, async (sql) => {
    await sql.unsafe(
      'reassign owned by app_reader to app_owner; drop owned by app_reader; drop role app_reader',
    );
  });
}

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  url = databaseUrl(t.agent.sources.conn);
  await withSql(url, (sql) => sql.unsafe(SETUP));
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('owners and privileges across a restore', () => {
  it('the manifest lists the roles the objects name, with their attributes and no secret', async () => {
    const name = await backupNow(t.agent, 'roles');
    const { manifest } = await unpackBackup(t.agent, t.agent.catalog.pathOf(name));
    const roles = manifest.roles ?? [];
    expect(roles.map((r) => r.name)).toEqual(
      expect.arrayContaining(['app_owner', 'app_reader', 'app_writer']),
    );
    expect(roles.find((r) => r.name === 'app_owner')).toMatchObject({
      login: true,
      inherit: true,
      superuser: false,
    });
    expect(roles.find((r) => r.name === 'app_reader')).toMatchObject({ login: false, inherit: false });
    expect(JSON.stringify(roles)).not.toMatch(/password|SCRAM|md5/i);
  });

  it('brings owners back when every role still exists', async () => {
    const before = await schema();
    const name = await backupNow(t.agent, 'owners');
    await withSql(url, (sql) =>
      sql.unsafe('alter table app.things owner to app_writer; alter function app.sec() owner to app_owner'),
    );
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(name), { skipSafetyBackup: true });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(await schema()).toBe(before);
    expect(before).toContain('ALTER FUNCTION app.sec() OWNER TO app_writer;');
    expect(before).toContain('ALTER TABLE app.v OWNER TO app_reader;');
    expect((job.result as { warnings?: string[] }).warnings).toBeUndefined();
  });

  it('creates a role dropped after the backup (no login, said so) and keeps every owner, grant, REVOKE, policy and default privilege', async () => {
    const before = await schema();
    const extrasBefore = await extras();
    const name = await backupNow(t.agent, 'reader');
    await dropReader();
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(name), { skipSafetyBackup: true });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(await schema()).toBe(before);
    expect(before).toContain('REVOKE ALL ON FUNCTION app.sec() FROM PUBLIC;');
    expect(before).toContain('CREATE POLICY p_reader');
    expect(before).toMatch(
      /ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA app GRANT SELECT ON TABLES +TO app_reader;/,
    );
    // app_reader was NOLOGIN NOINHERIT: created the same.
    expect(await extras()).toEqual(extrasBefore);
    const warnings = (job.result as { warnings?: string[] }).warnings ?? [];
    expect(warnings).toEqual(['created role app_reader (no login): set its password if GEM logs in with it']);
  });

  it('restores a backup listing no roles as before, saying so, and refuses one whose REVOKE a missing role would cost', async () => {
    const name = await backupNow(t.agent, 'old');
    const { manifest, entries } = await unpackBackup(t.agent, t.agent.catalog.pathOf(name));
    const path = join(t.dataDir, 'no-roles.tar.gz');
    await sealArchive(
      t.agent.keyring.activeKey,
      t.agent.keyring.installationId,
      withManifest(manifest, entries, { roles: undefined }),
      path,
    );
    const restored = await runRestore(t.agent, path, { skipSafetyBackup: true });
    expect(restored.state, JSON.stringify(restored.error)).toBe('succeeded');
    expect((restored.result as { warnings?: string[] }).warnings).toEqual([
      expect.stringContaining('does not list the roles that owned its objects'),
    ]);

    // Without app_reader the function's entry (REVOKE FROM PUBLIC + GRANT to app_reader) cannot be restored.
    const live = await schema();
    await dropReader();
    const refused = await runRestore(t.agent, path, { skipSafetyBackup: true });
    expect(refused.state).toBe('failed');
    expect(refused.error?.code).toBe('restore_failed');
    expect(refused.error?.message).toContain('role app_reader');
    expect(refused.error?.message).toContain('REVOKE ALL ON FUNCTION app.sec() FROM PUBLIC');
    expect(refused.error?.message).toContain('nothing was changed');
    // The live database kept its function's REVOKE (only what dropping the role took is gone).
    expect(await schema()).toContain('REVOKE ALL ON FUNCTION app.sec() FROM PUBLIC;');
    expect(live).toContain('REVOKE ALL ON FUNCTION app.sec() FROM PUBLIC;');
    await withSql(url, (sql) => sql.unsafe('create role app_reader noinherit'));
  });
});

describe('a database user that may not create roles', () => {
  it('restores without the missing role, listing every item left out, and refuses when a REVOKE would be lost', async () => {
    const conn = t.agent.sources.conn;
    const admin = databaseUrl(conn, 'postgres');
    await withSql(admin, async (sql) => {
      await sql.unsafe("create role lowly login createdb password 'lowly-pw'; create role gone nologin");
      for (const name of ['fb_src', 'fb_dst', 'fb_dst2'])
        await sql.unsafe(`create database ${name} owner lowly`);
    });
    const lowly = { ...conn, user: 'lowly', password: 'lowly-pw', database: 'fb_src' };
    await withSql(databaseUrl(lowly), (sql) =>
      sql.unsafe(`
        create table grants (id int);
        grant select on grants to gone;
        grant insert on grants to app_writer;
        create function f() returns int language sql security definer as 'select 1';`),
    );
    const dumpPath = join(t.dataDir, 'fb.dump');
    const dumpOnce = async () => {
      const out = await runProcess(join(pg.binDir, 'pg_dump'), [
        '--format=custom',
        '--file',
        dumpPath,
        '--dbname',
        databaseUrl(lowly),
      ]);
      expect(out.code, out.stderr).toBe(0);
    };
    await dumpOnce();
    await withSql(admin, (sql) => sql.unsafe('drop owned by gone cascade').catch(() => {}));
    await withSql(databaseUrl(lowly), (sql) => sql.unsafe('revoke all on grants from gone'));
    await withSql(admin, (sql) => sql.unsafe('drop role gone'));
    const recorded = ['gone', 'lowly', 'app_writer'].map((name) => ({
      name,
      login: name === 'lowly',
      inherit: true,
      superuser: false,
      createdb: false,
      createrole: false,
      replication: false,
      bypassrls: false,
    }));

    const plan = await prepareRoles({ ...lowly, database: 'fb_dst' }, recorded);
    expect(plan.keepOwners).toBe(false);
    expect(plan.created).toEqual([]);
    expect(plan.warnings.join('\n')).toContain('role gone named by the backup');
    const restored = await restoreDump({
      conn: { ...lowly, database: 'fb_dst' },
      tools: t.agent.sources.tools,
      database: 'fb_dst',
      dumpPath,
      roles: plan,
    });
    // The whole ACL entry is lost: app_writer's INSERT too, and it is listed.
    expect(describeLost(restored.lost, restored.lostCount)).toEqual([
      expect.stringMatching(
        /^role gone does not exist: 1 item of the backup not restored: GRANT SELECT ON TABLE public.grants TO gone; GRANT INSERT ON TABLE public.grants TO app_writer;/,
      ),
    ]);

    // Without a plan that tolerates it, the same error fails the restore (it used to be ignored).
    await expect(
      restoreDump({
        conn: { ...lowly, database: 'fb_dst2' },
        tools: t.agent.sources.tools,
        database: 'fb_dst2',
        dumpPath,
      }),
    ).rejects.toThrow(/could not be restored.*role "gone" does not exist/);

    // A REVOKE in the lost entry refuses the restore.
    await withSql(admin, (sql) => sql.unsafe('create role gone nologin'));
    await withSql(databaseUrl(lowly), (sql) =>
      sql.unsafe('revoke execute on function f() from public; grant execute on function f() to gone'),
    );
    await rm(dumpPath);
    await dumpOnce();
    await withSql(databaseUrl(lowly), (sql) => sql.unsafe('revoke all on function f() from gone'));
    await withSql(admin, async (sql) => {
      await sql.unsafe('drop role gone');
      await sql.unsafe('drop database fb_dst2');
      await sql.unsafe('create database fb_dst2 owner lowly');
    });
    const again = await prepareRoles({ ...lowly, database: 'fb_dst2' }, recorded);
    await expect(
      restoreDump({
        conn: { ...lowly, database: 'fb_dst2' },
        tools: t.agent.sources.tools,
        database: 'fb_dst2',
        dumpPath,
        roles: again,
      }),
    ).rejects.toThrow(/REVOKE ALL ON FUNCTION public.f\(\) FROM PUBLIC.*CREATE ROLE "gone" NOLOGIN/);
  });
});
