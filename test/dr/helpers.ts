/** DR test helpers: an agent wired to the test cloud, row counts, folder fingerprints, secure attributes, big data. */
import { createHash } from 'node:crypto';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Agent } from '../../agent/agent';
import { createApp } from '../../agent/app';
import { type DrServiceOptions, drServiceFor } from '../../agent/dr/service';
import { drModule } from '../../agent/http/routes/dr';
import { settingsModule } from '../../agent/http/routes/settings';
import type { Job } from '../../agent/jobs/runner';
import { openSecret } from '../../agent/keys/secrets';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { DR_ENROLLMENT_TOKEN } from '../services/dr-cloud';
import type { TestPostgres } from '../services/postgres';
import { withSql } from '../services/postgres';

/**
 * A test agent (no DR endpoint when `drUrl` is undefined) whose DR service has `options`, and an app with
 * the DR and settings routes; `dataDir` and `databaseUrl` as startTestAgent takes them (a seededEnvironment's,
 * for a CLI run beside it).
 */
export async function startDrAgent(
  pg: TestPostgres,
  drUrl: string | undefined,
  options: DrServiceOptions & {
    seed?: boolean;
    env?: Record<string, string>;
    dataDir?: string;
    databaseUrl?: string;
  } = {},
): Promise<TestAgent> {
  const { seed, env, dataDir, databaseUrl, ...dr } = options;
  const t = await startTestAgent(pg, {
    ...(seed === false ? { seed: false } : {}),
    ...(dataDir ? { dataDir } : {}),
    ...(databaseUrl ? { databaseUrl } : {}),
    env: {
      ...(drUrl ? { GEM_DR_URL: drUrl } : {}),
      GEM_DR_ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN,
      ...env,
    },
  });
  drServiceFor(t.agent, dr);
  const app = createApp(t.agent, [drModule, settingsModule]);
  return {
    ...t,
    app,
    request: (path, init = {}) => {
      const headers = new Headers(init.headers);
      if (!headers.has('authorization')) headers.set('authorization', `Bearer ${TEST_TOKEN}`);
      return Promise.resolve(app.request(path, { ...init, headers }));
    },
  };
}

/** Starts a push through the API and waits for its job. */
export async function pushViaApi(t: TestAgent): Promise<Job> {
  const res = await t.request('/api/v1/dr/push', { method: 'POST' });
  if (res.status !== 202) throw new Error(`push refused: ${res.status} ${await res.text()}`);
  const { jobId } = (await res.json()) as { jobId: string };
  return t.agent.jobs.waitFor(jobId);
}

/** Row count of every table in GEM's schema (public). */
export async function rowCounts(agent: Agent): Promise<Record<string, number>> {
  return withSql(databaseUrl(agent.sources.conn), async (sql) => {
    const tables = await sql<{ name: string }[]>`
      select tablename as name from pg_tables where schemaname = 'public' order by 1`;
    const out: Record<string, number> = {};
    for (const t of tables) {
      const [row] = await sql.unsafe<{ n: string }[]>(`select count(*) as n from public."${t.name}"`);
      out[t.name] = Number(row!.n);
    }
    return out;
  });
}

/** The secure attributes, opened with the agent's keys: id -> plaintext. */
export async function secureAttributes(agent: Agent): Promise<Record<number, string>> {
  return withSql(databaseUrl(agent.sources.conn), async (sql) => {
    const rows = await sql<{ id: number; value: string }[]>`
      select id, value from public.attributes where secure order by id`;
    return Object.fromEntries(
      rows.map((r) => [r.id, openSecret(r.value, agent.keyring.masterKeys, 'secure-attribute')]),
    );
  });
}

/** relative path -> sha256 of every file under `dir`. */
export async function folderFiles(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    out[path.slice(dir.length + 1)] = createHash('sha256')
      .update(await readFile(path))
      .digest('hex');
  }
  return out;
}

/** Adds a table of random (incompressible) bytes, `mib` MiB, so the backup must go multipart. */
export async function addRandomData(agent: Agent, mib: number): Promise<void> {
  await withSql(databaseUrl(agent.sources.conn), async (sql) => {
    await sql`create table public.blobs (id int primary key, data bytea not null)`;
    await sql`
      insert into public.blobs
      select g, (select decode(string_agg(lpad(to_hex((random() * 4294967295)::bigint), 8, '0'), ''), 'hex')
                 from generate_series(1, 262144) where g > 0)
      from generate_series(1, ${mib}) g`;
  });
}

/** The files under `folder` this process holds open (deleted ones too). */
export async function openFilesUnder(folder: string): Promise<string[]> {
  const open: string[] = [];
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(join('/proc/self/fd', fd)).catch(() => '');
    if (target.startsWith(folder)) open.push(target);
  }
  return open;
}

/** The environment of a built CLI run on test agent `t`'s data dir, database and folders, with `drUrl` as its DR endpoint. */
export function cliEnvOf(t: TestAgent, pg: TestPostgres, drUrl: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    GEM_DATA_DIR: t.dataDir,
    DATABASE_URL: databaseUrl(t.agent.sources.conn),
    GEM_SCRIPTS_DIR: t.agent.sources.scriptsDir,
    GEM_CONFIG_DIR: t.agent.sources.configDir,
    GEM_PG_BIN: pg.binDir,
    GEM_DR_URL: drUrl,
    NODE_ENV: 'test',
  };
}
