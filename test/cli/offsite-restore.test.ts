// The CLI on a controller whose backups are only on an offsite destination: it lists them and restores one (real sshd).
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildKeysExport, createKeyringFile } from '../../agent/keys/keyring';
import { journalPath, PREVIOUS_DB_MARK, PREVIOUS_FOLDER_MARK } from '../../agent/restore/swap';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { runProcess } from '../../agent/system/spawn';
import { sftpSection } from '../health/helpers';
import { backupNow, call, filenameOf, runJob } from '../offsite/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { type BuiltCli, buildCli } from './built-cli';

let pg: TestPostgres;
let sshd: SshdService;
let built: BuiltCli;
let t: TestAgent;
let env: NodeJS.ProcessEnv;
let dataDir: string;

const cli = (...args: string[]) =>
  runProcess(process.execPath, [built.path, ...args], { env, cwd: process.cwd() });
const marks = () =>
  withSql(databaseUrl(t.agent.sources.conn), async (sql) =>
    (await sql<{ n: number }[]>`select n from public.cli_marks order by n`).map((r) => r.n),
  );

beforeAll(async () => {
  ({ pg, sshd, built } = await startAll({ pg: startPostgres, sshd: startSshd, built: buildCli }));
  dataDir = await mkdtemp(join(tmpdir(), 'gem-cli-offsite-'));
  t = await startTestAgent(pg, { dataDir });
  env = {
    ...process.env,
    DATABASE_URL: databaseUrl(t.agent.sources.conn),
    GEM_DATA_DIR: dataDir,
    GEM_SCRIPTS_DIR: t.agent.sources.scriptsDir,
    GEM_CONFIG_DIR: t.agent.sources.configDir,
    GEM_PG_BIN: pg.binDir,
  };
}, 120_000);
afterAll(async () => {
  await t?.close().catch(() => {});
  await built?.remove();
  await sshd?.stop();
  await pg?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('gem-backup list --from, restore --from', () => {
  it('lists the copies on the SFTP server and restores one that is only there', async () => {
    expect(
      (await call(t, 'PUT', '/settings', { offsite: { sftp: sftpSection(sshd, 'cli-restore') } })).status,
    ).toBe(200);
    await withSql(databaseUrl(t.agent.sources.conn), async (sql) => {
      await sql`create table public.cli_marks (n int primary key)`;
      await sql`insert into public.cli_marks values (1), (2), (3)`;
    });
    const name = filenameOf(await backupNow(t));
    expect((await runJob(t, 'POST', '/offsite/sftp/sync')).state).toBe('succeeded');
    // Only the destination keeps it; the data moves on.
    await t.agent.catalog.delete(name);
    await withSql(databaseUrl(t.agent.sources.conn), (sql) => sql`delete from public.cli_marks where n > 1`);
    await t.close();

    const listed = await cli('list', '--from', 'sftp');
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(new RegExp(`^${name.replaceAll('.', '\\.')} +\\S+ \\S+ +only there$`, 'm'));
    const json = await cli('list', '--from', 'sftp', '--json');
    expect(JSON.parse(json.stdout)).toEqual([expect.objectContaining({ filename: name, local: false })]);
    expect((await cli('list', '--from', 'ftp')).stderr).toContain(
      'no offsite destination "ftp": use sftp, s3 or smb',
    );

    // Without --from the name is not found here, and the line says where to look.
    const here = await cli('restore', name, '--yes');
    expect(here.code).toBe(1);
    expect(here.stderr).toContain(`\`gem-backup list --from sftp\``);
    expect(here.stderr).toContain(`\`gem-backup restore ${name} --from sftp --yes\``);
    expect(await marks()).toEqual([1]);

    const restored = await cli('restore', name, '--from', 'sftp', '--yes');
    expect(restored.code, restored.stderr).toBe(0);
    expect(restored.stdout).toContain(`restored ${name}`);
    expect(await marks()).toEqual([1, 2, 3]);
    // With no agent running, the CLI's own process removed what the restore replaced before it exited:
    // the journal, the previous database and the previous folders (a drill found them all left).
    expect(existsSync(journalPath(dataDir))).toBe(false);
    const previous = await withSql(
      databaseUrl(t.agent.sources.conn),
      (sql) =>
        sql<
          { datname: string }[]
        >`select datname from pg_database where position(${PREVIOUS_DB_MARK} in datname) > 0`,
    );
    expect(previous.map((r) => r.datname)).toEqual([]);
    for (const folder of [t.agent.sources.scriptsDir, t.agent.sources.configDir]) {
      const beside = await readdir(dirname(folder));
      expect(beside.filter((n) => n.includes(PREVIOUS_FOLDER_MARK))).toEqual([]);
    }

    // After a keys import the copy there is another installation's: refused, and the command the
    // refusal gives is the user's own, --from included (it said `gem-backup restore NAME ...`).
    const keys = join(dataDir, 'other-keys.json');
    await writeFile(keys, await buildKeysExport(createKeyringFile()), { mode: 0o600 });
    const imported = await cli('keys', 'import', keys);
    expect(imported.code, imported.stderr).toBe(0);
    const refused = await cli('restore', name, '--from', 'sftp', '--yes');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(
      `ask for it explicitly (\`gem-backup restore ${name} --from sftp --yes --other-installation\`)`,
    );
    expect(await marks()).toEqual([1, 2, 3]);
  });
});
