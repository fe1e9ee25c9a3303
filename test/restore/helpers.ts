/** Restore test helpers: backup and restore jobs, live-state fingerprints, leftover listing, and sealing hand-made archives with real keys. */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { expect } from 'vitest';
import type { Agent } from '../../agent/agent';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { MANIFEST_NAME, type Manifest } from '../../agent/backup/manifest';
import { readBackup } from '../../agent/backup/reader';
import type { Job } from '../../agent/jobs/runner';
import { createSealTransform } from '../../agent/keys/envelope-node';
import { type RestoreOptions, restoreFromFile, restoreSettled } from '../../agent/restore/restore';
import { liveFolderPath } from '../../agent/restore/swap';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { runProcess } from '../../agent/system/spawn';
import { generateFileKey, type MasterKey, newCore, wrapForMasterKey } from '../../shared/envelope';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { type TestPostgres, withSql } from '../services/postgres';

/** A manual backup labelled `label`, made as the backup job makes it; expects success and returns its name. */
export async function backupNow(agent: Agent, label: string): Promise<string> {
  const deps = backupDeps(agent);
  const job = await agent.jobs.start('backup', (ctx) => createBackup(deps, ctx, { kind: 'manual', label }), {
    mutating: true,
  });
  const made = await agent.jobs.waitFor(job.id);
  expect(made.error).toBeUndefined();
  return (made.result as { filename: string }).filename;
}

/** Runs the restore of the file at `path` as the restore job does; resolves with the ended job. */
export async function runRestore(agent: Agent, path: string, options: RestoreOptions = {}): Promise<Job> {
  const job = await agent.jobs.start('restore', (ctx) => restoreFromFile(agent, ctx, path, options), {
    mutating: true,
  });
  return agent.jobs.waitFor(job.id);
}

/** The environment of a crash child restoring `backupPath` over `agent`'s data dir, stopped at `crashAt`. */
export function crashChildEnv(
  agent: Agent,
  options: { pgBinDir: string; backupPath: string; crashAt: string },
): NodeJS.ProcessEnv {
  return {
    ...process.env,
    DATABASE_URL: databaseUrl(agent.sources.conn),
    GEM_DATA_DIR: agent.config.dataDir,
    GEM_SCRIPTS_DIR: agent.sources.scriptsDir,
    GEM_CONFIG_DIR: agent.sources.configDir,
    GEM_AGENT_TOKEN: agent.token,
    GEM_PG_BIN: options.pgBinDir,
    BACKUP_PATH: options.backupPath,
    CRASH_AT: options.crashAt,
  };
}

/**
 * Runs a restore of `backupPath` (no safety backup) in another agent process over the same database,
 * data dir and folders, SIGKILLed just before swap step `crashAt` (test/restore/crash-child.ts through
 * tsx, or `entry`, its bundle from test/faults/built-child.ts, which starts without tsx's loader).
 */
export async function crashingRestore(
  agent: Agent,
  options: { pgBinDir: string; backupPath: string; crashAt: string; entry?: string },
): Promise<void> {
  const args = options.entry ? [options.entry] : ['--import', 'tsx', 'test/restore/crash-child.ts'];
  const result = await runProcess(process.execPath, args, { env: crashChildEnv(agent, options) });
  // Killed as planned: a child that failed before its restore began also exits badly with no output.
  expect(result.signal, result.stderr).toBe('SIGKILL');
  expect(result.stdout).toBe('');
}

/** Row count and md5 of every table's rows (all schemas, the agent's included), keyed "schema.table". */
export async function databaseFingerprint(agent: Agent): Promise<Record<string, string>> {
  return withSql(databaseUrl(agent.sources.conn), async (sql) => {
    const tables = await sql<{ schema: string; name: string }[]>`
      select n.nspname as schema, c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.relkind in ('r','p') and n.nspname not in ('pg_catalog','information_schema')
        and n.nspname not like 'pg_toast%' order by 1, 2`;
    const out: Record<string, string> = {};
    for (const t of tables) {
      const q = `"${t.schema}"."${t.name}"`;
      const [row] = await sql.unsafe<{ n: string; md5: string | null }[]>(
        `select count(*) as n, md5(string_agg(x::text, '|' order by x::text)) as md5 from ${q} x`,
      );
      out[`${t.schema}.${t.name}`] = `${row!.n}:${row!.md5}`;
    }
    return out;
  });
}

/** Every entry under `dir`: relative path -> type, mode and content hash (links by target). */
export async function folderFingerprint(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string) => {
    const path = rel ? join(dir, rel) : dir;
    const info = await lstat(path);
    const mode = (info.mode & 0o777).toString(8);
    if (info.isSymbolicLink()) out[rel] = `link:${await readlink(path)}`;
    else if (info.isFile())
      out[rel] = `file:${mode}:${createHash('sha256')
        .update(await readFile(path))
        .digest('hex')}`;
    else if (info.isDirectory()) {
      out[rel] = `dir:${mode}`;
      for (const name of (await readdir(path)).sort()) await walk(rel ? `${rel}/${name}` : name);
    } else out[rel] = 'other';
  };
  await walk('');
  return out;
}

/** The live database and both live folders, fingerprinted. */
export async function liveState(agent: Agent) {
  return {
    database: await databaseFingerprint(agent),
    scripts: await folderFingerprint(agent.sources.scriptsDir),
    config: await folderFingerprint(agent.sources.configDir),
  };
}

/** Databases and folders any restore left behind (staging or previous copies). */
export async function leftovers(agent: Agent): Promise<string[]> {
  // The previous state is dropped after the job reports success: wait for that cleanup first.
  await restoreSettled(agent.config.dataDir);
  const names = await withSql(
    databaseUrl(agent.sources.conn, 'postgres'),
    (sql) => sql<{ datname: string }[]>`select datname from pg_database`,
  );
  const dbs = names
    .map((r) => r.datname)
    .filter((n) => n.includes('_gem_restore_') || n.includes('_gem_previous_'));
  const folders: string[] = [];
  for (const configured of [agent.sources.scriptsDir, agent.sources.configDir]) {
    // Beside the folder itself, as the restore puts them (a configured symlink resolved).
    const live = await liveFolderPath(configured);
    for (const entry of await readdir(dirname(live))) {
      if (entry.startsWith(`${basename(live)}.gem-`)) folders.push(entry);
    }
  }
  return [...dbs, ...folders];
}

/** One hand-made archive entry: a tar header and (for files) its bytes. */
export interface ArchiveEntry {
  header: Partial<tar.Header> & { name: string };
  data?: Buffer;
}

/** Seals tar entries (gzip + envelope) under `key` into `out`, exactly as a backup file is made. */
export async function sealArchive(
  key: MasterKey,
  installationId: string,
  entries: ArchiveEntry[],
  out: string,
): Promise<void> {
  const pack = tar.pack();
  const filling = (async () => {
    for (const e of entries) {
      await new Promise<void>((resolve, reject) =>
        pack.entry(e.header, e.data ?? Buffer.alloc(0), (error) => (error ? reject(error) : resolve())),
      );
    }
    pack.finalize();
  })();
  const fileKey = generateFileKey();
  const core = newCore({
    installationId,
    meta: { kind: 'manual', agentVersion: 'test', filename: basename(out) },
  });
  const stanzas = [await wrapForMasterKey(fileKey, key)];
  await Promise.all([
    filling,
    pipeline(pack, createGzip(), createSealTransform({ core, stanzas, fileKey }), createWriteStream(out)),
  ]);
}

/** Decrypts a real backup into its entries (manifest first), for tests that reseal a modified copy. */
export async function unpackBackup(
  agent: Agent,
  path: string,
): Promise<{ manifest: Manifest; entries: ArchiveEntry[] }> {
  const entries: ArchiveEntry[] = [];
  const { manifest } = await readBackup(path, {
    keys: agent.keyring.masterKeys,
    onDirectory: async (m) => {
      entries.push({ header: { name: m.path, type: 'directory', mode: m.mode ?? 0o755 } });
    },
    openMember: async (m) => {
      const parts: Buffer[] = [];
      return new Writable({
        write(chunk: Buffer, _e, cb) {
          parts.push(chunk);
          cb();
        },
        final(cb) {
          const data = Buffer.concat(parts);
          entries.push({
            header: { name: m.path, type: 'file', size: data.length, mode: m.mode ?? 0o644 },
            data,
          });
          cb();
        },
      });
    },
  });
  return { manifest, entries };
}

/** Rebuilds manifest.json for `entries` (sizes and sha256 recomputed) with `changes` applied. */
export function withManifest(
  manifest: Manifest,
  entries: ArchiveEntry[],
  changes: Partial<Manifest> = {},
): ArchiveEntry[] {
  const members = entries.map((e) => ({
    path: e.header.name,
    type: e.header.type === 'directory' ? ('directory' as const) : ('file' as const),
    size: e.data?.length ?? 0,
    ...(e.data ? { sha256: createHash('sha256').update(e.data).digest('hex') } : {}),
    mode: e.header.mode ?? 0o644,
  }));
  const next = { ...manifest, members, ...changes };
  const data = Buffer.from(JSON.stringify(next));
  return [
    { header: { name: MANIFEST_NAME, type: 'file', size: data.length, mode: 0o644 }, data },
    ...entries,
  ];
}

/** What startCrashFixture set up: the agent, the env of a child agent over it, one backup and the state it holds. */
export interface CrashFixture {
  t: TestAgent;
  /** The env an agent process over the same database, data dir and folders runs with (test/faults/child.ts). */
  env: Record<string, string>;
  backupName: string;
  atBackup: Awaited<ReturnType<typeof liveState>>;
}

/** The env an agent process over test agent `t`'s database, data dir and folders runs with. */
export function agentEnv(t: TestAgent, pg: TestPostgres): Record<string, string> {
  return {
    DATABASE_URL: t.agent.databaseUrl,
    GEM_DATA_DIR: t.dataDir,
    GEM_SCRIPTS_DIR: t.agent.sources.scriptsDir,
    GEM_CONFIG_DIR: t.agent.sources.configDir,
    GEM_AGENT_TOKEN: TEST_TOKEN,
    GEM_PG_BIN: pg.binDir,
  };
}

/**
 * The set-up of the crash tests (test/faults/crash-restore, test/jobs/history): a test agent (in
 * `dataDir` if given), a `history` table of `rows` rows of 64 hex characters beside GEM's tables
 * (bigger rows make a longer dump and staging restore), one backup made through the API, and the live
 * state it holds.
 */
export async function startCrashFixture(
  pg: TestPostgres,
  options: { rows: number; dataDir?: string },
): Promise<CrashFixture> {
  const t = await startTestAgent(pg, options.dataDir ? { dataDir: options.dataDir } : {});
  const env = agentEnv(t, pg);
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `create table history as select g as id, md5(g::text) || md5((g * 7)::text) as v from generate_series(1, ${options.rows}) g`,
    ),
  );
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  expect(job.error).toBeUndefined();
  const backupName = (job.result as { backup: { filename: string } }).backup.filename;
  return { t, env, backupName, atBackup: await liveState(t.agent) };
}

/**
 * Adds a table whose rows and indexes take a moment to load (300 000 rows, a primary key and an index
 * on a long text column): a restore's staging then reports its steps over more than a moment.
 */
export async function addSlowToLoadTable(url: string): Promise<void> {
  await withSql(url, (sql) =>
    sql.unsafe(`
      create table readings as
        select g as id, md5(g::text) || md5((g * 3)::text) as value from generate_series(1, 300000) g;
      alter table readings add primary key (id);
      create index readings_value on readings (value);
    `),
  );
}

/**
 * Hand-made (hostile) entries behind a valid-looking manifest of installation `installationId` that lists
 * them as their headers say (links as links, folders as folders, anything else as a file).
 */
export function hostile(installationId: string, entries: ArchiveEntry[]): ArchiveEntry[] {
  const manifest: Manifest = {
    format: 'gem-backup-manifest',
    version: 1,
    createdAt: new Date().toISOString(),
    installationId,
    agentVersion: 'test',
    kind: 'manual',
    postgres: {
      serverVersion: '15.0',
      serverVersionNum: 150000,
      dumpVersion: 'pg_dump (PostgreSQL) 15.0',
      database: 'gem',
    },
    rowCounts: {},
    members: [
      { path: 'scripts', type: 'directory', size: 0 },
      ...entries.map((e) =>
        e.header.type === 'symlink'
          ? { path: e.header.name, type: 'symlink' as const, size: 0, target: e.header.linkname! }
          : e.header.type === 'directory'
            ? { path: e.header.name, type: 'directory' as const, size: 0 }
            : { path: e.header.name, type: 'file' as const, size: e.data?.length ?? 0 },
      ),
    ],
  };
  const data = Buffer.from(JSON.stringify(manifest));
  return [
    { header: { name: 'manifest.json', type: 'file', size: data.length, mode: 0o644 }, data },
    { header: { name: 'scripts', type: 'directory', mode: 0o755 } },
    ...entries,
  ];
}

/** A file entry of a hostile archive. */
export const hostileFile = (name: string, text = 'pwned'): ArchiveEntry => ({
  header: { name, type: 'file', size: Buffer.byteLength(text), mode: 0o644 },
  data: Buffer.from(text),
});

/** The bytes of a name made of text and raw byte runs: b('caf', [0xe9]) is "caf" then 0xe9. */
export const b = (...parts: Array<string | number[]>) => Buffer.concat(parts.map((p) => Buffer.from(p)));

/** The bytes of `dir`/`names`... (names that need not be UTF-8). */
export const under = (dir: string, ...names: Buffer[]) =>
  Buffer.concat([Buffer.from(dir), ...names.flatMap((n) => [Buffer.from('/'), n])]);

/**
 * Every entry under `dir` by the bytes of its path (hex): type, permission bits and content hash, links
 * by target bytes. `rootMode` masks the root's own mode (0o7777 to see its setgid bit, as a mount shows it).
 */
export async function byteFingerprint(dir: string, rootMode = 0o777): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: Buffer) => {
    const path = rel.length ? under(dir, rel) : Buffer.from(dir);
    const info = await lstat(path);
    const key = rel.toString('hex');
    const mode = (info.mode & (rel.length ? 0o777 : rootMode)).toString(8);
    if (info.isSymbolicLink())
      out[key] = `link:${(await readlink(path, { encoding: 'buffer' })).toString('hex')}`;
    else if (info.isFile())
      out[key] = `file:${mode}:${createHash('sha256')
        .update(await readFile(path))
        .digest('hex')}`;
    else if (info.isDirectory()) {
      out[key] = `dir:${mode}`;
      for (const name of (await readdir(path, { encoding: 'buffer' })).sort(Buffer.compare))
        await walk(rel.length ? Buffer.concat([rel, Buffer.from('/'), name]) : name);
    } else out[key] = 'other';
  };
  await walk(Buffer.alloc(0));
  return out;
}
