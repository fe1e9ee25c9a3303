// After `keys import`, a box's own backups from before it are another installation's, and the newest
// everywhere: `gem-backup restore` refuses one unless --other-installation asks for it, with one line
// naming both installations by their prefixes and what to do; and only a restore of a backup the
// imported installation made lifts the hold on Cloud DR pushes (a push would otherwise replace that
// installation's cloud copy with this box's own data). Real CLI (the bundle), PostgreSQL and the Worker.
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildKeysExport, Keyring } from '../../agent/keys/keyring';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment } from '../services/agent';
import { DR_ENROLLMENT_TOKEN, type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { type BuiltCli, buildCli } from './built-cli';

let pg: TestPostgres;
let cloud: DrCloud;
let built: BuiltCli;
const dataDirs: string[] = [];

/** A new installation (data dir, seeded database) with Cloud DR set up, and its CLI (`run`: any exit code). */
async function installation(prefix: string) {
  const { dataDir, env: seeded } = await seededEnvironment(pg, prefix);
  dataDirs.push(dataDir);
  const env = {
    ...seeded,
    GEM_DR_URL: cloud.url,
    GEM_DR_ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN,
    NODE_ENV: 'test',
  };
  const id = (await Keyring.load(join(dataDir, 'keyring.json'))).installationId;
  const run = (...args: string[]) =>
    runProcess(process.execPath, [built.path, ...args], { env, cwd: dataDir });
  const cli = async (...args: string[]) => {
    const res = await run(...args);
    expect(res.code, `${args.join(' ')}: ${res.stderr}`).toBe(0);
    return res;
  };
  const backups = async () =>
    (JSON.parse((await cli('list', '--json')).stdout) as { filename: string }[]).map((b) => b.filename);
  const held = async () => /^pushes held: /m.test((await cli('dr', 'status')).stdout);
  return { dataDir, id, run, cli, backups, held };
}

const created = (res: { stdout: string }) => /created (gem-backup-\S+\.tar\.gz)/.exec(res.stdout)![1]!;
const oneLine = (text: string) =>
  text
    .trim()
    .split('\n')
    .filter((l) => !/NodeVersionSupportWarning|^\s/.test(l))
    .join(' ');

beforeAll(async () => {
  ({ pg, cloud, built } = await startAll({ pg: startPostgres, cloud: startDrCloud, built: buildCli }));
});
afterAll(async () => {
  await cloud?.dispose();
  await pg?.stop();
  await built?.remove();
  for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
});

describe('gem-backup restore of a backup another installation made', () => {
  it("after a keys import refuses the box's own earlier backup unless asked for; only the imported installation's backup lifts the push hold", async () => {
    const [box, old] = await Promise.all([
      installation('gem-cli-other-box-'),
      installation('gem-cli-other-old-'),
    ]);
    const [own, theirs] = [created(await box.cli('create')), created(await old.cli('create'))];
    // Before any import a box restores its own backups as always (no flag).
    expect((await box.cli('restore', own, '--yes')).stdout).toContain(`restored ${own}`);

    const keys = join(box.dataDir, 'old-keys.json');
    const oldKeyring = await Keyring.load(join(old.dataDir, 'keyring.json'));
    await writeFile(keys, await buildKeysExport(oldKeyring.toFile()), { mode: 0o600 });
    await box.cli('keys', 'import', keys);
    expect(await box.held()).toBe(true);
    const before = await box.backups();
    // The list marks it, as `list --from` marks such a copy offsite.
    expect((await box.cli('list')).stdout).toMatch(
      new RegExp(`^${own}  .*  another installation \\(${box.id.slice(0, 8)}…\\)$`, 'm'),
    );

    // Its own backup (now another installation's): refused, one line, nothing changed (no safety backup).
    const refused = await box.run('restore', own, '--yes');
    expect(refused.code).toBe(1);
    const line = oneLine(refused.stderr);
    expect(line).toBe(
      `gem-backup: this backup was made by installation ${box.id.slice(0, 8)}…, not by installation ${old.id.slice(0, 8)}… whose keys are active here, so nothing was changed: restore the newest copy not marked 'another installation' instead, or, if you do want this one's data here, ask for it explicitly (\`gem-backup restore ${own} --yes --other-installation\`)`,
    );
    expect(line).not.toContain(box.id);
    expect(line).not.toContain(old.id);
    expect(await box.backups()).toEqual(before);

    // Asked for: restored; but the data is still this box's own, so pushes stay held.
    const forced = await box.cli('restore', own, '--yes', '--other-installation');
    expect(forced.stdout).toContain(`restored ${own}`);
    expect(await box.held()).toBe(true);
    const push = await box.run('dr', 'push');
    expect(push.code).toBe(1);
    expect(oneLine(push.stderr)).toMatch(/none of its backups has been restored here since/);
    expect(await cloud.listSlotObjects(old.id)).toEqual([]);

    // The imported installation's backup (by its path): no flag needed, and the hold ends.
    const restored = await box.cli('restore', join(old.dataDir, 'backups', theirs), '--yes');
    expect(restored.stdout).toContain(`restored ${theirs}`);
    expect(await box.held()).toBe(false);
  });
});
