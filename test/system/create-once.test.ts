// What is created once per data dir (the keyring, the admin token) is the same for processes starting together.
import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openAgent } from '../../agent/agent';
import { findPgBinDir, loadConfig } from '../../agent/config';
import { SEED_COUNTS } from '../../agent/db/seed';
import { Keyring } from '../../agent/keys/keyring';
import { silentLogger } from '../../agent/log';
import { createSmallFileExclusive } from '../../agent/system/atomic-file';
import { startPostgres } from '../services/postgres';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-create-once-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('createSmallFileExclusive', () => {
  it('creates a missing file whole, 0600, and leaves no temp file', async () => {
    const path = join(dir, 'secret');
    expect(await createSmallFileExclusive(path, 'first\n')).toBe(true);
    expect(await readFile(path, 'utf8')).toBe('first\n');
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect(await readdir(dir)).toEqual(['secret']);
  });

  it('never replaces a file that exists, and says so', async () => {
    const path = join(dir, 'secret');
    await writeFile(path, 'theirs\n');
    expect(await createSmallFileExclusive(path, 'mine\n')).toBe(false);
    expect(await readFile(path, 'utf8')).toBe('theirs\n');
    expect(await readdir(dir)).toEqual(['secret']);
  });

  it('of many creators at once, exactly one wins and its content stays', async () => {
    const path = join(dir, 'secret');
    const won = await Promise.all(
      Array.from({ length: 12 }, (_, i) => createSmallFileExclusive(path, `writer ${i}\n`)),
    );
    expect(won.filter(Boolean)).toHaveLength(1);
    expect(await readFile(path, 'utf8')).toBe(`writer ${won.indexOf(true)}\n`);
    expect(await readdir(dir)).toEqual(['secret']);
  });
});

describe('created once per data dir', () => {
  it('two keyrings opened at once on a fresh data dir are the same keyring, on disk too', async () => {
    const path = join(dir, 'keyring.json');
    const [a, b] = await Promise.all([Keyring.loadOrCreate(path), Keyring.loadOrCreate(path)]);
    // Before, each made its own and the last rename won: backups sealed with the other key were lost.
    expect(b.installationId).toBe(a.installationId);
    expect(b.activeKey.id).toBe(a.activeKey.id);
    const onDisk = await Keyring.loadOrCreate(path);
    expect(onDisk.installationId).toBe(a.installationId);
    expect(Buffer.from(onDisk.activeKey.key).equals(Buffer.from(a.activeKey.key))).toBe(true);
  });

  it('two agents opened at once on a fresh data dir share the admin token the file holds', async () => {
    const pg = await startPostgres();
    try {
      const config = loadConfig({
        DATABASE_URL: await pg.createDatabase(),
        GEM_DATA_DIR: join(dir, 'data'),
        GEM_PG_BIN: pg.binDir,
      });
      const [a, b] = await Promise.all([openAgent(config, silentLogger), openAgent(config, silentLogger)]);
      try {
        expect(b.token).toBe(a.token);
        expect((await readFile(a.paths.token, 'utf8')).trim()).toBe(a.token);
        expect(b.keyring.installationId).toBe(a.keyring.installationId);
      } finally {
        await a.close();
        await b.close();
      }
    } finally {
      await pg.stop();
    }
  });

  it('two agents opened at once on a fresh data dir with the embedded cluster both open; GEM is seeded once', async () => {
    await chmod(dir, 0o755);
    const config = loadConfig({ GEM_DATA_DIR: join(dir, 'data'), GEM_PG_BIN: findPgBinDir(undefined) });
    // Two rounds: the two starts must reach the database and the seed together for the old code to fail.
    for (let round = 0; round < 2; round++) {
      await rm(join(dir, 'data'), { recursive: true, force: true });
      const opened = await Promise.allSettled([
        openAgent(config, silentLogger),
        openAgent(config, silentLogger),
      ]);
      const agents = opened.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
      try {
        expect(opened.map((o) => (o.status === 'fulfilled' ? 'opened' : String(o.reason)))).toEqual([
          'opened',
          'opened',
        ]);
        const users = await agents[0]!.sql`select count(*)::int as n from users`;
        expect(users[0]!.n).toBe(SEED_COUNTS.users);
      } finally {
        for (const agent of agents) await agent.close();
      }
    }
  });
});
