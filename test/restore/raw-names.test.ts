import { chmod, mkdir, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup, startVerify } from '../../agent/backup/operations';
import { readBackup } from '../../agent/backup/reader';
import { extractionSinks } from '../../agent/restore/extract';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { tempDirForTest } from '../services/temp-dir';
import {
  type ArchiveEntry,
  b,
  byteFingerprint,
  databaseFingerprint,
  hostile,
  leftovers,
  runRestore,
  sealArchive,
  under,
} from './helpers';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

/** The live database and both live folders (by the bytes of their names). */
async function state() {
  return {
    database: await databaseFingerprint(t.agent),
    scripts: await byteFingerprint(t.agent.sources.scriptsDir),
    config: await byteFingerprint(t.agent.sources.configDir),
  };
}

async function backupJob(): Promise<string> {
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent, { kind: 'manual' })).id);
  expect(job.error).toBeUndefined();
  return (job.result as { backup: { filename: string } }).backup.filename;
}

describe('names that are not clean UTF-8 text', () => {
  it('are backed up by their bytes, verified, and restored with the same bytes, content and mode', async () => {
    const scripts = t.agent.sources.scriptsDir;
    const config = t.agent.sources.configDir;
    const names: Array<[Buffer, string, number]> = [
      [b('bad', [0xff, 0xfe], 'utf8'), 'ff fe\n', 0o644],
      [b('latin1-caf', [0xe9]), 'café in Latin-1\n', 0o600],
      [b('back\\slash'), 'backslash\n', 0o755],
      [b('new\nline'), 'newline\n', 0o640],
      [b('tab\there'), 'tab\n', 0o644],
      [b('bell\x07\x1b[0m\x7f'), 'controls\n', 0o644],
      [b('-rf --no-preserve-root'), 'leading dash\n', 0o700],
      [b('50%.txt'), 'a percent sign\n', 0o644],
      // The stand-in of 0xff is "%FF": a file really named so must stay apart from it.
      [b('%FF'), 'a real %FF\n', 0o644],
      [b([0xff]), 'the byte 0xff\n', 0o644],
      [b('a'.repeat(255)), 'a 255-byte name\n', 0o644],
      [b('x'.repeat(253), [0xff, 0xfe]), 'a 255-byte name, not UTF-8\n', 0o644],
      [b([0xc3, 0xa9], 'valid-é-', [0xc0, 0xaf], 'overlong-', [0xed, 0xa0, 0x80], 'surrogate'), 'é\n', 0o644],
    ];
    for (const [name, text, mode] of names) {
      await writeFile(under(scripts, name), text);
      await chmod(under(scripts, name), mode);
    }
    // A folder whose name is not UTF-8, with a clean file and a folder with a newline inside.
    const folder = b('dossier-', [0xe9, 0xe8]);
    await mkdir(under(scripts, folder, b('sub\ndir')), { recursive: true });
    await chmod(under(scripts, folder), 0o750);
    await writeFile(under(scripts, folder, b('inner.js')), 'inner\n');
    await writeFile(under(scripts, folder, b('sub\ndir'), b('deep', [0xfa])), 'deep\n');
    // Links: a raw name, a raw target, both.
    await symlink(b('latin1-caf', [0xe9]), under(scripts, b('link-to-caf', [0xe9])));
    await symlink(b('../', [0xff, 0x01]), under(scripts, b('raw-target-link')));
    await symlink(b('tab\there'), under(scripts, b('link\\', [0x80])));
    await writeFile(under(config, b('gem', [0xa7], '.conf')), 'config\n');

    const filename = await backupJob();
    const atBackup = {
      scripts: await byteFingerprint(scripts),
      config: await byteFingerprint(config),
    };
    for (const [name] of names) expect(atBackup.scripts[name.toString('hex')]).toMatch(/^file:/);

    // The manifest: each such name by a stand-in and its bytes; clean names as before.
    const path = t.agent.catalog.pathOf(filename);
    const { manifest } = await readBackup(path, { keys: t.agent.keyring.masterKeys });
    const byPath = new Map(manifest.members.map((m) => [m.path, m]));
    expect(byPath.get('scripts/latin1-caf%E9')).toMatchObject({
      type: 'file',
      rawPath: b('latin1-caf', [0xe9]).toString('base64url'),
      mode: 0o600,
    });
    expect(byPath.get('scripts/%25FF')?.rawPath).toBe(b('%FF').toString('base64url'));
    expect(byPath.get('scripts/%FF')?.rawPath).toBe(b([0xff]).toString('base64url'));
    expect(byPath.get('scripts/new%0Aline')?.rawPath).toBe(b('new\nline').toString('base64url'));
    expect(byPath.get('scripts/-rf --no-preserve-root')).toMatchObject({ type: 'file' });
    expect(byPath.get('scripts/-rf --no-preserve-root')?.rawPath).toBeUndefined();
    expect(byPath.get(`scripts/${'a'.repeat(255)}`)?.rawPath).toBeUndefined();
    expect(byPath.get('scripts/dossier-%E9%E8/inner.js')?.rawPath).toBe(
      b('dossier-', [0xe9, 0xe8], '/inner.js').toString('base64url'),
    );
    expect(byPath.get('scripts/raw-target-link')).toMatchObject({
      type: 'symlink',
      target: '../%FF%01',
      rawTarget: b('../', [0xff, 0x01]).toString('base64url'),
    });
    expect(byPath.get('config/gem%A7.conf')?.rawPath).toBe(b('gem', [0xa7], '.conf').toString('base64url'));

    const verified = await t.agent.jobs.waitFor((await startVerify(t.agent, filename)).id);
    expect(verified.error).toBeUndefined();

    // Since the backup: files deleted, changed, re-moded; a new raw name added.
    await rm(under(scripts, b('latin1-caf', [0xe9])));
    await writeFile(under(scripts, b('bad', [0xff, 0xfe], 'utf8')), 'changed');
    await chmod(under(scripts, b('back\\slash')), 0o600);
    await rm(under(scripts, folder), { recursive: true });
    await writeFile(under(scripts, b('new-since', [0xfb])), 'not in the backup');
    await rm(under(config, b('gem', [0xa7], '.conf')));

    const job = await runRestore(t.agent, path, { skipSafetyBackup: true });
    expect(job.error).toBeUndefined();
    expect({ scripts: await byteFingerprint(scripts), config: await byteFingerprint(config) }).toEqual(
      atBackup,
    );
    expect(await readFile(under(scripts, b('latin1-caf', [0xe9])), 'utf8')).toBe('café in Latin-1\n');
    expect(await readlink(under(scripts, b('raw-target-link')), { encoding: 'buffer' })).toEqual(
      b('../', [0xff, 0x01]),
    );
    expect(await leftovers(t.agent)).toEqual([]);
  });
});

describe('a hostile raw path, sealed with the installation keys', () => {
  const raw = (bytes: Buffer) => bytes.toString('base64url');
  /** Entries listed as `hostile` lists them, then each given member field set on the member of its entry. */
  const archive = (entries: ArchiveEntry[], fields: Array<Record<string, string>>): ArchiveEntry[] => {
    const all = hostile(t.agent.keyring.installationId, entries);
    const manifest = JSON.parse(all[0]!.data!.toString());
    fields.forEach((f, i) => {
      Object.assign(manifest.members[i + 1], f);
    });
    const data = Buffer.from(JSON.stringify(manifest));
    return [{ header: { ...all[0]!.header, size: data.length }, data }, ...all.slice(1)];
  };
  const file = (name: string, text = 'pwned'): ArchiveEntry => ({
    header: { name, type: 'file', size: Buffer.byteLength(text), mode: 0o644 },
    data: Buffer.from(text),
  });
  const cases: Array<[string, (outside: string) => ArchiveEntry[], RegExp]> = [
    [
      'a ".." segment',
      () => archive([file('scripts/..%FF/x')], [{ rawPath: raw(b('../', [0xff], '/x')) }]),
      /segment/,
    ],
    [
      'an absolute raw path',
      (outside) => archive([file('scripts/%FF')], [{ rawPath: raw(b(`${outside}/`, [0xff])) }]),
      /empty, "\." or "\.\." segment/,
    ],
    ['a NUL byte', () => archive([file('scripts/a%00%FF')], [{ rawPath: raw(b('a', [0, 0xff])) }]), /NUL/],
    [
      'a path that is not the stand-in of its raw path',
      () => archive([file('scripts/innocent')], [{ rawPath: raw(b('evil', [0xff])) }]),
      /not the stand-in/,
    ],
    [
      'a clean name given as raw',
      () => archive([file('scripts/plain')], [{ rawPath: raw(b('plain')) }]),
      /clean name/,
    ],
    [
      'two members landing on one name',
      () => archive([file('scripts/50%'), file('scripts/50%25')], [{}, { rawPath: raw(b('50%')) }]),
      /listed twice/,
    ],
    [
      'a file under a link by its raw name',
      (outside) =>
        archive(
          [
            { header: { name: 'scripts/x%', type: 'symlink', linkname: outside } },
            file('scripts/x%25/passwd'),
          ],
          [{}, { rawPath: raw(b('x%/passwd')) }],
        ),
      /lies under the link scripts\/x%/,
    ],
    [
      'a link target with a NUL byte',
      () =>
        archive(
          [{ header: { name: 'scripts/l', type: 'symlink', linkname: '%FF%00' } }],
          [{ rawTarget: raw(b([0xff, 0])) }],
        ),
      /not a valid link target/,
    ],
  ];
  cases.forEach(([what, entries, why], i) => {
    it(`refuses ${what}, in verify and in a restore, writing nothing`, async () => {
      const outside = await tempDirForTest('gem-raw-hostile-');
      const before = await state();
      const name = `gem-backup-2020-03-${String(i + 1).padStart(2, '0')}-000000.tar.gz`;
      const path = t.agent.catalog.pathOf(name);
      await sealArchive(t.agent.keyring.activeKey, t.agent.keyring.installationId, entries(outside), path);
      await expect(readBackup(path, { keys: t.agent.keyring.masterKeys })).rejects.toMatchObject({
        code: 'corrupt_backup',
        message: expect.stringMatching(why),
      });
      const job = await runRestore(t.agent, path, { skipSafetyBackup: true });
      expect(job.error).toMatchObject({ code: 'corrupt_backup', message: expect.stringMatching(why) });
      expect(await readdir(outside)).toEqual([]);
      expect(await state()).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
      await rm(path);
    });
  });

  it('the extraction sinks refuse an unsafe raw path themselves, writing nothing', async () => {
    const root = await tempDirForTest('gem-raw-sinks-');
    const outside = await tempDirForTest('gem-raw-outside-');
    const scripts = join(root, 'scripts.staging');
    const sinks = extractionSinks({
      dumpPath: join(root, 'dump'),
      folders: { scripts, config: join(root, 'config.staging') },
    });
    await sinks.onDirectory({ path: 'scripts', type: 'directory', size: 0 });
    await sinks.onDirectory({ path: 'config', type: 'directory', size: 0 });
    for (const rawPath of [
      b('../x', [0xff]),
      b(`${outside}/x`, [0xff]),
      b('a/', [0xff], '/../../x'),
      b('a', [0], 'b'),
      b([0xff], '/'),
      Buffer.alloc(0),
    ]) {
      const member = {
        path: 'scripts/x',
        rawPath: rawPath.toString('base64url'),
        type: 'file' as const,
        size: 1,
      };
      await expect(sinks.openMember(member)).rejects.toMatchObject({ code: 'corrupt_backup' });
      await expect(sinks.onDirectory({ ...member, type: 'directory', size: 0 })).rejects.toMatchObject({
        code: 'corrupt_backup',
      });
    }
    await sinks.finish();
    expect(await readdir(scripts)).toEqual([]);
    expect(await readdir(outside)).toEqual([]);
    expect((await readdir(root)).sort()).toEqual(['config.staging', 'scripts.staging']);
  });
});
