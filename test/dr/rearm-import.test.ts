// A key import by the CLI beside the running agent changes the installation id: the running agent's
// nightly Cloud DR timer follows the new id's offset at once, not at the next start; a timer of the
// old id that fires meanwhile hands over to the new slot (or runs now if tonight's new slot passed).
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nextNightlyRun, nightlyOffsetSeconds } from '../../agent/dr/schedule';
import { type DrService, drServiceFor } from '../../agent/dr/service';
import { buildKeysExport, createKeyringFile, type KeyringFile } from '../../agent/keys/keyring';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment, startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let env: NodeJS.ProcessEnv;
let dataDir: string;
let dr: DrService;
/** The clock the DR service reads (the timers themselves run on the real one). */
let clock: Date | undefined;

beforeAll(async () => {
  pg = await startPostgres();
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-dr-rearm-'));
  t = await startTestAgent(pg, { dataDir, databaseUrl: env.DATABASE_URL! });
  dr = drServiceFor(t.agent, { now: () => clock ?? new Date() });
  await dr.start();
});
afterAll(async () => {
  dr?.stop();
  await t?.close();
  await pg?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

/** A keyring of another installation whose nightly offset differs from `than`'s. */
function otherInstallation(than: string): KeyringFile {
  for (;;) {
    const file = createKeyringFile();
    if (nightlyOffsetSeconds(file.installationId) !== nightlyOffsetSeconds(than)) return file;
  }
}

/** `gem-backup keys import` of `keyring`'s export, in its own process beside the running agent. */
async function cliImport(keyring: KeyringFile, name: string): Promise<void> {
  const file = join(dataDir, name);
  await writeFile(file, await buildKeysExport(keyring), { mode: 0o600 });
  const res = await runProcess(process.execPath, ['bin/gem-backup.js', 'keys', 'import', file], {
    env,
    cwd: process.cwd(),
  });
  expect(res.stderr).toBe('');
  expect(res.code).toBe(0);
  expect(res.stdout).toContain(`installation ${keyring.installationId.slice(0, 8)}…`);
}

/** Lets the keyring's deferred identity listeners run. */
const listenersRan = () => new Promise<void>((resolve) => setImmediate(resolve));

const tz = () => t.agent.settings.get().autoBackup.timezone;

describe('the nightly Cloud DR timer after a key import', () => {
  it('follows the imported installation id as soon as the keyring notices the new file', async () => {
    const before = t.agent.keyring.installationId;
    expect(dr.nextNightlyAt()).toEqual(nextNightlyRun(before, tz()));

    const imported = otherInstallation(before);
    await cliImport(imported, 'import-1.json');
    // The keyring notices the file another process wrote at its next use.
    expect(t.agent.keyring.installationId).toBe(imported.installationId);
    await listenersRan();
    expect(dr.nextNightlyAt()).toEqual(nextNightlyRun(imported.installationId, tz()));
    expect(dr.nextNightlyAt()).not.toEqual(nextNightlyRun(before, tz()));
  });

  it("an old id's timer firing before the keyring noticed defers to the new slot, or runs if it passed", async () => {
    const before = t.agent.keyring.installationId;
    const staleTimer = { installationId: before, nextRun: () => null, stop: () => {} };

    const first = otherInstallation(before);
    await cliImport(first, 'import-2.json');
    // Nothing read the keyring since: the fire itself notices. Tonight's new slot is a minute ahead.
    const slot = nextNightlyRun(first.installationId, tz())!;
    clock = new Date(slot.getTime() - 60_000);
    expect(await dr.onNightlyFired(staleTimer)).toBe('deferred');
    await listenersRan();
    expect(dr.nextNightlyAt()).toEqual(slot);

    const second = otherInstallation(first.installationId);
    await cliImport(second, 'import-3.json');
    // Tonight's new slot passed a minute ago: the push runs now (DR is off here, so it does nothing).
    const passed = nextNightlyRun(second.installationId, tz())!;
    clock = new Date(passed.getTime() + 60_000);
    expect(await dr.onNightlyFired({ ...staleTimer, installationId: first.installationId })).toBe('ran');
    await listenersRan();
    expect(dr.nextNightlyAt()).toEqual(passed);
    clock = undefined;
  });
});

describe('a key import between the new slot and the old one tonight', () => {
  it('pushes now instead of skipping the night', async () => {
    // Ours must have a slot late in the hour, the imported one a slot at least 2 minutes earlier.
    let late = otherInstallation(t.agent.keyring.installationId);
    while (nightlyOffsetSeconds(late.installationId) < 1800) late = otherInstallation(late.installationId);
    await t.agent.keyring.importKeys(late);
    await listenersRan();
    let early = otherInstallation(late.installationId);
    while (nightlyOffsetSeconds(early.installationId) + 120 >= nightlyOffsetSeconds(late.installationId)) {
      early = otherInstallation(early.installationId);
    }
    const oldSlot = nextNightlyRun(late.installationId, tz())!;
    const newSlot = new Date(
      oldSlot.getTime() -
        (nightlyOffsetSeconds(late.installationId) - nightlyOffsetSeconds(early.installationId)) * 1000,
    );
    // Tonight, after the new id's slot and before the old id's: without a push now, none until tomorrow.
    clock = new Date((oldSlot.getTime() + newSlot.getTime()) / 2);
    const pushes: Date[] = [];
    const service = dr as unknown as { runNightly: () => Promise<void> };
    const runNightly = service.runNightly;
    service.runNightly = async () => {
      pushes.push(clock!);
    };
    try {
      await cliImport(early, 'import-4.json');
      expect(t.agent.keyring.installationId).toBe(early.installationId);
      await listenersRan();
      expect(pushes).toEqual([clock]);
      // The timer now follows the new id: its next slot is tomorrow's.
      expect(dr.nextNightlyAt()).toEqual(nextNightlyRun(early.installationId, tz()));

      // Before 03:00, an import whose new slot is more than an hour ahead (but tonight) only moves the
      // timer: the old slot being due within the hour does not make the new one passed.
      let later = otherInstallation(early.installationId);
      while (nightlyOffsetSeconds(later.installationId) <= nightlyOffsetSeconds(early.installationId) + 120) {
        later = otherInstallation(later.installationId);
      }
      const laterSlot = nextNightlyRun(later.installationId, tz(), clock)!;
      clock = new Date(laterSlot.getTime() - 61 * 60_000);
      expect(nextNightlyRun(early.installationId, tz(), clock)!.getTime() - clock.getTime()).toBeLessThan(
        3600_000,
      );
      await cliImport(later, 'import-5.json');
      expect(t.agent.keyring.installationId).toBe(later.installationId);
      await listenersRan();
      expect(pushes).toHaveLength(1);
      expect(dr.nextNightlyAt()).toEqual(nextNightlyRun(later.installationId, tz()));
    } finally {
      service.runNightly = runNightly;
      clock = undefined;
    }
  });
});
