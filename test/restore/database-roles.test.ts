/**
 * A restore brings the database back as it was, onto a cluster that never saw it (a DR recovery on a
 * new box): the memberships among the roles the backup names (GRANT m_writer TO m_app, with admin
 * option and grantor) and the backed-up database's settings (ALTER DATABASE ... SET, ALTER ROLE ... IN
 * DATABASE ... SET), which used to come from the live database only; and a restore that fails before
 * its swap leaves no role nor membership of its own behind. Two real clusters: A makes the backup,
 * B (another installation's database, A's keys imported) restores it.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DatabaseSetting } from '../../agent/backup/manifest';
import { keyringFileSchema } from '../../agent/keys/keyring';
import { createLogger, silentLogger } from '../../agent/log';
import { type RestoreFaults, restoreFromFile, restoreSettled } from '../../agent/restore/restore';
import { takeBackRecordedRoles, writeRoleRecord } from '../../agent/restore/role-record';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { backupNow, leftovers, runRestore, sealArchive, unpackBackup, withManifest } from './helpers';

let pgA: TestPostgres;
let pgB: TestPostgres;
let a: TestAgent;
let b: TestAgent;
let backupPath: string;
/** B's agent's warnings, as logged. */
const logged: string[] = [];

/**
 * On A: m_owner owns a table; m_writer and m_reader hold privileges on it; m_app owns a table of its
 * own; m_pre1 owns one and m_pre2 reads it. Memberships: m_writer in m_app (admin option, granted by
 * m_owner), m_reader in m_writer, m_pre1 in m_pre2, and m_tuner (which names nothing: not recorded)
 * in m_app. Settings: the database's time zone and search path, m_app's and m_tuner's work_mem in it.
 */
const SETUP_A = (db: string) => `
  create role m_owner login; create role m_writer; create role m_reader; create role m_app login;
  create role m_pre1; create role m_pre2; create role m_tuner;
  create table m_things (id int); alter table m_things owner to m_owner;
  grant insert on m_things to m_writer; grant select on m_things to m_reader;
  create table m_app_log (v text); alter table m_app_log owner to m_app;
  create table m_pre (v text); alter table m_pre owner to m_pre1; grant select on m_pre to m_pre2;
  grant m_writer to m_app with admin option granted by m_owner;
  grant m_reader to m_writer;
  grant m_pre1 to m_pre2;
  grant m_tuner to m_app;
  alter database "${db}" set timezone = 'Asia/Tokyo';
  alter database "${db}" set search_path = "$user", public, "odd ""schema""";
  alter role m_app in database "${db}" set work_mem = '8MB';
  alter role m_tuner in database "${db}" set work_mem = '16MB';`;

/**
 * On B, before any restore: m_app (GEM's login, made by the new box's installer), m_pre1 and m_pre2
 * without their membership, b_other with m_app as a member (the live cluster's own, for another
 * database), and the live database's own time zone and statement timeout.
 */
const SETUP_B = (db: string) => `
  create role m_app login; create role m_pre1; create role m_pre2; create role b_other;
  grant b_other to m_app;
  alter database "${db}" set timezone = 'UTC';
  alter database "${db}" set statement_timeout = '5min';`;

const urlB = (database = b.agent.sources.conn.database) => databaseUrl(b.agent.sources.conn, database);

/** B's roles named m_* or b_* (name, login, inherit) and the memberships among them, with admin option and grantor. */
async function rolesOfB(): Promise<{ roles: string[]; memberships: string[] }> {
  return withSql(urlB('postgres'), async (sql) => ({
    roles: (
      await sql<{ r: string }[]>`
        select rolname || ' login=' || rolcanlogin || ' inherit=' || rolinherit as r from pg_roles
        where rolname ~ '^(m|b)_' order by rolname`
    ).map((row) => row.r),
    memberships: (
      await sql<{ m: string }[]>`
        select pg_get_userbyid(roleid) || ' to ' || pg_get_userbyid(member) || ' admin=' || admin_option
               || ' by ' || pg_get_userbyid(grantor) as m
        from pg_auth_members where pg_get_userbyid(member) ~ '^(m|b)_' order by 1`
    ).map((row) => row.m),
  }));
}

/** The settings of B's live database: `*` for the database's own, else the role's, then `name=value`. */
async function settingsOfB(): Promise<string[]> {
  const rows = await withSql(
    urlB('postgres'),
    (sql) => sql<{ s: string }[]>`
      select coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '*') || ':' || c as s
      from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase, unnest(s.setconfig) c
      where d.datname = ${b.agent.sources.conn.database} order by 1`,
  );
  return rows.map((r) => r.s);
}

/** Restores onto B a copy of A's backup whose manifest records `settings` instead (sealed with A's key). */
async function restoreWithSettings(file: string, settings: DatabaseSetting[]) {
  const { manifest, entries } = await unpackBackup(a.agent, backupPath);
  const path = join(b.dataDir, file);
  await sealArchive(
    a.agent.keyring.activeKey,
    a.agent.keyring.installationId,
    withManifest(manifest, entries, { postgres: { ...manifest.postgres, settings } }),
    path,
  );
  const job = await runRestore(b.agent, path, { skipSafetyBackup: true, otherInstallation: true });
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return job;
}

beforeAll(async () => {
  [pgA, pgB] = await Promise.all([startPostgres(), startPostgres()]);
  a = await startTestAgent(pgA);
  b = await startTestAgent(pgB, {
    log: createLogger({ level: 'warn', write: (line) => logged.push(line) }),
  });
  await withSql(databaseUrl(a.agent.sources.conn), (sql) =>
    sql.unsafe(SETUP_A(a.agent.sources.conn.database)),
  );
  await withSql(urlB(), (sql) => sql.unsafe(SETUP_B(b.agent.sources.conn.database)));
  backupPath = a.agent.catalog.pathOf(await backupNow(a.agent, 'roles and settings'));
  const keys = keyringFileSchema.parse(JSON.parse(await readFile(join(a.dataDir, 'keyring.json'), 'utf8')));
  await b.agent.keyring.importKeys(keys);
}, 120_000);

afterAll(async () => {
  await a?.close();
  await b?.close();
  await Promise.all([pgA?.stop(), pgB?.stop()]);
});

describe('the roles and settings of a restored database', () => {
  it('records the memberships among the backup roles and the database settings in the manifest', async () => {
    const { manifest } = await unpackBackup(a.agent, backupPath);
    const superuser = a.agent.sources.conn.user;
    expect(manifest.memberships).toEqual([
      { role: 'm_pre1', member: 'm_pre2', admin: false, grantor: superuser },
      { role: 'm_reader', member: 'm_writer', admin: false, grantor: superuser },
      { role: 'm_writer', member: 'm_app', admin: true, grantor: 'm_owner' },
    ]);
    expect(manifest.postgres.settings).toEqual([
      { name: 'TimeZone', value: 'Asia/Tokyo' },
      { name: 'search_path', value: '"$user", public, "odd ""schema"""' },
      { role: 'm_app', name: 'work_mem', value: '8MB' },
      { role: 'm_tuner', name: 'work_mem', value: '16MB' },
    ]);
  });

  /** What a failure case's faults get: the job's id, and the look at B's roles to take meanwhile. */
  type FailureHooks = { id: () => string; look: () => Promise<void> };

  it.each([
    {
      how: 'a check fails after pg_restore',
      state: 'failed',
      faults: ({ look }: FailureHooks): RestoreFaults => ({
        beforeSwapStep: async (step) => {
          if (step !== 'copy-settings') return;
          await look();
          throw new Error('a check failed');
        },
      }),
    },
    {
      // Stopped while B's roles are looked at, then killed.
      how: 'pg_restore is killed',
      state: 'failed',
      faults: ({ look }: FailureHooks): RestoreFaults => ({
        onStagingRestore: (pid) => {
          process.kill(pid, 'SIGSTOP');
          void look().finally(() => process.kill(pid, 'SIGKILL'));
        },
      }),
    },
    {
      how: 'the job is cancelled while pg_restore runs',
      state: 'cancelled',
      faults: ({ id, look }: FailureHooks): RestoreFaults => ({
        onStagingRestore: (pid) => {
          process.kill(pid, 'SIGSTOP');
          void look().finally(() => {
            b.agent.jobs.cancel(id());
            process.kill(pid, 'SIGCONT');
          });
        },
      }),
    },
  ])(
    'when $how, the restore drops the roles and memberships it created, and nothing else',
    async ({ state, faults }) => {
      const before = { roles: await rolesOfB(), settings: await settingsOfB() };
      // B lacks them (no earlier case left them): this restore creates and grants them.
      expect(before.roles.roles.join('\n')).not.toMatch(/^m_writer /m);
      expect(before.roles.memberships).not.toContain('m_pre1 to m_pre2 admin=false by postgres');
      let during: Awaited<ReturnType<typeof rolesOfB>> | undefined;
      const look = async () => {
        during = await rolesOfB();
      };
      let id = '';
      const started = await b.agent.jobs.start(
        'restore',
        (ctx) =>
          restoreFromFile(b.agent, ctx, backupPath, {
            skipSafetyBackup: true,
            otherInstallation: true,
            faults: faults({ id: () => id, look }),
          }),
        { mutating: true },
      );
      id = started.id;
      const job = await b.agent.jobs.waitFor(started.id);
      expect(job.state).toBe(state);
      // It had created them (the staging database's objects owned by them) and granted the membership.
      expect(during?.roles).toEqual(expect.arrayContaining([expect.stringMatching(/^m_writer /)]));
      expect(during?.memberships).toContain('m_pre1 to m_pre2 admin=false by postgres');
      expect(await rolesOfB()).toEqual(before.roles);
      expect(await settingsOfB()).toEqual(before.settings);
      expect(await leftovers(b.agent)).toEqual([]);
    },
  );

  it('keeps a role it created that something came to depend on meanwhile, and logs a warning', async () => {
    const other = await pgB.createDatabase('b_elsewhere');
    const before = await rolesOfB();
    logged.length = 0;
    const job = await runRestore(b.agent, backupPath, {
      skipSafetyBackup: true,
      otherInstallation: true,
      faults: {
        beforeSwapStep: async (step) => {
          if (step !== 'copy-settings') return;
          await withSql(other, (sql) =>
            sql.unsafe('create table kept (v int); alter table kept owner to m_reader'),
          );
          throw new Error('a check failed');
        },
      },
    });
    expect(job.state).toBe('failed');
    const after = await rolesOfB();
    expect(after.roles).toEqual([...before.roles, 'm_reader login=false inherit=true'].sort());
    expect(after.memberships).toEqual(before.memberships);
    expect(logged.join('\n')).toMatch(/role m_reader.*kept.*depend/);
    await withSql(other, (sql) => sql.unsafe('drop table kept'));
    await withSql(urlB('postgres'), async (sql) => {
      await sql.unsafe('drop database b_elsewhere');
      await sql.unsafe('drop role m_reader');
    });
  });

  it('a restore onto a new cluster brings back the memberships among the backup roles and keeps the live ones', async () => {
    const job = await runRestore(b.agent, backupPath, { skipSafetyBackup: true, otherInstallation: true });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    const { roles, memberships } = await rolesOfB();
    expect(roles).toEqual([
      'b_other login=false inherit=true',
      'm_app login=true inherit=true',
      'm_owner login=false inherit=true',
      'm_pre1 login=false inherit=true',
      'm_pre2 login=false inherit=true',
      'm_reader login=false inherit=true',
      'm_writer login=false inherit=true',
    ]);
    expect(memberships).toEqual([
      'b_other to m_app admin=false by postgres',
      'm_pre1 to m_pre2 admin=false by postgres',
      'm_reader to m_writer admin=false by postgres',
      'm_writer to m_app admin=true by m_owner',
    ]);
    const warnings = (job.result as { warnings?: string[] }).warnings ?? [];
    expect(warnings).toEqual(
      expect.arrayContaining([
        'granted role m_writer to m_app (with admin option), as in the backup',
        'granted role m_pre1 to m_pre2, as in the backup',
      ]),
    );
    expect(await leftovers(b.agent)).toEqual([]);
  });

  it("gives the database the backup's settings over the live ones; live-only settings stay", async () => {
    await withSql(urlB(), (sql) =>
      sql.unsafe(`alter database "${b.agent.sources.conn.database}" set timezone = 'UTC';
        alter role m_app in database "${b.agent.sources.conn.database}" set work_mem = '1MB'`),
    );
    const job = await runRestore(b.agent, backupPath, { skipSafetyBackup: true, otherInstallation: true });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(await settingsOfB()).toEqual([
      '*:TimeZone=Asia/Tokyo',
      '*:search_path="$user", public, "odd ""schema"""',
      '*:statement_timeout=5min',
      'm_app:work_mem=8MB',
    ]);
    // m_tuner names nothing in the backup, so it was not created: its setting is said to be left out.
    expect((job.result as { warnings?: string[] }).warnings).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/work_mem of role m_tuner.*not restored.*does not exist/),
      ]),
    );
  });

  it('restores an older backup (no memberships nor settings recorded) with the live settings, as before', async () => {
    const { manifest, entries } = await unpackBackup(a.agent, backupPath);
    const { settings: _, ...postgres } = manifest.postgres;
    const path = join(b.dataDir, 'older.tar.gz');
    await sealArchive(
      a.agent.keyring.activeKey,
      a.agent.keyring.installationId,
      withManifest(manifest, entries, { memberships: undefined, postgres }),
      path,
    );
    await withSql(urlB(), (sql) =>
      sql.unsafe(`alter database "${b.agent.sources.conn.database}" set timezone = 'UTC';
        revoke m_pre1 from m_pre2`),
    );
    const live = await settingsOfB();
    const job = await runRestore(b.agent, path, { skipSafetyBackup: true, otherInstallation: true });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(await settingsOfB()).toEqual(live);
    expect(live).toContain('*:TimeZone=UTC');
    expect((await rolesOfB()).memberships).not.toContain('m_pre1 to m_pre2 admin=false by postgres');
  });

  it('leaves out a backup setting this server refuses, says so, and keeps the live value', async () => {
    const job = await restoreWithSettings('odd-setting.tar.gz', [
      { name: 'no_such_setting', value: '1' },
      { name: 'TimeZone', value: 'Europe/Paris' },
    ]);
    expect(await settingsOfB()).toEqual(expect.arrayContaining(['*:TimeZone=Europe/Paris']));
    expect((await settingsOfB()).join('\n')).not.toContain('no_such_setting');
    expect((job.result as { warnings?: string[] }).warnings).toEqual(
      expect.arrayContaining([expect.stringMatching(/setting no_such_setting.*not restored.*unrecognized/)]),
    );
  });

  it("takes back an earlier failed restore's leftover record first, so a later start cannot revoke what this restore relies on", async () => {
    // An earlier restore granted m_pre1 to m_pre2, failed, and could not take it back (the database
    // failed under it): its record stayed. The membership is on the server, as it left it.
    await withSql(urlB('postgres'), async (sql) => {
      for (const role of ['m_pre1', 'm_pre2'])
        if ((await sql`select 1 from pg_roles where rolname = ${role}`).length === 0)
          await sql.unsafe(`create role ${role}`);
      await sql.unsafe('grant m_pre1 to m_pre2');
    });
    await writeRoleRecord(b.dataDir, 'deadbeef', {
      created: [],
      granted: [{ role: 'm_pre1', member: 'm_pre2' }],
    });
    const job = await runRestore(b.agent, backupPath, { skipSafetyBackup: true, otherInstallation: true });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    // Once its cleanup has run (the restore's own record goes with its journal), the next start takes
    // back whatever records are left (swap.ts recoverRestoreAtStart).
    await restoreSettled(b.dataDir);
    await takeBackRecordedRoles(b.agent.sources.conn, b.dataDir, silentLogger);
    expect((await rolesOfB()).memberships).toContain('m_pre1 to m_pre2 admin=false by postgres');
    expect((await readdir(b.dataDir)).filter((name) => name.startsWith('restore-roles-'))).toEqual([]);
  });

  it("never takes a backup's preload libraries (missing here, no session would open), says so, and the database still opens", async () => {
    // Libraries the backup's server had and this one lacks: PostgreSQL accepts the settings, and then
    // every new session of the database (or of the role) fails.
    const job = await restoreWithSettings('preload-setting.tar.gz', [
      { name: 'session_preload_libraries', value: 'gem_no_such_library' },
      { role: 'm_app', name: 'local_preload_libraries', value: 'gem_no_such_library' },
      { name: 'TimeZone', value: 'Asia/Tokyo' },
    ]);
    // A new session on the restored database opens (the agent's own pool, GEM's connections).
    expect(await withSql(urlB(), (sql) => sql<{ one: number }[]>`select 1 as one`)).toEqual([{ one: 1 }]);
    const now = await settingsOfB();
    expect(now).toEqual(expect.arrayContaining(['*:TimeZone=Asia/Tokyo']));
    expect(now.join('\n')).not.toContain('preload_libraries');
    expect((job.result as { warnings?: string[] }).warnings).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/setting session_preload_libraries was not restored: it loads libraries/),
        expect.stringMatching(
          /setting local_preload_libraries of role m_app was not restored: it loads libraries/,
        ),
      ]),
    );
  });
});
