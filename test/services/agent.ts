/** A real agent for a test: temp data dir, a fresh seeded database on a real cluster, sample folders. */
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Agent, openAgent } from '../../agent/agent';
import { createApp, type RouteModule } from '../../agent/app';
import { loadConfig } from '../../agent/config';
import type { SqlOptions } from '../../agent/db/connect';
import { seedGemDatabase, writeSampleFolders } from '../../agent/db/seed';
import { stopDrService } from '../../agent/dr/service';
import { Keyring } from '../../agent/keys/keyring';
import { type Logger, silentLogger } from '../../agent/log';
import type { TestPostgres } from './postgres';
import { withSql } from './postgres';

export interface TestAgent {
  agent: Agent;
  app: ReturnType<typeof createApp>;
  dataDir: string;
  /** fetch-like call into the app with the admin token. */
  request(path: string, init?: RequestInit): Promise<Response>;
  close(): Promise<void>;
}

export const TEST_TOKEN = 'test-admin-token-0123456789abcdef';

/** Opens an agent on a new database of `pg`, seeded with the sample GEM data, and its HTTP app. */
export async function startTestAgent(
  pg: TestPostgres,
  options: {
    dataDir?: string;
    databaseUrl?: string;
    modules?: RouteModule[];
    seed?: boolean;
    env?: Record<string, string>;
    /** The agent's logger (default: silent). */
    log?: Logger;
    /** Options of the agent's pool on GEM's database (default: the product's). */
    pool?: SqlOptions;
  } = {},
): Promise<TestAgent> {
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'gem-agent-')));
  const databaseUrl = options.databaseUrl ?? (await pg.createDatabase());
  const scriptsDir = join(dataDir, 'gem', 'scripts');
  const configDir = join(dataDir, 'gem', 'config');
  const config = loadConfig({
    DATABASE_URL: databaseUrl,
    GEM_DATA_DIR: dataDir,
    GEM_SCRIPTS_DIR: scriptsDir,
    GEM_CONFIG_DIR: configDir,
    GEM_AGENT_TOKEN: TEST_TOKEN,
    GEM_PG_BIN: pg.binDir,
    NODE_ENV: 'test',
    ...options.env,
  });
  const agent = await openAgent(config, options.log ?? silentLogger, { pool: options.pool });
  if (options.seed !== false && !options.databaseUrl) {
    await withSql(databaseUrl, (sql) => seedGemDatabase(sql, agent.keyring.activeKey));
    await writeSampleFolders(scriptsDir, configDir);
  }
  const app = createApp(agent, options.modules);
  return {
    agent,
    app,
    dataDir,
    request: (path, init = {}) => {
      const headers = new Headers(init.headers);
      if (!headers.has('authorization')) headers.set('authorization', `Bearer ${TEST_TOKEN}`);
      return Promise.resolve(app.request(path, { ...init, headers }));
    },
    close: async () => {
      // A look at the DR slot that a status request started writes the DR state when it ends.
      await stopDrService(agent);
      await agent.close();
      // A request a test's HTTP server let run on after its close (a page's last poll) may still add a
      // line to the audit log or a job to jobs.json while the folder is removed: rm retries then.
      if (!options.dataDir)
        await rm(dataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
    },
  };
}

/**
 * What a spawned CLI or agent process runs on: a new data dir (named `<prefix>…`, by its real path)
 * with a keyring, a new database of `pg` seeded with that keyring's key, and the sample folders in
 * the data dir; `env` points at them all. An inherited GEM_KEYS_PASSPHRASE is left out.
 */
export async function seededEnvironment(
  pg: TestPostgres,
  prefix: string,
): Promise<{ dataDir: string; env: NodeJS.ProcessEnv }> {
  const dataDir = await realpath(await mkdtemp(join(tmpdir(), prefix)));
  const url = await pg.createDatabase();
  const keyring = await Keyring.loadOrCreate(join(dataDir, 'keyring.json'));
  await withSql(url, (sql) => seedGemDatabase(sql, keyring.activeKey));
  await writeSampleFolders(join(dataDir, 'scripts'), join(dataDir, 'config'));
  const { GEM_KEYS_PASSPHRASE: _inherited, ...inherited } = process.env;
  const env = {
    ...inherited,
    DATABASE_URL: url,
    GEM_DATA_DIR: dataDir,
    GEM_SCRIPTS_DIR: join(dataDir, 'scripts'),
    GEM_CONFIG_DIR: join(dataDir, 'config'),
    GEM_PG_BIN: pg.binDir,
  };
  return { dataDir, env };
}
