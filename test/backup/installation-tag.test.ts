// A backup file names its installation by tag (FORMAT.md "Version 2"), never by its id: the id is the
// DR recovery credential, so one offsite copy must not give it away. Version-1 files (the id in clear)
// still list, verify, restore and are told apart as this installation's or another's. Real agent,
// PostgreSQL and backup files.
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newestGoodBackup } from '../../agent/backup/catalog';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { startVerify } from '../../agent/backup/operations';
import { readBackup } from '../../agent/backup/reader';
import { standaloneContext } from '../../agent/jobs/runner';
import { Keyring } from '../../agent/keys/keyring';
import { silentLogger } from '../../agent/log';
import { startRestore } from '../../agent/restore/restore';
import {
  generateFileKey,
  installationTag,
  newCore,
  openStream,
  sealStream,
  tryParseHeader,
  unwrapWithMasterKeys,
  wrapForMasterKey,
} from '../../shared/envelope';
import { backupNow } from '../restore/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let elsewhere: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  elsewhere = await mkdtemp(join(tmpdir(), 'gem-tag-other-'));
}, 60_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (elsewhere) await rm(elsewhere, { recursive: true, force: true });
});

/** Every way the id could sit in a file: its hex (either case) and its 16 bytes. */
function idTraces(id: string): Buffer[] {
  return [Buffer.from(id), Buffer.from(id.toUpperCase()), Buffer.from(id, 'hex')];
}

function expectNoIdIn(file: Buffer, id: string): void {
  for (const trace of idTraces(id)) expect(file.indexOf(trace), `found ${trace.toString('hex')}`).toBe(-1);
}

/**
 * Rewrites the backup at `path` as an older agent wrote it: format version 1, the installation id in
 * its core (the envelope's version-1 writer, kept for this). Same plaintext, same core fields.
 */
async function rewriteAsVersion1(path: string, keyring: Keyring): Promise<void> {
  const { header, plaintext } = await openStream(new Blob([await readFile(path)]).stream(), {
    resolveFileKey: (h) => unwrapWithMasterKeys(h.stanzas, keyring.masterKeys),
  });
  const { createdAt, chunkSize, meta } = header.core;
  const core = newCore({ installationId: keyring.installationId, createdAt, chunkSize, meta, version: 1 });
  const fileKey = generateFileKey();
  const stanzas = [await wrapForMasterKey(fileKey, keyring.activeKey)];
  const sealed = Buffer.from(
    await new Response(sealStream(plaintext, { core, stanzas, fileKey })).arrayBuffer(),
  );
  await writeFile(`${path}.v1`, sealed);
  await rename(`${path}.v1`, path);
}

async function listed(): Promise<Record<string, unknown>[]> {
  const res = await t.request('/api/v1/backups');
  expect(res.status).toBe(200);
  const text = await res.text();
  expectNoIdIn(Buffer.from(text), t.agent.keyring.installationId);
  return JSON.parse(text);
}

async function succeeded(job: Promise<{ id: string }>) {
  const done = await t.agent.jobs.waitFor((await job).id);
  expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
  return done;
}

describe('the installation in a backup file', () => {
  let v2: string;
  let v1: string;
  let firstId: string;

  it('a backup made now holds no trace of the installation id: a version-2 header with its tag and prefix; the manifest inside keeps the id', async () => {
    firstId = t.agent.keyring.installationId;
    v2 = await backupNow(t.agent, 'v2');
    const file = await readFile(t.agent.catalog.pathOf(v2));
    expectNoIdIn(file, firstId);
    expect(file.subarray(0, 8)).toEqual(Buffer.from('GEMBKP\x00\x02', 'latin1'));
    const { core } = tryParseHeader(file)!.header;
    expect(core).toMatchObject({
      version: 2,
      installationTag: installationTag(firstId),
      installationPrefix: firstId.slice(0, 8),
    });
    expect(core.installationId).toBeUndefined();
    const { manifest } = await readBackup(t.agent.catalog.pathOf(v2), { keys: t.agent.keyring.masterKeys });
    expect(manifest.installationId).toBe(firstId);

    const entry = (await listed()).find((b) => b.filename === v2);
    expect(entry).toMatchObject({
      installation: firstId.slice(0, 8),
      installationTag: installationTag(firstId),
      ofThisInstallation: true,
    });
    expect(entry).not.toHaveProperty('installationId');
  });

  it("a version-1 backup (the id in clear) still lists, counts, verifies and restores as this installation's", async () => {
    v1 = await backupNow(t.agent, 'v1');
    await rewriteAsVersion1(t.agent.catalog.pathOf(v1), t.agent.keyring);
    const file = await readFile(t.agent.catalog.pathOf(v1));
    expect(file.subarray(0, 8)).toEqual(Buffer.from('GEMBKP\x00\x01', 'latin1'));
    expect(file.includes(Buffer.from(firstId))).toBe(true);

    expect((await listed()).find((b) => b.filename === v1)).toMatchObject({
      installation: firstId.slice(0, 8),
      installationTag: installationTag(firstId),
      ofThisInstallation: true,
    });
    const list = await t.agent.catalog.list();
    expect(newestGoodBackup(list, (tag, keyIds) => t.agent.keyring.owns(tag, keyIds))?.filename).toBe(v1);
    await succeeded(startVerify(t.agent, v1));
    expect((await t.agent.catalog.info(v1)).verifyResult).toBe('ok');
    await succeeded(startRestore(t.agent, v1, { skipSafetyBackup: true }));
  });

  it("another installation's backup, then a keys import: each side told apart by tag, v1 and v2 alike; a restore of the box's own earlier backups is refused by prefix", async () => {
    const other = await Keyring.loadOrCreate(join(elsewhere, 'keyring.json'));
    const foreign = await createBackup(
      backupDeps(t.agent, { keyring: other }),
      standaloneContext(silentLogger),
      {
        kind: 'manual',
      },
    );
    expectNoIdIn(await readFile(t.agent.catalog.pathOf(foreign.filename)), other.installationId);
    const byName = async () => new Map((await listed()).map((b) => [b.filename, b]));
    let entries = await byName();
    expect(entries.get(foreign.filename)).toMatchObject({
      installation: other.installationId.slice(0, 8),
      ofThisInstallation: false,
    });
    const owns = (name: string) => {
      const b = entries.get(name)!;
      return t.agent.keyring.owns(b.installationTag as string, b.keyIds as string[]);
    };
    expect(owns(foreign.filename)).toBe(false);
    expect([owns(v1), owns(v2)]).toEqual([true, true]);

    await t.agent.keyring.importKeys(other.toFile());
    entries = await byName();
    expect(entries.get(foreign.filename)).toMatchObject({ ofThisInstallation: true });
    for (const name of [v1, v2]) {
      expect(entries.get(name)).toMatchObject({
        installation: firstId.slice(0, 8),
        ofThisInstallation: false,
      });
      // Still ours (an identity before the import, a key we hold): neither foreign to retention nor health.
      expect(owns(name)).toBe(true);
      const refused = await t.agent.jobs.waitFor((await startRestore(t.agent, name)).id);
      expect(refused.error?.code).toBe('conflict');
      expect(refused.error?.message).toContain(
        `made by installation ${firstId.slice(0, 8)}…, not by installation ${other.installationId.slice(0, 8)}…`,
      );
    }
    await succeeded(startRestore(t.agent, v2, { otherInstallation: true, skipSafetyBackup: true }));
  });
});
