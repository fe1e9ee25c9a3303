// The verification's results on a backup's record: two processes (the service and the CLI) recording
// results of different destinations on the same backup at once both keep theirs.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { BackupCatalog, type BackupRecord } from '../../agent/backup/catalog';
import { sealArchive } from '../restore/helpers';

const A = 'gem-backup-2024-01-01-000000.tar.gz';
const ROUNDS = 20;

let dir: string;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("the verification's results on a backup's record", () => {
  it("keeps both destinations' results when two processes record them on the same backup at the same moment", async () => {
    dir = await mkdtemp(join(tmpdir(), 'remote-verify-'));
    const catalog = new BackupCatalog(join(dir, 'backups'), join(dir, 'records.json'));
    await catalog.init();
    await sealArchive(
      { id: 'k1', key: new Uint8Array(randomBytes(32)) },
      randomBytes(16).toString('hex'),
      [],
      catalog.pathOf(A),
    );
    const targets = ['sftp', 's3'] as const;
    const children = targets.map((target) =>
      spawn(
        process.execPath,
        ['--import', 'tsx', join(import.meta.dirname, 'remote-verify-child.ts'), dir, A, target],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      ),
    );
    try {
      const lines = children.map((child) => createInterface({ input: child.stdout })[Symbol.asyncIterator]());
      for (const next of lines) expect((await next.next()).value).toBe('ready');
      // Round by round, both at once: each round's two results must both be on the record after it.
      for (let round = 1; round <= ROUNDS; round++) {
        for (const child of children) child.stdin.write(`${round}\n`);
        for (const next of lines) expect((await next.next()).value).toBe(`done ${round}`);
        const records = JSON.parse(await readFile(join(dir, 'records.json'), 'utf8')) as Record<
          string,
          BackupRecord
        >;
        const result = { verifiedAt: String(round), verifyResult: 'ok' };
        expect(records[A]?.remoteVerify, `round ${round}`).toEqual({ sftp: result, s3: result });
      }
    } finally {
      for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 120_000);
});
