// The sample scripts and config the agent writes on first start go only into its own default folders.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Agent, openAgent } from '../../agent/agent';
import { loadConfig } from '../../agent/config';
import { silentLogger } from '../../agent/log';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let agent: Agent | undefined;
let dataDir: string;
let configDir: string;

beforeAll(async () => {
  pg = await startPostgres();
  dataDir = await mkdtemp(join(tmpdir(), 'gem-samples-'));
  configDir = await mkdtemp(join(tmpdir(), 'gem-user-config-'));
  await writeFile(join(configDir, 'gem.json'), '{"site":"mine"}\n');
});

afterAll(async () => {
  await agent?.close();
  await pg?.stop();
  await rm(dataDir, { recursive: true, force: true });
  await rm(configDir, { recursive: true, force: true });
});

describe('sample folders on first start', () => {
  it('writes sample scripts into the default scripts folder but leaves a configured config folder alone', async () => {
    // GEM_SCRIPTS_DIR unset (the default folder), GEM_CONFIG_DIR set to the user's real folder.
    agent = await openAgent(
      loadConfig({
        DATABASE_URL: await pg.createDatabase(),
        GEM_DATA_DIR: dataDir,
        GEM_CONFIG_DIR: configDir,
        GEM_PG_BIN: pg.binDir,
        NODE_ENV: 'test',
      }),
      silentLogger,
    );
    expect(await readdir(join(dataDir, 'gem', 'scripts'))).toContain('drivers');
    expect(await readdir(configDir)).toEqual(['gem.json']);
    expect(await readFile(join(configDir, 'gem.json'), 'utf8')).toBe('{"site":"mine"}\n');
  });
});
