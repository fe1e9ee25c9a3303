// `gem-backup restore` prints what the restore did beside the data: a role the backup's objects name,
// missing here, was created without login (the objects keep their owner), said on stderr as a warning;
// and, as the page does, that GEM still needs a restart when no restart command ran or it failed.
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
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
let name: string;

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
    // No GEM_RESTART_COMMAND here: GEM still runs on the old data until someone restarts it.
    expect(res.stderr).toMatch(
      /^warning: the data is restored, but GEM was not restarted: no restart command is set up on this controller \(GEM_RESTART_COMMAND\); restart GEM now so it uses the restored data$/m,
    );
    expect(res.stdout).not.toContain('warning');
    const [row] = await withSql(
      url,
      (sql) =>
        sql`select tableowner, (select v from cli_owned) as v from pg_tables where tablename = 'cli_owned'`,
    );
    expect(row).toEqual({ tableowner: 'cli_app', v: 'kept' });
    // The command's own work folder went with it (the one left is this test's agent's, which made the backup).
    const left = (await readdir(join(dataDir, 'work'))).filter((n) => /^p\d+/.test(n));
    expect(left.filter((n) => n !== `p${process.pid}` && !n.startsWith(`p${process.pid}n`))).toEqual([]);
  });

  it('says on stderr, not stdout, that the restart command failed and GEM must be restarted by hand', async () => {
    const res = await runProcess(process.execPath, [built.path, 'restore', name, '--yes'], {
      env: { ...env, GEM_RESTART_COMMAND: JSON.stringify([process.execPath, '-e', 'process.exit(3)']) },
      cwd: process.cwd(),
    });
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).not.toContain('warning');
    expect(res.stdout).not.toContain('restart');
    expect(res.stderr).toMatch(
      /^warning: GEM could not be restarted: the restart command exited with 3; the data is restored: restart GEM by hand so it uses it$/m,
    );
  });
});
