/**
 * An agent closed right after a restore reported success (the CLI's `restore` and `dr recover` close it
 * as soon as the job ends) first finishes that restore's cleanup: the previous database, the previous
 * folders and the journal are gone when close() returns. Before, close() returned at once and a CLI that
 * had started the embedded cluster stopped it under the cleanup, leaving a whole copy of the old data and
 * a journal that the next start took for an interrupted restore.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  journalPath,
  liveFolderPath,
  PREVIOUS_DB_MARK,
  PREVIOUS_FOLDER_MARK,
} from '../../agent/restore/swap';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { backupNow, runRestore } from './helpers';

let pg: TestPostgres;
let t: TestAgent | undefined;
let dataDir: string;

beforeAll(async () => {
  pg = await startPostgres();
  dataDir = await mkdtemp(join(tmpdir(), 'gem-close-after-restore-'));
  t = await startTestAgent(pg, { dataDir });
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('closing the agent just after a restore', () => {
  it('waits for the restore to remove what it replaced', async () => {
    const agent = t!.agent;
    const name = await backupNow(agent, 'before-close');
    const done = await runRestore(agent, agent.catalog.pathOf(name), { skipSafetyBackup: true });
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const conn = agent.sources.conn;
    const folders = [agent.sources.scriptsDir, agent.sources.configDir];
    await t!.close();
    t = undefined;

    // Looked at without waiting for anything: close() itself must have waited.
    expect(existsSync(journalPath(dataDir))).toBe(false);
    const previous = await withSql(
      databaseUrl(conn, 'postgres'),
      (sql) => sql<{ datname: string }[]>`select datname from pg_database`,
    );
    expect(previous.map((r) => r.datname).filter((n) => n.includes(PREVIOUS_DB_MARK))).toEqual([]);
    for (const folder of folders) {
      const live = await liveFolderPath(folder);
      const beside = await readdir(dirname(live));
      expect(beside.filter((n) => n.startsWith(`${basename(live)}${PREVIOUS_FOLDER_MARK}`))).toEqual([]);
    }
  });
});
