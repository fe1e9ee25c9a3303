/**
 * Crash during backup: an agent process backing up a database with a 10 MB+ table is SIGKILLed at
 * 20 points spread over every phase of a measured clean run; after each restart nothing partial is
 * listed, every listed backup verifies, temp files are gone and the keyring is the same bytes. One
 * restores at the end.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAgent } from '../../agent/agent';
import { readBackup } from '../../agent/backup/reader';
import { loadConfig } from '../../agent/config';
import { silentLogger } from '../../agent/log';
import { startRestore } from '../../agent/restore/restore';
import { TEMP_PREFIX } from '../../agent/system/atomic-file';
import { leftovers } from '../restore/helpers';
import { startTestAgent, TEST_TOKEN } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import { type BuiltChildren, buildChildren } from './built-child';
import { type ChildLine, runChild } from './child';
import { faultReport } from './report';

const KILLS = Number(process.env.GEM_FAULTS_KILLS ?? 20);
// 100 k rows (a 10 MB+ table, a 6 MB backup): a dump of a few hundred ms, the five kills timed inside
// it at tenths of its measured length. The kills inside pack and verify are placed by bytes written and
// read back (kill-at-bytes.mjs, looking every millisecond), not by the job's progress (at most every
// 200 ms), so those phases need not last long: the 1 M rows, then 300 k, this used before were there to
// make them outlast a few progress reports. The size is not the point: every child spent most of its
// time in a 0.5 s dump. scripts/soak.sh uses 4 M.
const ROWS = Number(process.env.GEM_FAULTS_BIG_ROWS ?? 100_000);
/**
 * The backups' envelope chunk (1 MiB by default): the temp file grows a chunk at a time, so 256 KiB gives
 * the 6 MB backup some 24 byte steps, more than the 18 of the 18 MB backup with 1 MiB chunks that 300 k
 * rows made: the late points (95 %, 99.5 %) stay apart, one chunk before the end and the last one.
 */
const CHUNK_SIZE = 256 * 1024;
const KILL_AT_BYTES = fileURLToPath(new URL('./kill-at-bytes.mjs', import.meta.url));
const report = faultReport('crash-backup', 'kills');

let pg: TestPostgres;
/** agent-child.ts bundled once for the file: each of the 21 children starts without tsx's loader. */
let children: BuiltChildren<'agent-child'>;
let dataDir: string;
let databaseUrl: string;
let env: Record<string, string>;
let keyringBytes: Buffer;
let cleanMs = 0;
let dumpMs = 0;
/** The size of the clean run's backup: the byte points of pack and verify are fractions of it. */
let backupBytes = 0;
const verified = new Map<string, string>();

function open() {
  return openAgent(loadConfig({ ...env, NODE_ENV: 'test' }), silentLogger);
}

/** True for a per-process work folder (`p<pid>`) whose process still runs. */
function livePidFolder(entry: string): boolean {
  const pid = /^p(\d+)$/.exec(entry)?.[1];
  if (pid === undefined) return false;
  try {
    process.kill(Number(pid), 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Restart + every promise: returns the problems found (none is the goal). */
async function checkAfterRestart(): Promise<string[]> {
  const problems: string[] = [];
  const agent = await open();
  try {
    const raw = await readdir(agent.paths.backups);
    const temps = raw.filter((n) => n.startsWith(TEMP_PREFIX));
    if (temps.length) problems.push(`temp files left: ${temps.join(', ')}`);
    // The killed child worked in work/p<its pid>: after the restart only live processes' folders may be there.
    const abandoned = (await readdir(join(dataDir, 'work')).catch(() => [] as string[])).filter(
      (entry) => !livePidFolder(entry),
    );
    if (abandoned.length)
      problems.push(`work folder holds what dead processes left: ${abandoned.join(', ')}`);
    const listed = await agent.catalog.list();
    if (listed.length !== raw.filter((n) => !n.startsWith(TEMP_PREFIX)).length)
      problems.push(`unlisted files in the backups folder: ${raw.join(', ')}`);
    for (const b of listed) {
      const s = await stat(agent.catalog.pathOf(b.filename));
      const identity = `${s.ino}:${s.size}:${s.mtimeMs}`;
      if (verified.get(b.filename) === identity) continue;
      await readBackup(agent.catalog.pathOf(b.filename), { keys: agent.keyring.masterKeys }).then(
        () => verified.set(b.filename, identity),
        (error: Error) => problems.push(`${b.filename} does not verify: ${error.message}`),
      );
    }
    if (!(await readFile(agent.paths.keyring)).equals(keyringBytes)) problems.push('the keyring changed');
    if (existsSync(join(dataDir, 'job.lock'))) problems.push('a stale job lock survived the restart');
  } finally {
    await agent.close();
  }
  return problems;
}

beforeAll(async () => {
  ({ pg, children } = await startAll({
    pg: startPostgres,
    children: () => buildChildren({ 'agent-child': 'test/faults/agent-child.ts' }),
  }));
  dataDir = await mkdtemp(join(tmpdir(), 'gem-faults-crash-'));
  const t = await startTestAgent(pg, { dataDir });
  databaseUrl = t.agent.databaseUrl;
  env = {
    FAULT_CHUNK_SIZE: String(CHUNK_SIZE),
    DATABASE_URL: databaseUrl,
    GEM_DATA_DIR: dataDir,
    GEM_SCRIPTS_DIR: t.agent.sources.scriptsDir,
    GEM_CONFIG_DIR: t.agent.sources.configDir,
    GEM_AGENT_TOKEN: TEST_TOKEN,
    GEM_PG_BIN: pg.binDir,
  };
  // Built once per file: a 10 MB+ table of poorly compressible text.
  await withSql(databaseUrl, (sql) =>
    sql.unsafe(`
      create table big_history as
        select g as id, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) as payload
        from generate_series(1, ${ROWS}) g`),
  );
  const bytes = await withSql(databaseUrl, async (sql) => {
    const [row] = await sql<{ size: string }[]>`select pg_total_relation_size('big_history') as size`;
    return Number(row!.size);
  });
  expect(bytes).toBeGreaterThan(ROWS * 100);
  await t.close();
  keyringBytes = await readFile(join(dataDir, 'keyring.json'));
});

afterAll(async () => {
  report.print();
  await pg?.stop();
  await children?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('an agent killed during a backup', () => {
  it('completes a clean run (measured, to spread the kills over it)', async () => {
    const run = runChild({ ...env, FAULT_ACTION: 'backup' }, children.paths['agent-child']);
    const started = await Promise.race([run.started, run.exited.then(() => 0)]);
    // Opening a second agent (the CLI) mid-backup must not take the running job's temp file or work folder.
    while (run.phase() !== 'pack' && run.lines.at(-1)?.event !== 'done')
      await new Promise((r) => setTimeout(r, 50));
    await (await open()).close();
    const end = await run.exited;
    expect(end.code, end.stderr).toBe(0);
    cleanMs = Date.now() - started;
    const at = (phase: string) => run.lines.find((l) => l.event === 'phase' && l.phase === phase)?.t ?? 0;
    dumpMs = at('folders') - at('dump');
    expect(run.lines.at(-1)).toMatchObject({ event: 'done', state: 'succeeded' });
    console.log(
      `clean backup run: ${cleanMs} ms, phases ${run.lines
        .filter((l) => l.event === 'phase')
        .map((l) => l.phase)
        .join(' > ')}`,
    );
    expect(await checkAfterRestart()).toEqual([]);
    const agent = await open();
    try {
      backupBytes = (await agent.catalog.list())[0]!.size;
    } finally {
      await agent.close();
    }
  });

  it(`leaves nothing partial, every listed backup verifying, after ${KILLS} SIGKILLs`, async () => {
    // 20 points over every phase: by time inside the dump, by bytes inside pack (tar+gzip+encrypt into
    // the temp file: its size) and verify (the fsynced temp file read back before its rename: the bytes
    // read since), then retention and the end.
    const bytesPoint = (phase: string, f: number): Record<string, string> => ({
      KILL_BYTES_STAGE: phase,
      KILL_BYTES_FRACTION: String(f),
      KILL_BYTES_TOTAL: String(backupBytes),
      KILL_BYTES_DIR: join(dataDir, 'backups'),
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import ${KILL_AT_BYTES}`.trim(),
    });
    const points: Record<string, string>[] = [
      ...[0.1, 0.3, 0.5, 0.7, 0.9].map(
        (f): Record<string, string> => ({
          KILL_PHASE: 'dump',
          KILL_AFTER_MS: String(Math.round(dumpMs * f)),
        }),
      ),
      { KILL_PHASE: 'folders', KILL_FRACTION: '0' },
      ...[0.05, 0.25, 0.5, 0.75, 0.95, 0.995].map((f) => bytesPoint('pack', f)),
      ...[0.05, 0.25, 0.5, 0.75, 0.95, 0.995].map((f) => bytesPoint('verify', f)),
      { KILL_PHASE: 'pruning old backups', KILL_FRACTION: '0' },
      { KILL_PHASE: 'done-timer', KILL_FRACTION: '0', AFTER: String(cleanMs) },
    ];
    points.splice(KILLS);
    const phases: Record<string, number> = {};
    const failures: string[] = [];
    for (const [i, point] of points.entries()) {
      const run = runChild({ ...env, FAULT_ACTION: 'backup', ...point }, children.paths['agent-child']);
      await Promise.race([run.started, run.exited]);
      const timer = point.AFTER ? setTimeout(() => run.kill(), Number(point.AFTER)) : undefined;
      const end = await run.exited;
      clearTimeout(timer);
      // kill-at-bytes.mjs's line also says how many bytes were written or read back.
      const died = run.lines.find((l) => l.event === 'suicide') as
        | (ChildLine & { bytes?: number; total?: number })
        | undefined;
      const where = end.signal === 'SIGKILL' ? (died?.phase ?? run.phase() ?? 'start') : 'finished';
      const at = died?.bytes === undefined ? '' : ` at ${died.bytes} of ${died.total} bytes`;
      const { NODE_OPTIONS: _, KILL_BYTES_DIR: __, ...shown } = point;
      const label = `kill #${i} ${JSON.stringify(shown)} (died in ${where}${at}, last phase reported ${run.phase()})`;
      console.log(label);
      phases[where] = (phases[where] ?? 0) + 1;
      if (end.signal === 'SIGKILL') report.inject();
      const problems = await checkAfterRestart();
      report.tried(problems.length === 0, `${label}: ${problems.join('; ')}`);
      if (problems.length) failures.push(`${label}: ${problems.join('; ')}`);
    }
    console.log(`kills by phase: ${JSON.stringify(phases)}`);
    expect(failures).toEqual([]);
    expect(Object.keys(phases).filter((p) => p !== 'finished').length).toBeGreaterThanOrEqual(4);
  }, 900_000);

  it('restores the newest listed backup (a real restore, once)', async () => {
    const agent = await open();
    try {
      const [newest] = await agent.catalog.list();
      expect(newest).toBeDefined();
      const before = await withSql(databaseUrl, (sql) => sql`select count(*)::int as n from big_history`);
      await withSql(databaseUrl, (sql) => sql`delete from big_history where id <= 1000`);
      const job = await startRestore(agent, newest!.filename, { skipSafetyBackup: true });
      const done = await agent.jobs.waitFor(job.id);
      expect(done.error).toBeUndefined();
      const after = await withSql(databaseUrl, (sql) => sql`select count(*)::int as n from big_history`);
      expect(after[0]!.n).toBe(before[0]!.n);
      expect(await leftovers(agent)).toEqual([]);
      report.tried(true);
    } finally {
      await agent.close();
    }
  }, 300_000);
});
