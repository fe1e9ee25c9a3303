/**
 * A restore killed mid-way (SIGKILL: a power cut) leaves no role nor membership of its own behind: it
 * records them before making them (restore-roles-<id>.json), and the next start takes back those of a
 * restore that did not commit, after its staging database. One that committed keeps them (they own the
 * restored objects), also when its journal is damaged: whether it committed is then unknown, so no start,
 * database watch or restore takes back what a record names (a restore is refused, changing nothing). A
 * real agent process is killed; a real start of the agent follows.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAgent } from '../../agent/agent';
import { loadConfig } from '../../agent/config';
import { createLogger } from '../../agent/log';
import { journalPath, recoverInterruptedRestore } from '../../agent/restore/swap';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import { agentEnv, backupNow, crashingRestore, leftovers, liveState, runRestore } from './helpers';

let pg: TestPostgres;
let children: BuiltChildren<'crash-child'>;
let t: TestAgent;
let backupPath: string;

/**
 * r_owner owns a table r_reader may read; r_pre1 owns one r_pre2 may read, and r_pre2 is a member of
 * r_pre1. After the backup the live side loses both tables, r_owner and r_reader and the membership:
 * a restore of the backup then creates the two roles and grants the membership.
 */
const SETUP = `
  create role r_owner; create role r_reader; create role r_pre1; create role r_pre2;
  create table r_things (id int); alter table r_things owner to r_owner; grant select on r_things to r_reader;
  create table r_pre (v text); alter table r_pre owner to r_pre1; grant select on r_pre to r_pre2;
  grant r_pre1 to r_pre2;`;
const AFTER_BACKUP = `
  drop table r_things; drop table r_pre; revoke r_pre1 from r_pre2; drop role r_owner; drop role r_reader;`;

/** The cluster's r_* roles and the memberships among them. */
async function roles(): Promise<{ roles: string[]; memberships: string[] }> {
  return withSql(databaseUrl(t.agent.sources.conn, 'postgres'), async (sql) => ({
    roles: (
      await sql<{ r: string }[]>`select rolname as r from pg_roles where rolname ~ '^r_' order by 1`
    ).map((row) => row.r),
    memberships: (
      await sql<{ m: string }[]>`
        select pg_get_userbyid(roleid) || ' to ' || pg_get_userbyid(member) as m
        from pg_auth_members where pg_get_userbyid(member) ~ '^r_' order by 1`
    ).map((row) => row.m),
  }));
}

/** The roles and memberships once a restore of the backup committed. */
const RESTORED = { roles: ['r_owner', 'r_pre1', 'r_pre2', 'r_reader'], memberships: ['r_pre1 to r_pre2'] };

/** The warning of a start or the database watch that keeps the recorded roles while the journal is damaged. */
const KEPT =
  "kept the roles that interrupted restores created: the restore journal (restore-journal.json) cannot be read, so whether their restore committed is unknown (a committed one's roles own the data it restored); check whether the restore it belongs to replaced GEM's data: if it did, delete that restore's restore-roles-<id>.json and restore-safety-<id>.json from the data dir (its roles and safety backup stay); then move restore-journal.json out of the data dir, and the next start takes back the roles and removes the safety backups that the records left name";

/** The restore records in the data dir. */
const records = async () => (await readdir(t.dataDir)).filter((name) => name.startsWith('restore-roles-'));

/** Opens an agent over the data dir, as the service starts (its recovery runs), and closes it; its log lines. */
async function start(): Promise<{ msg: string; records?: string[] }[]> {
  const lines: string[] = [];
  const agent = await openAgent(
    loadConfig({ ...agentEnv(t, pg), NODE_ENV: 'test' }),
    createLogger({ write: (line) => lines.push(line) }),
  );
  await agent.close();
  return lines.map((line) => JSON.parse(line));
}

/** A restore of the backup in another agent process, SIGKILLed at `crashAt` (test/restore/crash-child.ts). */
const killedRestore = (crashAt: string) =>
  crashingRestore(t.agent, {
    pgBinDir: pg.binDir,
    backupPath,
    crashAt,
    entry: children.paths['crash-child'],
  });

beforeAll(async () => {
  ({ pg, children } = await startAll({
    pg: startPostgres,
    children: () => buildChildren({ 'crash-child': 'test/restore/crash-child.ts' }),
  }));
  t = await startTestAgent(pg);
  await withSql(t.agent.databaseUrl, (sql) => sql.unsafe(SETUP));
  backupPath = t.agent.catalog.pathOf(await backupNow(t.agent, 'roles'));
  await withSql(t.agent.databaseUrl, (sql) => sql.unsafe(AFTER_BACKUP));
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await children?.remove();
});

describe('a restore killed mid-way', () => {
  it('before its swap: the next start drops the roles and revokes the membership it created, the live data unchanged', async () => {
    const before = { state: await liveState(t.agent), roles: await roles() };
    expect(before.roles).toEqual({ roles: ['r_pre1', 'r_pre2'], memberships: [] });
    // Killed once pg_restore is done (the staging database's objects owned by the roles), before the swap.
    await killedRestore('copy-settings');
    expect(await roles()).toEqual({
      roles: ['r_owner', 'r_pre1', 'r_pre2', 'r_reader'],
      memberships: ['r_pre1 to r_pre2'],
    });
    expect(await records()).toHaveLength(1);
    await start();
    expect(await roles()).toEqual(before.roles);
    expect(await records()).toEqual([]);
    expect(await leftovers(t.agent)).toEqual([]);
    expect(await liveState(t.agent)).toEqual(before.state);
  });

  it.each([
    // Killed after the swap committed, before its record of the roles goes: the start must keep them.
    ['before its record goes', 'role-record', 1],
    // Killed by the restart command: the record went at the commit.
    ['by the restart command', 'restart', 0],
  ])(
    'after its commit, %s: the roles and membership stay (they own the restored objects), and the record goes',
    async (_, crashAt, recorded) => {
      await killedRestore(crashAt);
      expect(existsSync(journalPath(t.dataDir))).toBe(true);
      expect(await records()).toHaveLength(recorded);
      await start();
      expect(await roles()).toEqual({
        roles: ['r_owner', 'r_pre1', 'r_pre2', 'r_reader'],
        memberships: ['r_pre1 to r_pre2'],
      });
      const [owner] = await withSql(
        t.agent.databaseUrl,
        (sql) =>
          sql<{ owner: string }[]>`select tableowner as owner from pg_tables where tablename = 'r_things'`,
      );
      expect(owner?.owner).toBe('r_owner');
      expect(await records()).toEqual([]);
      expect(existsSync(journalPath(t.dataDir))).toBe(false);
      expect(await leftovers(t.agent)).toEqual([]);
      // As after the backup again: the next restore creates the roles and grants the membership anew.
      await withSql(t.agent.databaseUrl, (sql) => sql.unsafe(AFTER_BACKUP));
    },
  );

  it('after its commit, its journal damaged before its record went: a start, the database watch and a restore (refused) keep the roles; once a person settles the journal, the next start too', async () => {
    await killedRestore('role-record');
    expect(await roles()).toEqual(RESTORED);
    const [record, ...others] = await records();
    expect(record).toBeDefined();
    expect(others).toEqual([]);
    // What it replaced, left to its cleanup (which the journal names).
    const replaced = await leftovers(t.agent);
    expect(replaced).toHaveLength(3);
    // Damaged: cut short (no JSON any more), as a disk fault may leave it.
    const journal = await readFile(journalPath(t.dataDir), 'utf8');
    expect(JSON.parse(journal).committed).toBe(true);
    const damaged = journal.slice(0, journal.length / 2);
    await writeFile(journalPath(t.dataDir), damaged);

    const log = await start();
    expect(await roles()).toEqual(RESTORED);
    expect(await records()).toEqual([record]);
    expect(log).toContainEqual(expect.objectContaining({ msg: KEPT, records: [record] }));

    // What the service's database watch runs under the job lock (the journal looks uncommitted to it).
    await recoverInterruptedRestore(t.agent, { whileRunning: true });
    expect(await roles()).toEqual(RESTORED);
    expect(await records()).toEqual([record]);

    // A restore would take back the recorded roles first (its 'earlier-roles' step), then replace the journal.
    const refused = await runRestore(t.agent, backupPath);
    expect(refused.state).toBe('failed');
    expect(refused.error?.message).toMatch(
      /^the restore did not start: the journal of an earlier restore \(restore-journal\.json\) cannot be read, .*; nothing was changed: check whether the restore it belongs to replaced GEM's data/,
    );
    expect(await roles()).toEqual(RESTORED);
    expect(await records()).toEqual([record]);
    expect(await readFile(journalPath(t.dataDir), 'utf8')).toBe(damaged);
    expect(await leftovers(t.agent)).toEqual(replaced);

    // As the log says: it replaced the data, so its record goes, then the journal is moved out.
    await rm(`${t.dataDir}/${record}`);
    await rm(journalPath(t.dataDir));
    await start();
    expect(await roles()).toEqual(RESTORED);
    expect(existsSync(journalPath(t.dataDir))).toBe(false);
    // And a restore runs again.
    expect(await runRestore(t.agent, backupPath)).toMatchObject({ state: 'succeeded' });
    expect(await roles()).toEqual(RESTORED);
  });
});
