// `gem-backup list`: a header on a terminal, the same plain rows as before on a pipe, and `--json`,
// exactly what GET /api/v1/backups answers; the usage names the option.
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupInfo } from '../../agent/backup/catalog';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment, startTestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { type BuiltCli, buildCli } from './built-cli';

let pg: TestPostgres;
let dataDir: string;
let env: NodeJS.ProcessEnv;
let built: BuiltCli;

const HOUR = 3600_000;
const cli = (...args: string[]) =>
  runProcess(process.execPath, [built.path, ...args], { env, cwd: process.cwd() });
/** The CLI with its stdout and stderr on a terminal (util-linux `script`): its output, CR LF made LF. */
async function onTerminal(...args: string[]): Promise<{ code: number | null; output: string }> {
  const command = [process.execPath, built.path, ...args].map((a) => `'${a}'`).join(' ');
  const res = await runProcess('script', ['-qec', command, '/dev/null'], { env, cwd: process.cwd() });
  return { code: res.code, output: res.stdout.replaceAll('\r\n', '\n') };
}

/** The agent in this process on the CLI's data dir and database (closed before the CLI runs again). */
function inProcessAgent() {
  return startTestAgent(pg, {
    dataDir,
    databaseUrl: env.DATABASE_URL!,
    modules: [],
    env: { GEM_SCRIPTS_DIR: env.GEM_SCRIPTS_DIR!, GEM_CONFIG_DIR: env.GEM_CONFIG_DIR! },
  });
}

/** A row as `list` has always printed it on a pipe: scripts parse these. */
function plainRow(b: BackupInfo): string {
  const size =
    b.size >= 1048576 ? `${(b.size / 1048576).toFixed(1)} MiB` : `${(b.size / 1024).toFixed(1)} KiB`;
  return `${b.filename}  ${b.createdAt}  ${size.padStart(10)}  ${b.kind}${b.pinned ? ' pinned' : ''}${b.label ? ` "${b.label}"` : ''}`;
}

beforeAll(async () => {
  ({ pg, built } = await startAll({ pg: startPostgres, built: buildCli }));
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-cli-list-'));
});
afterAll(async () => {
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('gem-backup list', () => {
  it('--json with no backups prints an empty JSON array', async () => {
    const res = await cli('list', '--json');
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    expect(JSON.parse(res.stdout)).toEqual([]);
    // The plain form says so in words, as before.
    expect((await cli('list')).stdout).toBe('no backups');
  });

  let api: BackupInfo[] = [];
  const verifiedAt = new Date(Date.now() + 60_000).toISOString();

  it('--json prints the array GET /api/v1/backups answers: newest first, exact sizes in bytes, verifiedAt', async () => {
    const t = await inProcessAgent();
    try {
      const deps = backupDeps(t.agent);
      const ctx = standaloneContext(silentLogger);
      const older = await createBackup(deps, ctx, {
        label: 'before upgrade',
        now: new Date(Date.now() - 3 * 24 * HOUR),
      });
      const newer = await createBackup(deps, ctx, { now: new Date(Date.now() - 2 * HOUR) });
      await t.agent.catalog.updateRecord(older.filename, {
        verifiedAt,
        verifyResult: 'ok',
      });
      const res = await t.request('/api/v1/backups');
      expect(res.status).toBe(200);
      api = (await res.json()) as BackupInfo[];
      expect(api.map((b) => b.filename)).toEqual([newer.filename, older.filename]);
    } finally {
      await t.close();
    }

    const res = await cli('list', '--json');
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    const listed = JSON.parse(res.stdout) as BackupInfo[];
    expect(listed).toEqual(api);
    for (const b of listed) {
      expect(b.size).toBe((await stat(join(dataDir, 'backups', b.filename))).size);
      expect(b.keyIds.length).toBeGreaterThan(0);
      expect(Date.parse(b.createdAt)).not.toBeNaN();
    }
    // The later verification (recorded above) is the one shown, as the API shows it.
    expect(listed[1]?.verifiedAt).toBe(verifiedAt);
  });

  it('on a pipe prints the same plain rows as before; on a terminal a header over aligned columns', async () => {
    const piped = await cli('list');
    expect(piped.stderr).toBe('');
    expect(piped.code).toBe(0);
    // (runProcess trims the output's ends)
    expect(piped.stdout).toBe(api.map(plainRow).join('\n'));

    const shown = await onTerminal('list');
    expect(shown.code, shown.output).toBe(0);
    const [header, ...rows] = shown.output.trimEnd().split('\n');
    expect(header).toMatch(/^BACKUP +CREATED +SIZE {2}KIND$/);
    expect(rows).toHaveLength(api.length);
    rows.forEach((line, i) => {
      const b = api[i]!;
      expect(line.startsWith(b.filename)).toBe(true);
      // Each value starts under its column's name (the size ends under SIZE's end).
      expect(line.indexOf(b.createdAt)).toBe(header!.indexOf('CREATED'));
      expect(line.indexOf(`  ${b.kind}`) + 2).toBe(header!.indexOf('KIND'));
      expect(line.slice(0, header!.indexOf('SIZE') + 4)).toMatch(/ \d+\.\d (KiB|MiB)$/);
    });
    expect(rows[1]).toMatch(/ manual "before upgrade"$/);
  });

  it('--help and the usage of list name --json; the usage of dr says what push tells', async () => {
    const [help, list, dr] = await Promise.all([cli('--help'), cli('list', '--help'), cli('dr', '--help')]);
    for (const res of [help, list, dr]) expect(res.code).toBe(0);
    expect(help.stdout).toMatch(/^ {2}list \[--json\] +list local backups/m);
    expect(help.stdout).toMatch(/--json: one JSON array as GET \/api\/v1\/backups/);
    expect(list.stdout).toMatch(/^usage: gem-backup list \[--json\] /);
    expect(list.stdout).toMatch(/--json: one JSON array as GET \/api\/v1\/backups, sizes in bytes/);
    expect(dr.stdout).toMatch(
      /dr push +push a backup .*\n +backup and how old it is; warns when older than a day/,
    );
    // A continuation line is indented under the words, not a command of its own.
    expect(list.stdout).not.toMatch(/^ +gem-backup +--json/m);
  });
});
