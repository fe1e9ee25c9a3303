// SMB refuses a taken name in the upload's own rename (no look before it, so no window for another
// controller's upload of the same name to slip in), and our own earlier copy is still replaced. Real smbd.
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { createdAtFromName, fileSource, uploadBackup } from '../../agent/offsite/transfer';
import { SmbProvider } from '../../agent/providers/smb';
import { isStorageError } from '../../shared/storage/index';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SmbdService, smbOptionsFor, startSmbd } from '../services/smbd';
import { startAll } from '../services/start-all';
import { filenameOf, foreignBackup } from './helpers';

let pg: TestPostgres;
let smbd: SmbdService;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, smbd } = await startAll({ pg: startPostgres, smbd: startSmbd }));
  t = await startTestAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), smbd?.stop()]);
});

const provider = (folder: string) => new SmbProvider(smbOptionsFor(smbd, `/${folder}/`));

/** A local backup made as at `when`, so of a name known beforehand. */
async function backupAt(when: Date): Promise<string> {
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent, { kind: 'manual', now: when })).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return filenameOf(job);
}

/** Another installation's backup under `name` in `folder` of the share; its bytes. */
async function theirs(folder: string, name: string): Promise<Buffer> {
  await mkdir(join(smbd.root, folder), { recursive: true });
  await chmod(join(smbd.root, folder), 0o777);
  const bytes = await foreignBackup(createdAtFromName(name)!);
  await writeFile(join(smbd.root, folder, name), bytes, { mode: 0o666 });
  return bytes;
}

describe('SMB: a taken name is refused by the rename itself', () => {
  it('an exclusive put leaves the object under the name as it is, and no temp file', async () => {
    const name = await backupAt(new Date(Date.UTC(2026, 2, 1, 2)));
    const before = await theirs('exclusive', name);
    const path = t.agent.catalog.pathOf(name);
    const { size } = await t.agent.catalog.info(name);
    const error = await provider('exclusive')
      .put(name, fileSource(path, size, (await t.agent.catalog.knownSha256(name))!), { exclusive: true })
      .catch((e: unknown) => e);
    expect(isStorageError(error, 'exists'), String(error)).toBe(true);
    expect(await readFile(join(smbd.root, 'exclusive', name))).toEqual(before);
    expect(await readdir(join(smbd.root, 'exclusive'))).toEqual([name]);
  });

  it("an upload over another controller's backup of the same name fails and leaves it; over our own copy it replaces", async () => {
    const name = await backupAt(new Date(Date.UTC(2026, 2, 2, 2)));
    const before = await theirs('shared', name);
    await expect(uploadBackup(t.agent, provider('shared'), name)).rejects.toThrow(
      `a different backup named ${name} is already there`,
    );
    expect(await readFile(join(smbd.root, 'shared', name))).toEqual(before);

    // Our own copy, sent twice: the second finds the name taken by the same backup and replaces it.
    await uploadBackup(t.agent, provider('own'), name);
    const again = await uploadBackup(t.agent, provider('own'), name);
    expect(again.size).toBe((await t.agent.catalog.info(name)).size);
    expect(await readFile(join(smbd.root, 'own', name))).toEqual(
      await readFile(t.agent.catalog.pathOf(name)),
    );
  });
});
