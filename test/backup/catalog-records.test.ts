// The catalog's records file: concurrent updates, a second catalog and other processes on the same data dir lose nothing.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BackupCatalog, type BackupRecord } from '../../agent/backup/catalog';
import { readHeaderOfFile } from '../../agent/backup/reader';
import { sealArchive } from '../restore/helpers';

const A = 'gem-backup-2024-01-01-000000.tar.gz';
const B = 'gem-backup-2024-01-02-000000.tar.gz';
const C = 'gem-backup-2024-01-03-000000.tar.gz';

let dir: string;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function catalogIn(path: string): Promise<BackupCatalog> {
  const catalog = new BackupCatalog(join(path, 'backups'), join(path, 'records.json'));
  await catalog.init();
  return catalog;
}
const records = async (): Promise<Record<string, BackupRecord>> =>
  JSON.parse(await readFile(join(dir, 'records.json'), 'utf8')) as Record<string, BackupRecord>;

describe('catalog records', () => {
  it('keeps both of two concurrent updates (a pin while a verify job records its result)', async () => {
    dir = await mkdtemp(join(tmpdir(), 'catalog-'));
    const catalog = await catalogIn(dir);
    await catalog.updateRecord(A, { verifyResult: 'ok' });
    await Promise.all([
      catalog.updateRecord(A, { pinned: true }),
      catalog.updateRecord(B, { verifiedAt: 'x', verifyResult: 'ok' }),
      catalog.updateRecord(C, { verifyResult: 'failed' }),
    ]);
    expect(await records()).toEqual({
      [A]: { verifyResult: 'ok', pinned: true },
      [B]: { verifiedAt: 'x', verifyResult: 'ok' },
      [C]: { verifyResult: 'failed' },
    });
  });

  it("keeps a record written by a second catalog on the same data dir (the CLI) at the first one's next update", async () => {
    dir = await mkdtemp(join(tmpdir(), 'catalog-'));
    const agentCatalog = await catalogIn(dir);
    const cliCatalog = await catalogIn(dir);
    await agentCatalog.updateRecord(A, { verifyResult: 'ok' }); // the agent has its records in memory
    await cliCatalog.updateRecord(B, { pinned: true });
    await agentCatalog.updateRecord(C, { verifyResult: 'ok' });
    await agentCatalog.updateRecord(B, { verifiedAt: 'y', verifyResult: 'ok' });
    expect(await records()).toEqual({
      [A]: { verifyResult: 'ok' },
      [B]: { pinned: true, verifiedAt: 'y', verifyResult: 'ok' },
      [C]: { verifyResult: 'ok' },
    });
  });

  it("removes a deleted backup's record without losing one written meanwhile", async () => {
    dir = await mkdtemp(join(tmpdir(), 'catalog-'));
    const catalog = await catalogIn(dir);
    await catalog.updateRecord(A, { verifyResult: 'ok' });
    await Promise.all([catalog.updateRecord(A, undefined), catalog.updateRecord(B, { pinned: true })]);
    expect(await records()).toEqual({ [B]: { pinned: true } });
  });

  it('keeps every record when three processes record backups at the same moment (the service and CLI commands)', async () => {
    dir = await mkdtemp(join(tmpdir(), 'catalog-'));
    await catalogIn(dir);
    const children = Array.from({ length: 3 }, () =>
      spawn(
        process.execPath,
        ['--import', 'tsx', join(import.meta.dirname, 'records-child.ts'), dir, '100'],
        {
          stdio: ['pipe', 'pipe', 'inherit'],
        },
      ),
    );
    try {
      await Promise.all(children.map((child) => said(child, 'ready')));
      const finished = children.map((child) => said(child, 'done'));
      for (const child of children) child.stdin.write('go\n');
      await Promise.all(finished);
    } finally {
      for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    }
    expect(Object.keys(await records())).toHaveLength(300);
    // Only the agent's user may read them; nothing of the lock is left.
    expect((await stat(join(dir, 'records.json'))).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'backups'))).mode & 0o777).toBe(0o700);
    expect((await readdir(dir)).sort()).toEqual(['backups', 'records.json']);
  });

  it("keeps a newer agent's unknown fields on every write, and shows only the header's facts and known fields", async () => {
    dir = await mkdtemp(join(tmpdir(), 'catalog-'));
    const catalog = await catalogIn(dir);
    await sealArchive(
      { id: 'k1', key: new Uint8Array(randomBytes(32)) },
      randomBytes(16).toString('hex'),
      [],
      catalog.pathOf(A),
    );
    // A records file a newer agent wrote (an upgrade, then a downgrade): fields this version does not
    // know, in a record and inside its known parts, some named like the header's facts.
    const newer = {
      [A]: {
        pinned: true,
        verifyResult: 'ok',
        remoteVerify: { sftp: { verifiedAt: 'v', verifyResult: 'ok', attempts: 2 } },
        content: { sha256: 'aa', size: 1, mtimeMs: 2, algorithm: 'sha256' },
        uploadedTo: { sftp: '2030-01-01T00:00:00.000Z' },
        kind: 'safety',
        createdAt: '2099-01-01T00:00:00.000Z',
        size: 1,
        installationTag: 'not-the-header',
      },
      [B]: { legalHold: { until: '2031-01-01' } },
    };
    await writeFile(join(dir, 'records.json'), JSON.stringify(newer));
    const header = await readHeaderOfFile(catalog.pathOf(A));
    const info = await catalog.info(A);
    expect(info).toEqual({
      filename: A,
      createdAt: header.core.createdAt,
      size: (await stat(catalog.pathOf(A))).size,
      keyIds: ['k1'],
      installation: header.core.installationPrefix,
      installationTag: header.core.installationTag,
      kind: 'manual',
      pinned: true,
      verifyResult: 'ok',
      // Whole: the verification writes it back with one destination's entry replaced.
      remoteVerify: newer[A].remoteVerify,
    });
    // Not damaged: nothing set aside, pruning not held; each write keeps what the newer agent wrote.
    await catalog.updateRecord(A, { verifiedAt: 'w' });
    await catalog.updateRecord(C, { pinned: true });
    expect(await records()).toEqual({
      ...newer,
      [A]: { ...newer[A], verifiedAt: 'w' },
      [C]: { pinned: true },
    });
    expect(await catalog.hold.get()).toBeUndefined();
    expect((await readdir(dir)).sort()).toEqual(['backups', 'records.json']);
  });

  it('counts a known field of the wrong type as damage, unknown fields beside it or not', async () => {
    for (const record of [
      { pinned: 'yes', uploadedTo: {} },
      { remoteVerify: { sftp: { verifiedAt: 'v', verifyResult: 'maybe', attempts: 2 } } },
      { content: { sha256: 'aa', size: '1', mtimeMs: 2 } },
    ]) {
      dir = await mkdtemp(join(tmpdir(), 'catalog-'));
      const catalog = await catalogIn(dir);
      const text = JSON.stringify({ [A]: record });
      await writeFile(join(dir, 'records.json'), text);
      expect(await catalog.knownSha256(A)).toBeUndefined();
      const aside = (await readdir(dir)).filter((n) => n.startsWith('records.json.damaged-'));
      expect(aside).toHaveLength(1);
      expect(await readFile(join(dir, aside[0]!), 'utf8')).toBe(text);
      expect((await catalog.hold.get())?.setAside).toEqual(aside);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("closes an earlier version's open backups folder to other users, keeping its backups", async () => {
    dir = await mkdtemp(join(tmpdir(), 'catalog-'));
    const backups = join(dir, 'backups');
    await mkdir(backups, { mode: 0o755 });
    await chmod(backups, 0o755); // whatever the umask
    await writeFile(join(backups, A), 'an old backup', { mode: 0o644 });
    const catalog = await catalogIn(dir);
    expect((await stat(backups)).mode & 0o777).toBe(0o700);
    expect(await readFile(catalog.pathOf(A), 'utf8')).toBe('an old backup');
  });
});

/** Resolves when `child` prints `line`; fails after 60 s or if it exits first, so the test cannot hang. */
function said(child: ReturnType<typeof spawn>, line: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`no "${line}" from the child in 60 s`)), 60_000);
    child.stdout?.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      if (text.split('\n').includes(line)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the child exited (${code}) before "${line}"`));
    });
  });
}
