// A restore puts back each script's and folder's own modification time and permission bits, as the backup recorded them;
// the folder roots keep the live folders' mode, and their owner is given to every restored entry.
import { chmod, chown, mkdir, readdir, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow as backupWith, runRestore } from './helpers';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
});

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

/** Backs up now and returns the backup's name. */
const backupNow = (label: string) => backupWith(t.agent, label);

/** Restores `name` (no safety backup) and expects success. */
async function restoreNow(name: string): Promise<void> {
  const restored = await runRestore(t.agent, t.agent.catalog.pathOf(name), { skipSafetyBackup: true });
  expect(restored.error).toBeUndefined();
}

describe('restore keeps modification times and permissions', () => {
  it('gives restored files and folders the times they had when the backup was made', async () => {
    const scripts = t.agent.sources.scriptsDir;
    const file = join(scripts, 'macros', 'good-night.js');
    const folder = join(scripts, 'drivers');
    const fileTime = new Date('2020-01-02T03:04:05Z');
    const folderTime = new Date('2021-06-07T08:09:10Z');
    await utimes(file, fileTime, fileTime);
    await utimes(folder, folderTime, folderTime);
    const name = await backupNow('mtime');

    // Changed after the backup: the restore must bring the old content and times back.
    await writeFile(file, 'changed\n');
    await restoreNow(name);
    expect(Math.floor((await stat(file)).mtimeMs / 1000)).toBe(fileTime.getTime() / 1000);
    expect(Math.floor((await stat(folder)).mtimeMs / 1000)).toBe(folderTime.getTime() / 1000);
  });

  it('gives restored files and folders their permission bits, whatever the umask, but never setuid', async () => {
    const scripts = t.agent.sources.scriptsDir;
    const shared = join(scripts, 'shared');
    await mkdir(shared, { recursive: true });
    const modes: Record<string, number> = {
      [join(shared, 'group-edit.js')]: 0o664,
      [join(shared, 'run.sh')]: 0o775,
      [join(scripts, 'secret.conf')]: 0o600,
      [join(scripts, 'read-only.js')]: 0o444,
    };
    for (const [path, mode] of Object.entries(modes)) {
      await writeFile(path, `// ${path}\n`);
      await chmod(path, mode);
    }
    await chmod(shared, 0o2770); // setgid: dropped
    const setuid = join(scripts, 'setuid.sh');
    await writeFile(setuid, '#!/bin/sh\n');
    await chmod(setuid, 0o4755);
    const name = await backupNow('modes');

    for (const path of [...Object.keys(modes), setuid, shared]) await chmod(path, 0o700);
    await restoreNow(name);
    for (const [path, mode] of Object.entries(modes)) {
      expect(((await stat(path)).mode & 0o7777).toString(8), path).toBe(mode.toString(8));
    }
    expect(((await stat(shared)).mode & 0o7777).toString(8)).toBe('770');
    expect(((await stat(setuid)).mode & 0o7777).toString(8)).toBe('755');
  });

  it("keeps the live folder's mode, and gives every restored entry its owner when the agent runs as root", async () => {
    if (process.getuid?.() !== 0)
      throw new Error('this test runs as root: it hands the live scripts folder to uid 65534 (nobody)');
    const scripts = t.agent.sources.scriptsDir;
    await mkdir(join(scripts, 'owned'), { recursive: true });
    await writeFile(join(scripts, 'owned', 'by-root.js'), '// root wrote this\n');
    await chmod(scripts, 0o755);
    const name = await backupNow('owners');

    // Since the backup, GEM's own user (here nobody) took the folder over, with a tighter mode.
    const NOBODY = 65534;
    for (const path of await walk(scripts)) await chown(path, NOBODY, NOBODY);
    await chmod(scripts, 0o2750);
    await restoreNow(name);

    const info = await stat(scripts);
    expect((info.mode & 0o7777).toString(8)).toBe('2750');
    const restored = await walk(scripts);
    expect(restored).toContain(join(scripts, 'owned', 'by-root.js'));
    for (const path of restored) {
      const { uid, gid } = await stat(path);
      expect({ path, uid, gid }).toEqual({ path, uid: NOBODY, gid: NOBODY });
    }
  });
});

/** `dir` and every file and folder under it. */
async function walk(dir: string): Promise<string[]> {
  const found = [dir];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...(await walk(path)));
    else found.push(path);
  }
  return found;
}
