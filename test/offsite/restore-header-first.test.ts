// A restore from an offsite copy refuses a backup it could not open from the copy's header, before
// downloading the rest (a real sshd behind a relay that counts the bytes the server sends): one made with
// keys this installation lacks, and a file that is no backup, each of 32 MiB, with the errors the full
// download led to before. Nothing is changed, and nothing is left in the work folder.
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createdAtFromName } from '../../agent/offsite/transfer';
import { sftpSection } from '../health/helpers';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type Relay, startRelay } from '../services/relay';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { foreignBackup, runJob, startOffsiteAgent } from './helpers';

const SIZE = 32 * 1024 * 1024;
/** The most a refusal may have read of the copy: a header is a few KiB, read in 256 KiB requests. */
const HEADER_READ_BOUND = 2 * 1024 * 1024;
const withoutKey = 'gem-backup-2026-02-03-040506.tar.gz';
const noBackup = 'gem-backup-2026-02-03-040507.tar.gz';
const otherInstallation = 'gem-backup-2026-02-03-040508.tar.gz';

let pg: TestPostgres;
let sshd: SshdService;
let relay: Relay;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  relay = await startRelay(sshd.port);
  t = await startOffsiteAgent(pg);
  const folder = join(sshd.root, 'refused');
  await mkdir(folder, { recursive: true });
  await writeFile(
    join(folder, withoutKey),
    await foreignBackup(createdAtFromName(withoutKey)!, undefined, SIZE),
  );
  await writeFile(join(folder, noBackup), randomBytes(SIZE));
  // Another installation's, sealed with a key this one holds (its own from before a keys import, say).
  await writeFile(
    join(folder, otherInstallation),
    await foreignBackup(createdAtFromName(otherInstallation)!, undefined, SIZE, t.agent.keyring.activeKey),
  );
  await t.agent.settings.update({
    offsite: { sftp: { ...sftpSection(sshd, 'refused'), port: relay.port } },
  });
}, 120_000);
afterAll(async () => {
  await t?.close();
  await relay?.stop();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

/** Restores `name` from the SFTP copy; returns the failed job's error and the bytes the server sent for it. */
async function refusedRestore(name: string, body: Record<string, unknown> = {}) {
  const before = relay.bytesFromServer;
  const catalog = await t.agent.catalog.list();
  const job = await runJob(t, 'POST', `/offsite/sftp/backups/${name}/restore`, { confirm: name, ...body });
  expect(job.state).toBe('failed');
  // Nothing changed: no safety backup, nothing downloaded left in the work folder.
  expect(await t.agent.catalog.list()).toEqual(catalog);
  expect((await readdir(t.agent.paths.work).catch(() => [])).filter((n) => n.includes('offsite'))).toEqual(
    [],
  );
  return { error: job.error, read: relay.bytesFromServer - before };
}

describe('a restore from an offsite copy it could not open', () => {
  it('refuses a backup made with keys this installation lacks after reading its header', async () => {
    const { error, read } = await refusedRestore(withoutKey);
    expect(error?.code).toBe('no_key');
    expect(error?.message).toMatch(
      /^this backup was made with key mk-[0-9a-f]{16}; import that installation's keys file$/,
    );
    expect(read).toBeLessThan(HEADER_READ_BOUND);
  });

  it("refuses another installation's backup, unless asked for, after reading its header", async () => {
    const { error, read } = await refusedRestore(otherInstallation);
    expect(error?.code).toBe('conflict');
    expect(error?.message).toMatch(
      /^this backup was made by installation [0-9a-f]{8}…, not by installation /,
    );
    expect(read).toBeLessThan(HEADER_READ_BOUND);
    // Asked for: downloaded whole, and refused only by the restore's own read (its payload is no archive).
    const asked = await refusedRestore(otherInstallation, { otherInstallation: true });
    expect(asked.error?.code).not.toBe('conflict');
    expect(asked.read).toBeGreaterThan(SIZE);
  });

  it('refuses a file that is not a backup after reading its first bytes', async () => {
    const { error, read } = await refusedRestore(noBackup);
    expect(error?.code).toBe('not_a_backup');
    expect(error?.message).toBe('not a GEM backup file: it does not start with the GEM backup signature');
    expect(read).toBeLessThan(HEADER_READ_BOUND);
  });
});
