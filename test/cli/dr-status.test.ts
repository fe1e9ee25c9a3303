// `gem-backup dr status` for an operator: plain lines (enrolled or not, the installation by its first 8
// characters only, the last push and how it ended, the cloud copy, a hold on pushes and what to do about
// it, the next push), the machine form with --json, and the whole installation id (the DR recovery
// credential) only with --show-installation-id. Against the real Worker under miniflare.
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DrStateStore } from '../../agent/dr/state';
import { UnfinishedRecoveryFile } from '../../agent/dr/unfinished';
import { buildKeysExport, createKeyringFile, Keyring } from '../../agent/keys/keyring';
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

/** A new installation (data dir, seeded database) with Cloud DR set up, and its CLI. */
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
  const cli = async (...args: string[]) => {
    const res = await runProcess(process.execPath, [built.path, ...args], { env, cwd: dataDir });
    expect(res.code, `${args.join(' ')}: ${res.stderr}`).toBe(0);
    return res;
  };
  return { dataDir, env, id, cli };
}

/** The lines of `dr status` by their label ("last push: …" under "last push"). */
function byLabel(stdout: string): Record<string, string> {
  const lines: Record<string, string> = {};
  for (const line of stdout.trimEnd().split('\n')) {
    const at = line.indexOf(': ');
    expect(at, line).toBeGreaterThan(0);
    lines[line.slice(0, at)] = line.slice(at + 2);
  }
  return lines;
}

beforeAll(async () => {
  ({ pg, cloud, built } = await startAll({ pg: startPostgres, cloud: startDrCloud, built: buildCli }));
});
afterAll(async () => {
  await cloud?.dispose();
  await pg?.stop();
  await built?.remove();
  for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
});

describe('gem-backup dr status', () => {
  it('prints plain lines, before and after a push; the whole installation id only when asked for', async () => {
    const box = await installation('gem-cli-dr-status-');
    const prefix = box.id.slice(0, 8);

    const before = await box.cli('dr', 'status');
    expect(before.stdout).not.toContain(box.id);
    expect(before.stdout).not.toMatch(/^\s*[{[]/);
    const first = byLabel(before.stdout);
    expect(first['Cloud DR']).toBe(`on, endpoint ${cloud.url}`);
    expect(first.installation).toBe(
      `${prefix}… (the whole id recovers this installation from the DR cloud: keep it off this box, with the keys file; \`gem-backup dr status --show-installation-id\` prints it)`,
    );
    expect(first.enrolled).toBe('no: the first push enrolls this installation with the DR cloud');
    expect(first['last push']).toBe('none from this data dir');
    expect(first['cloud copy']).toBe('none pushed from this data dir');
    expect(first['next push']).toMatch(
      /^in (\d+ (min|h)|less than a minute) \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z, the nightly run\)$/,
    );
    expect(Object.keys(first)).not.toContain('recovery');
    expect(Object.keys(first)).not.toContain('pushes held');

    await box.cli('dr', 'push');
    const after = await box.cli('dr', 'status');
    expect(after.stdout).not.toContain(box.id);
    const pushed = byLabel(after.stdout);
    expect(pushed.enrolled).toMatch(/^yes, since \d{4}-\d\d-\d\dT/);
    expect(pushed['last push']).toMatch(
      /^succeeded less than a minute ago \(\S+, started by hand\): gem-backup-\S+\.tar\.gz$/,
    );
    const backup = /: (gem-backup-\S+\.tar\.gz)$/.exec(pushed['last push']!)![1]!;
    expect(pushed['cloud copy']).toMatch(
      new RegExp(
        `^${backup.replaceAll('.', '\\.')}, made less than a minute ago \\(\\S+Z\\), \\d+\\.\\d (KiB|MiB), pushed less than a minute ago$`,
      ),
    );

    // --json: the machine form, without the whole id unless asked for.
    const json = await box.cli('dr', 'status', '--json');
    expect(json.stdout).not.toContain(box.id);
    const machine = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(machine).toMatchObject({
      enabled: true,
      configured: true,
      installationIdPrefix: prefix,
      enrolled: true,
      awaitingRestore: false,
      unfinishedRecovery: null,
      lastPush: { outcome: 'succeeded', backup },
      lastSuccess: { outcome: 'succeeded', backup },
    });
    expect(machine).not.toHaveProperty('installationId');
    const full = JSON.parse((await box.cli('dr', 'status', '--json', '--show-installation-id')).stdout);
    expect(full).toMatchObject({ installationId: box.id, enrolled: true });

    const shown = byLabel((await box.cli('dr', 'status', '--show-installation-id')).stdout);
    expect(shown.installation).toBe(
      `${box.id} (the DR recovery credential: keep it off this box, with the keys file)`,
    );
  });

  it('says what holds pushes back and what to do: the keys of another installation imported, no restore since', async () => {
    const box = await installation('gem-cli-dr-status-import-');
    const other = createKeyringFile();
    const file = join(box.dataDir, 'old-keys.json');
    await writeFile(file, await buildKeysExport(other), { mode: 0o600 });
    await box.cli('keys', 'import', file);

    const res = await box.cli('dr', 'status');
    expect(res.stdout).not.toContain(other.installationId);
    const lines = byLabel(res.stdout);
    expect(lines.installation).toMatch(new RegExp(`^${other.installationId.slice(0, 8)}… `));
    expect(lines['pushes held']).toBe(
      "the keys of another installation were imported and none of its backups has been restored here since (a backup another installation made, such as this box's own from before the import, does not count), so the data here is still this box's own: a push would replace that installation's only cloud copy with it. Restore one of its backups first (the page's Offsite list, or `gem-backup restore NAME --from sftp --yes`); if the data here already is that installation's (only the agent's data dir was lost), push once with `gem-backup dr push --data-is-current`",
    );
    expect(lines['next push']).toMatch(/, the nightly run\); skipped while pushes are held \(see above\)$/);
    expect(JSON.parse((await box.cli('dr', 'status', '--json')).stdout)).toMatchObject({
      awaitingRestore: true,
      installationIdPrefix: other.installationId.slice(0, 8),
    });
  });

  it('an unfinished recovery: what to run, with the id by its prefix; a refused push kept in the state shows no id', async () => {
    const box = await installation('gem-cli-dr-status-recovery-');
    // As a recovery that stopped after installing the recovered keys leaves the box: its identity is
    // the recovered one (here the box's own, for the test) and the record says so.
    const startedAt = new Date(Date.now() - 2 * 3600_000).toISOString();
    await new UnfinishedRecoveryFile(join(box.dataDir, 'dr-recovery.json')).write({
      installationId: box.id,
      startedAt,
      previousInstallationId: 'f'.repeat(32),
      previousActiveKeyId: 'k-previous',
    });
    // A push refused inside its job during the recovery keeps the owner's sentence, which names the id.
    await new DrStateStore(join(box.dataDir, 'dr-state.json')).update((s) => {
      s.lastPush = {
        at: new Date(Date.now() - 3600_000).toISOString(),
        trigger: 'manual',
        outcome: 'failed',
        error: { code: 'unprocessable', message: `a recovery of installation ${box.id} did not finish` },
      };
    });

    const res = await box.cli('dr', 'status');
    expect(res.stdout).not.toContain(box.id);
    const prefix = `${box.id.slice(0, 8)}…`;
    const lines = byLabel(res.stdout);
    expect(lines.recovery).toBe(
      `unfinished (started 2 h ago): a recovery from the DR cloud of installation ${prefix} did not finish: run \`gem-backup dr recover --installation-id ID\` again with the whole id (\`gem-backup dr status --show-installation-id\`), or \`gem-backup dr recover --abandon\` to go back to this box's own identity; no push goes until then`,
    );
    expect(lines['last push']).toMatch(
      new RegExp(
        `^failed 1 h ago \\(\\S+, started by hand\\): a recovery of installation ${prefix} did not finish; the cloud copy was not updated$`,
      ),
    );
    expect(lines['next push']).toMatch(/; skipped while pushes are held \(see above\)$/);

    // Asked for, the whole id, and the command to run as it is.
    const shown = byLabel((await box.cli('dr', 'status', '--show-installation-id')).stdout);
    expect(shown.recovery).toContain(`run \`gem-backup dr recover --installation-id ${box.id}\` again`);
    const json = await box.cli('dr', 'status', '--json');
    expect(json.stdout).not.toContain(box.id);
    expect(JSON.parse(json.stdout)).toMatchObject({
      unfinishedRecovery: {
        installationIdPrefix: box.id.slice(0, 8),
        startedAt,
        message: lines
          .recovery!.replace(/^unfinished \(started 2 h ago\): /, '')
          .replace(/; no push goes until then$/, ''),
      },
    });
  });

  it('after a recovery from the cloud: the cloud copy is the one recovered, until a push from here replaces it', async () => {
    const lost = await installation('gem-cli-dr-status-lost-');
    await lost.cli('dr', 'push');
    const pushed = JSON.parse((await lost.cli('dr', 'status', '--json')).stdout).lastSuccess as {
      createdAt: string;
    };
    const box = await installation('gem-cli-dr-status-new-');
    await box.cli('dr', 'recover', '--installation-id', lost.id);

    const res = await box.cli('dr', 'status');
    expect(res.stdout).not.toContain(lost.id);
    const lines = byLabel(res.stdout);
    expect(lines.installation).toMatch(new RegExp(`^${lost.id.slice(0, 8)}… `));
    expect(lines['last push']).toBe('none from this data dir (it was recovered from the cloud)');
    expect(lines['cloud copy']).toMatch(
      new RegExp(
        `^the backup this box was recovered from less than a minute ago \\(here gem-backup-\\S+\\.tar\\.gz\\), made less than a minute ago \\(${pushed.createdAt.replaceAll('.', '\\.')}\\); the next push replaces it$`,
      ),
    );
    const machine = JSON.parse((await box.cli('dr', 'status', '--json')).stdout);
    expect(machine.recovered).toMatchObject({ createdAt: pushed.createdAt });
    expect(machine.lastSuccess).toBeNull();

    await box.cli('dr', 'push');
    const after = byLabel((await box.cli('dr', 'status')).stdout);
    expect(after['last push']).toMatch(/^succeeded less than a minute ago /);
    expect(after['cloud copy']).toMatch(/^gem-backup-\S+\.tar\.gz, made .*, pushed less than a minute ago$/);
    expect(JSON.parse((await box.cli('dr', 'status', '--json')).stdout).recovered).toBeNull();
  });

  it('its help names --json and --show-installation-id', async () => {
    const res = await runProcess(process.execPath, [built.path, 'dr', '--help']);
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/^usage: gem-backup dr status \[--json\] +the Cloud DR state/m);
    expect(res.stdout).toMatch(/^ +gem-backup dr status --show-installation-id +the same with the whole/m);
  });
});
