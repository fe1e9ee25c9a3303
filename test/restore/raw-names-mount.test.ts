// A live folder that is a mount point (a Docker volume) is restored by copy (agent/restore/copy-tree.ts):
// its entries copied aside, the folder emptied, the staged entries copied in. Names Linux allows but
// UTF-8 text does not hold (0xff 0xfe, Latin-1 "caf\xe9", a newline) go through each step by their bytes,
// in a successful restore and in the undo of a failed one.
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMountPoint } from '../../agent/restore/swap';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { b, backupNow, byteFingerprint, databaseFingerprint, leftovers, runRestore, under } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let scratch: string;
let mounted: string;
let configured: string;
let filename: string;
let atBackup: Awaited<ReturnType<typeof state>>;

async function state() {
  return { database: await databaseFingerprint(t.agent), config: await byteFingerprint(mounted, 0o7777) };
}

const caf = b('caf', [0xe9]);
const bad = b('bad', [0xff, 0xfe], '.json');
const folder = b('dossier-', [0xe9, 0xe8]);
const readOnly = b('lecture-seule-', [0xf4]);

beforeAll(async () => {
  if (process.getuid?.() !== 0)
    throw new Error('these tests run as root: they mount a tmpfs as the config folder');
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
  scratch = await mkdtemp(join(tmpdir(), 'gem-raw-names-mount-'));
  mounted = join(scratch, 'volume-config');
  await mkdir(mounted);
  const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=2750', 'tmpfs', mounted], {
    encoding: 'utf8',
  });
  expect(mount.stderr).toBe('');
  expect(await isMountPoint(mounted)).toBe(true);
  await writeFile(under(mounted, caf), 'café in Latin-1\n');
  await chmod(under(mounted, caf), 0o600);
  await writeFile(under(mounted, bad), '{"ff":"fe"}\n');
  await writeFile(under(mounted, b('new\nline')), 'newline\n');
  await mkdir(under(mounted, folder, b('sub', [0xfa])), { recursive: true });
  await writeFile(under(mounted, folder, b('sub', [0xfa]), b('deep', [0xfb])), 'deep\n');
  await chmod(under(mounted, folder), 0o750);
  await symlink(caf, under(mounted, b('link-to-caf', [0xe9])));
  await symlink(b('../', [0xff, 0x01]), under(mounted, b('raw-target')));
  // A read-only folder with a raw name: emptying the folder must open it up to remove its entries.
  await mkdir(under(mounted, readOnly));
  await writeFile(under(mounted, readOnly, b('inner', [0xe0])), 'inner\n');
  await chmod(under(mounted, readOnly), 0o555);
  configured = t.agent.sources.configDir;
  t.agent.sources.configDir = mounted;
  filename = await backupNow(t.agent, 'raw names on a volume');
  atBackup = await state();
}, 120_000);

afterAll(async () => {
  if (configured && t) t.agent.sources.configDir = configured;
  if (mounted) spawnSync('umount', [mounted]);
  await t?.close();
  await pg?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

/** Changes since the backup, raw names each: one removed, one changed, one re-moded, two added. */
async function changeSinceBackup(tag: string) {
  await rm(under(mounted, caf));
  await writeFile(under(mounted, bad), `{"changed":"${tag}"}\n`);
  await chmod(under(mounted, folder), 0o700);
  await writeFile(under(mounted, b(`added-${tag}-`, [0xfc])), 'added\n');
  await symlink(b('nowhere-', [0xfd]), under(mounted, b(`link-${tag}-`, [0xfe])));
  return state();
}

describe('a live folder that is a mount point, holding names that are not UTF-8', () => {
  it('is restored by copy byte for byte: every name, content, mode and link target', async () => {
    await changeSinceBackup('restored');
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), { skipSafetyBackup: true });
    expect(job.error).toBeUndefined();
    expect(await isMountPoint(mounted)).toBe(true);
    expect(await state()).toEqual(atBackup);
    expect(await readFile(under(mounted, caf), 'utf8')).toBe('café in Latin-1\n');
    expect(await leftovers(t.agent)).toEqual([]);
  });

  it('is put back byte for byte when the restore fails after emptying it', async () => {
    const before = await changeSinceBackup('undone');
    let atFailure: Buffer[] | undefined;
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), {
      skipSafetyBackup: true,
      faults: {
        beforeSwapStep: async (step) => {
          if (step !== 'fill-live-folder:config') return;
          atFailure = await readdir(mounted, { encoding: 'buffer' });
          throw new Error('injected failure before the refill');
        },
      },
    });
    expect(job.error).toMatchObject({
      code: 'restore_failed',
      message: expect.stringContaining('step fill-live-folder:config: injected failure before the refill'),
    });
    expect(atFailure).toEqual([]);
    expect(await state()).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
  });
});
