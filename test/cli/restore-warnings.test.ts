// `gem-backup restore` prints what the restore did beside the data: a role the backup's objects name,
// missing here, was created without login (the objects keep their owner), said on stderr as a warning.
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment, startTestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import { type BuiltCli, buildCli } from './built-cli';

let pg: TestPostgres;
let dataDir: string;
let env: NodeJS.ProcessEnv;
let built: BuiltCli;

beforeAll(async () => {
  ({ pg, built } = await startAll({ pg: startPostgres, built: buildCli }));
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-cli-restore-warnings-'));
});
afterAll(async () => {
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('gem-backup restore', () => {
  it('says on stderr that it created a role the backup names, missing here; the table keeps its owner', async () => {
    const url = env.DATABASE_URL!;
    await withSql(url, (sql) =>
      sql.unsafe(`create role cli_app; create table cli_owned (v text); alter table cli_owned owner to cli_app;
        insert into cli_owned values ('kept')`),
    );
    const t = await startTestAgent(pg, {
      dataDir,
      databaseUrl: url,
      modules: [],
      env: { GEM_SCRIPTS_DIR: env.GEM_SCRIPTS_DIR!, GEM_CONFIG_DIR: env.GEM_CONFIG_DIR! },
    });
    let name: string;
    try {
      name = (await createBackup(backupDeps(t.agent), standaloneContext(silentLogger))).filename;
    } finally {
      await t.close();
    }
    await withSql(url, (sql) => sql.unsafe('drop table cli_owned; drop role cli_app'));

    const res = await runProcess(process.execPath, [built.path, 'restore', name, '--yes'], {
      env,
      cwd: process.cwd(),
    });
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(new RegExp(`^restored ${name.replaceAll('.', '\\.')} \\(\\d+ rows\\)`));
    expect(res.stderr).toMatch(/^warning: created role cli_app \(no login\)/m);
    const [row] = await withSql(
      url,
      (sql) =>
        sql`select tableowner, (select v from cli_owned) as v from pg_tables where tablename = 'cli_owned'`,
    );
    expect(row).toEqual({ tableowner: 'cli_app', v: 'kept' });
  });
});
