// SFTP operations that follow closely share one SSH connection (a real sshd, reached through a relay that
// counts connections): the headers of many remote backups cost one handshake; a connection the server
// dropped, one left frozen, or one unused for a while is replaced by a new one for the next operation.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { guardStall, readRemoteHeader } from '../../agent/offsite/transfer';
import { type SftpOptions, SftpProvider } from '../../agent/providers/sftp';
import { CHECK_AFTER_IDLE_MS } from '../../agent/providers/shared-connection';
import { isStorageError } from '../../shared/storage/index';
import { foreignBackup, OTHER_INSTALLATION } from '../offsite/helpers';
import { type Relay, startRelay } from '../services/relay';
import { type SshdService, startSshd } from '../services/sshd';
import { within } from '../services/wait';

/** As many as the keys check reads at one destination (HEADERS_READ_PER_DESTINATION). */
const BACKUPS = 20;
const names = Array.from(
  { length: BACKUPS },
  (_, i) => `gem-backup-2026-01-01-0000${String(i).padStart(2, '0')}.tar.gz`,
);
const prefix = OTHER_INSTALLATION.slice(0, 8);

let sshd: SshdService;
let relay: Relay;
beforeAll(async () => {
  sshd = await startSshd();
  relay = await startRelay(sshd.port);
  const folder = join(sshd.root, 'shared');
  await mkdir(folder, { recursive: true });
  for (const name of names)
    await writeFile(join(folder, name), await foreignBackup('2026-01-01T00:00:00.000Z'));
});
afterAll(async () => {
  await relay?.stop();
  await sshd?.stop();
});

function provider(overrides: Partial<SftpOptions> = {}): SftpProvider {
  return new SftpProvider({
    host: relay.host,
    port: relay.port,
    username: sshd.passwordUser.username,
    password: sshd.passwordUser.password,
    remotePath: 'shared',
    hostKeyFingerprint: sshd.hostKeyFingerprint,
    ...overrides,
  });
}

/** Closes `providers`, then waits until the relay holds no connection (theirs ended). */
async function closeAll(...providers: SftpProvider[]): Promise<void> {
  await Promise.all(providers.map((p) => p.close()));
  await relay.closed();
}

/** Reads `name`'s header through `from` and checks it is the backup's. */
async function readsHeader(from: SftpProvider, name: string): Promise<void> {
  expect((await readRemoteHeader(from, name)).core.installationPrefix).toBe(prefix);
}

describe('SFTP operations share one connection', () => {
  it('lists, stats and reads the headers of 20 backups over one SSH connection, ended by close()', async () => {
    const before = relay.connections;
    // Kept far longer than this test may take: only close() ends it in time.
    const sftp = provider({ idleCloseMs: 10 * 60_000 });
    expect((await sftp.list()).map((o) => o.name).sort()).toEqual(names);
    for (const name of names) await readsHeader(sftp, name);
    expect((await sftp.stat(names[0]!)).name).toBe(names[0]);
    // The server's refusal says nothing about the connection: it is kept.
    await expect(sftp.stat('gem-backup-2000-01-01-000000.tar.gz')).rejects.toMatchObject({
      code: 'not_found',
    });
    await readsHeader(sftp, names[1]!);
    expect(relay.connections - before).toBe(1);
    await closeAll(sftp);
  }, 20_000);

  it('never shares a connection between providers of different options', async () => {
    const before = relay.connections;
    const byPassword = provider();
    const byKey = provider({
      username: sshd.keyUser.username,
      password: undefined,
      privateKey: sshd.keyUser.privateKey,
    });
    for (const name of names.slice(0, 3)) {
      await readsHeader(byPassword, name);
      await readsHeader(byKey, name);
    }
    expect(relay.connections - before).toBe(2);
    await closeAll(byPassword, byKey);
  }, 20_000);

  it('ends a connection left unused for idleCloseMs; the next read opens a new one', async () => {
    const before = relay.connections;
    const sftp = provider({ idleCloseMs: 1000 });
    await readsHeader(sftp, names[0]!);
    await readsHeader(sftp, names[1]!);
    expect(relay.connections - before).toBe(1);
    await relay.closed();
    await readsHeader(sftp, names[2]!);
    expect(relay.connections - before).toBe(2);
    await closeAll(sftp);
  }, 20_000);

  it('reads on through a new connection when the server dropped the one it kept', async () => {
    const before = relay.connections;
    const sftp = provider();
    await readsHeader(sftp, names[0]!);
    relay.drop();
    await readsHeader(sftp, names[1]!);
    relay.drop();
    expect((await sftp.list()).length).toBe(BACKUPS);
    expect(relay.connections - before).toBe(3);
    await closeAll(sftp);
  }, 20_000);

  it('leaves a frozen connection to the read that was given up on: the next read opens a new one', async () => {
    // Keepalives (every 10 s, 3 missed) would end the frozen connection only after ~40 s: a read that
    // answers before that did not wait on it.
    const before = relay.connections;
    const sftp = provider({ timeoutMs: 20_000 });
    await readsHeader(sftp, names[0]!);
    relay.freeze();
    const stalled = await guardStall((signal) => readRemoteHeader(sftp, names[1]!, signal), {
      stallTimeoutMs: 300,
    }).catch((error: unknown) => error);
    expect(isStorageError(stalled, 'unreachable')).toBe(true);
    await readsHeader(sftp, names[2]!);
    expect(relay.connections - before).toBe(2);
    relay.drop(); // the frozen one, still waited on by the read given up on
    await closeAll(sftp);
  }, 30_000);

  it('has a connection left unused for a while answer first: one that froze meanwhile is replaced', async () => {
    const before = relay.connections;
    // Kept open far longer than the test: only the check decides whether the kept connection is used.
    const sftp = provider({ timeoutMs: 20_000, idleCloseMs: 10 * 60_000 });
    await readsHeader(sftp, names[0]!);
    await sleep(CHECK_AFTER_IDLE_MS + 500);
    // Idle past the check, but alive: it answers and is used.
    await readsHeader(sftp, names[1]!);
    expect(relay.connections - before).toBe(1);
    await sleep(CHECK_AFTER_IDLE_MS + 500);
    // Frozen while idle (network gone, no reset): keepalives (every 10 s, 3 missed) would end it only after
    // ~40 s, the reads waiting on it all along. Two reads asking at once wait for one check, then read well
    // within that, on one new connection.
    relay.freeze();
    const reads = Promise.all([readsHeader(sftp, names[2]!), readsHeader(sftp, names[3]!)]);
    await within(reads, 15_000, 'the reads after the kept connection froze');
    expect(relay.connections - before).toBe(2);
    relay.drop(); // the frozen one
    await closeAll(sftp);
  }, 30_000);

  it('gives its connection back to a read cancelled while the server answered its stat', async () => {
    const before = relay.connections;
    // Kept far longer than this test may take: only its retirement ends it in time.
    const sftp = provider({ idleCloseMs: 10 * 60_000 });
    await readsHeader(sftp, names[0]!);
    relay.pause();
    const controller = new AbortController();
    const reading = sftp.get(names[1]!, { signal: controller.signal });
    await sleep(300); // its stat is at the server; the answer is held back
    controller.abort();
    relay.resume();
    await expect(reading).rejects.toMatchObject({ code: 'aborted' });
    // Retired by the cancel (it might have been frozen) and no longer held: it ends now, not at close().
    await within(relay.closed(), 5_000, 'the cancelled read to give its connection back');
    await readsHeader(sftp, names[2]!);
    expect(relay.connections - before).toBe(2);
    await closeAll(sftp);
  }, 20_000);
});
