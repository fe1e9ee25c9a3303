// A settings save never silently overwrites a change made elsewhere: the GET's ETag, a PUT's If-Match, 412 when stale.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { settingsModule } from '../../agent/http/routes/settings';
import type { Job } from '../../agent/jobs/runner';
import { createLogger } from '../../agent/log';
import { SettingsService } from '../../agent/settings/service';
import type { SettingsPutResponse, SettingsView } from '../../shared/api/settings';
import { runRestore } from '../restore/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

/** A strong entity tag holding a revision. */
const TAG = /^"[A-Za-z0-9_-]{22}"$/;

let pg: TestPostgres;
let t: TestAgent;

/** The GET's body and ETag. */
async function get(): Promise<{ view: SettingsView; etag: string }> {
  const response = await t.request('/api/v1/settings');
  expect(response.status).toBe(200);
  return { view: (await response.json()) as SettingsView, etag: response.headers.get('etag') ?? '' };
}

function put(body: unknown, ifMatch?: string): Promise<Response> {
  return t.request('/api/v1/settings', {
    method: 'PUT',
    headers: {
      'content-type': 'application/json',
      ...(ifMatch === undefined ? {} : { 'if-match': ifMatch }),
    },
    body: JSON.stringify(body),
  });
}

const retention = (days: number) => ({ maintenance: { enabled: false, retentionDays: days } });
const keepBackups = (maxBackups: number) => ({
  autoBackup: { enabled: true, schedule: 'daily', maxBackups },
});

/** Counts the listeners' calls while `fn` runs. */
async function listenerCalls(fn: () => Promise<void>): Promise<number> {
  let calls = 0;
  const stop = t.agent.settings.subscribe(() => {
    calls++;
  });
  try {
    await fn();
  } finally {
    stop();
  }
  return calls;
}

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule] });
}, 120_000);
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('settings revision (ETag / If-Match)', () => {
  it('GET names the saved revision in a strong ETag and in the body', async () => {
    const { view, etag } = await get();
    expect(etag).toMatch(TAG);
    expect(etag).toBe(`"${view.revision}"`);
    // Nothing changed in between: the same revision again.
    expect((await get()).etag).toBe(etag);
  });

  it('refuses a PUT whose If-Match is stale with 412 settings_changed: nothing saved, no listener told', async () => {
    const { etag: stale } = await get();
    // Another writer (another tab, a script) saves meanwhile.
    const other = await put(retention(111));
    expect(other.status).toBe(200);
    const afterOther = other.headers.get('etag');

    let answer: Response | undefined;
    const calls = await listenerCalls(async () => {
      answer = await put({ ...retention(222), ...keepBackups(5) }, stale);
    });
    expect(answer!.status).toBe(412);
    const error = ((await answer!.json()) as { error: { code: string; message: string } }).error;
    expect(error.code).toBe('settings_changed');
    expect(error.message).toMatch(/changed elsewhere since you loaded them: reload, check, and save again/);
    expect(answer!.headers.get('etag')).toBe(afterOther);
    expect(calls).toBe(0);

    // The other writer's value stands; none of the refused PUT was saved.
    const { view, etag } = await get();
    expect(view.maintenance.retentionDays).toBe(111);
    expect(view.autoBackup.maxBackups).not.toBe(5);
    expect(etag).toBe(afterOther);
    expect(t.agent.settings.get().maintenance.retentionDays).toBe(111);
  });

  it('saves a PUT whose If-Match is current and answers with a new ETag', async () => {
    const { etag } = await get();
    const answer = await put(retention(333), etag);
    expect(answer.status).toBe(200);
    const body = (await answer.json()) as SettingsPutResponse;
    const next = answer.headers.get('etag');
    expect(next).toMatch(TAG);
    expect(next).not.toBe(etag);
    expect(next).toBe(`"${body.revision}"`);
    expect(body.maintenance.retentionDays).toBe(333);
    expect((await get()).etag).toBe(next);
    // The old tag is stale now: the same save again is refused.
    expect((await put(retention(334), etag)).status).toBe(412);
    // The new one works, given as a list, or unquoted as the body's revision reads.
    expect((await put(retention(335), `"nope", ${next}`)).status).toBe(200);
    expect((await put(retention(336), (await get()).view.revision)).status).toBe(200);
  });

  it('gives every save a new revision, even one that changes nothing', async () => {
    const { etag } = await get();
    expect(etag).toMatch(TAG);
    const same = await put(retention(336), etag);
    expect(same.status).toBe(200);
    expect(same.headers.get('etag')).toMatch(TAG);
    expect(same.headers.get('etag')).not.toBe(etag);
  });

  it('saves a PUT without If-Match (or with *) as before, whatever the revision', async () => {
    const { etag } = await get();
    await put(retention(444));
    const plain = await put(retention(445));
    expect(plain.status).toBe(200);
    expect(plain.headers.get('etag')).not.toBe(etag);
    const star = await put(retention(446), '*');
    expect(star.status).toBe(200);
    expect((await get()).view.maintenance.retentionDays).toBe(446);
    // A weak tag never matches (strong comparison), even for the current revision.
    expect((await put(retention(447), `W/${(await get()).etag}`)).status).toBe(412);
  });

  it('makes an earlier ETag stale when the agent changes the settings itself (SettingsService.change)', async () => {
    const { etag } = await get();
    const changed = await t.agent.settings.change((current) => ({
      ...current,
      maintenance: { ...current.maintenance, retentionDays: 555 },
    }));
    expect(changed?.maintenance.retentionDays).toBe(555);
    const after = await get();
    expect(after.etag).not.toBe(etag);
    const answer = await put(retention(556), etag);
    expect(answer.status).toBe(412);
    expect((await get()).view.maintenance.retentionDays).toBe(555);
    // A change that changes nothing (undefined) saves nothing, so it leaves the revision alone.
    await t.agent.settings.change(() => undefined);
    expect((await get()).etag).toBe(after.etag);
  });

  it('keeps what another process saved (the CLI pinning a host key) and makes an earlier ETag stale', async () => {
    const { etag } = await get();
    // The CLI's own SettingsService on the same database, as `gem-backup list --from sftp` pins a key.
    const cli = await SettingsService.open({
      sql: t.agent.sql,
      keyring: t.agent.keyring,
      log: createLogger({ write: () => {} }),
    });
    const pin = 'SHA256:cliPinnedHostKeyFingerprintAAAAAAAAAAAAAAAA';
    await cli.change((current) => {
      current.offsite.sftp.hostKeyFingerprint = pin;
      current.maintenance.retentionDays = 801;
      return current;
    });
    // The page's form, read before it: its tag is stale, nothing is saved.
    expect((await put(retention(802), etag)).status).toBe(412);
    // The agent now holds the stored settings: the GET shows them, and listeners were told once.
    const now = await get();
    expect(now.etag).toBe(`"${cli.revision}"`);
    expect(now.view.maintenance.retentionDays).toBe(801);
    // A save without a tag (or with the new one) changes the stored settings: the pin stays.
    const calls = await listenerCalls(async () => {
      expect((await put(keepBackups(9))).status).toBe(200);
    });
    expect(calls).toBe(1);
    const after = await SettingsService.open({
      sql: t.agent.sql,
      keyring: t.agent.keyring,
      log: createLogger({ write: () => {} }),
    });
    expect(after.get().offsite.sftp.hostKeyFingerprint).toBe(pin);
    expect(after.get().maintenance.retentionDays).toBe(801);
    expect(after.get().autoBackup.maxBackups).toBe(9);
    // The agent's own changes start from the stored settings too.
    await cli.change((current) => {
      current.maintenance.retentionDays = 803;
      return current;
    });
    await t.agent.settings.change((current) => {
      current.autoBackup.maxBackups = 10;
      return current;
    });
    expect((await get()).view.maintenance.retentionDays).toBe(803);
  });

  it('checks the revision in turn with other saves: of two PUTs with the same If-Match, exactly one saves', async () => {
    const { etag } = await get();
    const [a, b] = await Promise.all([put(retention(601), etag), put(retention(602), etag)]);
    expect([a.status, b.status].sort()).toEqual([200, 412]);
    const winner = a.status === 200 ? 601 : 602;
    expect((await get()).view.maintenance.retentionDays).toBe(winner);
  });

  it('keeps the revision across an agent restart and a restore (it is the stored row’s)', async () => {
    const { etag, view } = await get();
    expect(etag).toMatch(TAG);
    // A restart: a service opened afresh on the same database reads the same revision.
    const reopened = await SettingsService.open({
      sql: t.agent.sql,
      keyring: t.agent.keyring,
      log: createLogger({ write: () => {} }),
    });
    expect(reopened.revision).toBe(view.revision);

    // A restore copies the live settings into the restored database: a tag read before it still saves.
    const created = await t.request('/api/v1/backups', { method: 'POST' });
    const backupJob: Job = await t.agent.jobs.waitFor(((await created.json()) as { jobId: string }).jobId);
    expect(backupJob.error).toBeUndefined();
    const filename = (backupJob.result as { backup: { filename: string } }).backup.filename;
    const restored = await runRestore(t.agent, t.agent.catalog.pathOf(filename), { skipSafetyBackup: true });
    expect(restored.error).toBeUndefined();
    expect((await get()).etag).toBe(etag);
    const afterRestore = await SettingsService.open({
      sql: t.agent.sql,
      keyring: t.agent.keyring,
      log: createLogger({ write: () => {} }),
    });
    expect(afterRestore.revision).toBe(view.revision);
    const answer = await put(retention(701), etag);
    expect(answer.status).toBe(200);
    expect((await get()).view.maintenance.retentionDays).toBe(701);
  }, 120_000);
});
