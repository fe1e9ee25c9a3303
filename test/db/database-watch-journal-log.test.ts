// A restore journal that cannot be read, found by the database watch (agent/db/watch.ts), is logged at
// the first check that finds it, not at each check (every 10 s for as long as the file stays, it buried
// the rest of the log), and once when it is gone; nothing it holds back is acted on meanwhile. A real
// agent on a real cluster, its watch at a short interval, its checks counted.
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { watchDatabase } from '../../agent/db/watch';
import { createLogger } from '../../agent/log';
import { roleRecordPath, writeRoleRecord } from '../../agent/restore/role-record';
import { writeSafetyRecord } from '../../agent/restore/safety-record';
import { journalPath } from '../../agent/restore/swap';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { until, within } from '../services/wait';

let pg: TestPostgres;
let t: TestAgent;
const lines: Record<string, unknown>[] = [];

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, {
    log: createLogger({ write: (line) => lines.push(JSON.parse(line) as Record<string, unknown>) }),
  });
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

const UNREADABLE = 'the restore journal is unreadable; checking the databases and folders by name instead';
const KEPT_SAFETY =
  'kept the safety backups of interrupted restores: the restore journal cannot be read, so whether they committed is unknown';
const KEPT_ROLES =
  /^kept the roles that interrupted restores created: the restore journal \(restore-journal\.json\) cannot be read/;
const GONE = 'the restore journal that could not be read is gone from the data dir';

/** How many of the watch's lines have `msg` (a string, or a pattern). */
const count = (msg: string | RegExp) =>
  lines.filter(
    (l) =>
      l.area === 'database-watch' &&
      typeof l.msg === 'string' &&
      (typeof msg === 'string' ? l.msg === msg : msg.test(l.msg)),
  ).length;

/** Damaged: cut short, no JSON any more, as a disk fault may leave it. */
const damage = () => writeFile(journalPath(t.dataDir), '{"format":"gem-restore-journal","id":"0');

const ROLE = 'r_journal_watch';
const roleExists = () =>
  withSql(databaseUrl(t.agent.sources.conn, 'postgres'), async (sql) => {
    const rows = await sql`select 1 from pg_roles where rolname = ${ROLE}`;
    return rows.length > 0;
  });

it('logs an unreadable restore journal once while it stays, once (info) when it is gone, and once again when it comes back', async () => {
  // What a restore killed before its commit left, which the watch settles once no journal holds it back.
  await withSql(databaseUrl(t.agent.sources.conn, 'postgres'), (sql) => sql.unsafe(`create role ${ROLE}`));
  await writeRoleRecord(t.dataDir, 'beef0001', { created: [ROLE], granted: [] });
  await writeSafetyRecord(t.dataDir, 'beef0001', 'gem-backup-never-written.tar.gz');
  await damage();
  lines.length = 0;
  let checks = 0;
  /** Resolves once `n` more checks have ended (the first may have begun before the change just made). */
  const checked = async (n: number) => {
    const target = checks + n;
    await until(async () => checks >= target, `${n} more checks of the watch`, 100);
  };
  const watch = watchDatabase(t.agent, { intervalMs: 100, afterCheck: () => checks++ });
  try {
    await checked(8);
    expect(count(UNREADABLE)).toBe(1);
    expect(lines.find((l) => l.msg === UNREADABLE)?.level).toBe('error');
    expect(count(KEPT_ROLES)).toBe(1);
    expect(count(KEPT_SAFETY)).toBe(1);
    // Nothing acted on: the role and both records stay.
    expect(await roleExists()).toBe(true);
    expect(existsSync(roleRecordPath(t.dataDir, 'beef0001'))).toBe(true);
    expect(existsSync(`${t.dataDir}/restore-safety-beef0001.json`)).toBe(true);

    // Moved away by a person: one info line, and the watch settles what it held back.
    await rm(journalPath(t.dataDir));
    await checked(4);
    expect(count(GONE)).toBe(1);
    expect(lines.find((l) => l.msg === GONE)?.level).toBe('info');
    expect(existsSync(roleRecordPath(t.dataDir, 'beef0001'))).toBe(false);
    expect(existsSync(`${t.dataDir}/restore-safety-beef0001.json`)).toBe(false);
    expect(await roleExists()).toBe(false);
    expect(count(UNREADABLE)).toBe(1);

    // Damaged again: logged once again, and only once.
    await damage();
    await checked(8);
    expect(count(UNREADABLE)).toBe(2);
    expect(count(KEPT_SAFETY)).toBe(2);
    expect(count(GONE)).toBe(1);
  } finally {
    await within(watch.stop(), 20_000, 'the watch to stop');
    await rm(journalPath(t.dataDir), { force: true });
  }
});
