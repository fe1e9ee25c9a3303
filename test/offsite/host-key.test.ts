// SFTP host-key pinning against real sshd servers: trust on first use, a wrong or changed key refused, nothing written.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { createLogger } from '../../agent/log';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { SettingsService } from '../../agent/settings/service';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { call, FAST } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let sshd: SshdService;
/** A second server: another host key, as a reinstalled or impostor server would show. */
let other: SshdService;

beforeAll(async () => {
  [pg, sshd, other] = await Promise.all([startPostgres(), startSshd(), startSshd()]);
  t = await startTestAgent(pg, { modules: [offsiteModule, settingsModule] });
  offsiteServiceFor(t.agent, FAST);
});
afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop(), other?.stop()]);
});

const sftp = (overrides: Record<string, unknown> = {}) => ({
  enabled: true,
  host: sshd.host,
  port: sshd.port,
  username: sshd.passwordUser.username,
  remotePath: 'pinned/gem',
  auth: { password: sshd.passwordUser.password },
  ...overrides,
});

async function save(section: Record<string, unknown>) {
  const res = await call(t, 'PUT', '/settings', { offsite: { sftp: section } });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
}

async function savedPin(): Promise<string | undefined> {
  const res = await call(t, 'GET', '/settings');
  expect(res.status).toBe(200);
  return res.body.offsite.sftp.hostKeyFingerprint;
}

describe('SFTP host-key pinning', () => {
  it('refuses a saved fingerprint that is not the server key, writing nothing', async () => {
    expect(other.hostKeyFingerprint).not.toBe(sshd.hostKeyFingerprint);
    await save(sftp({ remotePath: 'wrong-pin/gem', hostKeyFingerprint: other.hostKeyFingerprint }));
    const res = await call(t, 'POST', '/offsite/sftp/test');
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ ok: false, details: { code: 'auth_failed', step: 'connect' } });
    expect(res.body.message).toMatch(/identity changed/);
    expect(existsSync(join(sshd.root, 'wrong-pin'))).toBe(false);
    expect(await savedPin()).toBe(other.hostKeyFingerprint);
  });

  it('records the server key on the first successful Test Connection, then refuses a changed key', async () => {
    await save(sftp());
    expect(await savedPin()).toBeUndefined();
    const first = await call(t, 'POST', '/offsite/sftp/test');
    expect(first.body.ok, first.body.message).toBe(true);
    expect(first.body.details.hostKeyFingerprint).toBe(sshd.hostKeyFingerprint);
    expect(await savedPin()).toBe(sshd.hostKeyFingerprint);
    expect(t.agent.settings.get().offsite.sftp.hostKeyFingerprint).toBe(sshd.hostKeyFingerprint);
    // Pinned now: the same server still passes.
    const again = await call(t, 'POST', '/offsite/sftp/test');
    expect(again.body.ok, again.body.message).toBe(true);

    // The same settings reaching a server with another host key (the form keeps the pin it loaded).
    await save(
      sftp({ port: other.port, remotePath: 'changed/gem', hostKeyFingerprint: sshd.hostKeyFingerprint }),
    );
    const changed = await call(t, 'POST', '/offsite/sftp/test');
    expect(changed.body).toMatchObject({ ok: false, details: { code: 'auth_failed' } });
    expect(changed.body.message).toContain(other.hostKeyFingerprint);
    expect(existsSync(join(other.root, 'changed'))).toBe(false);
    expect(await savedPin()).toBe(sshd.hostKeyFingerprint);
  });

  it('records the key on the first successful transfer too (remote list)', async () => {
    await save(
      sftp({
        port: other.port,
        host: other.host,
        username: other.passwordUser.username,
        auth: { password: other.passwordUser.password },
      }),
    );
    expect(await savedPin()).toBeUndefined();
    const list = await call(t, 'GET', '/offsite/sftp/backups');
    expect(list.status, JSON.stringify(list.body)).toBe(200);
    expect(await savedPin()).toBe(other.hostKeyFingerprint);
  });

  it('a first-connection pin queued behind a PUT turning SFTP off pins nothing and leaves SFTP off', async () => {
    await save(sftp({ remotePath: 'raced/gem' }));
    expect(await savedPin()).toBeUndefined();
    // The hook a provider gets for this saved section (what Test Connection and transfers use).
    const service = offsiteServiceFor(t.agent) as unknown as {
      trustOnFirstUse(
        kind: 'sftp',
        section: unknown,
      ): { onHostKey: (hostKeyFingerprint: string) => Promise<void> };
    };
    const { onHostKey } = service.trustOnFirstUse('sftp', t.agent.settings.get().offsite.sftp);
    // The user saves SFTP off while the first connection is under way (not awaited: still queued)...
    const userPut = t.agent.settings.update({
      offsite: { sftp: sftp({ remotePath: 'raced/gem', enabled: false, auth: { password: { set: true } } }) },
    });
    // ...and the connection then reports the server key.
    const pin = onHostKey(sshd.hostKeyFingerprint);
    await Promise.all([userPut, pin]);
    const now = t.agent.settings.get().offsite.sftp;
    expect(now.enabled).toBe(false);
    expect(now.hostKeyFingerprint).toBeUndefined();
    expect(await savedPin()).toBeUndefined();
    const res = await call(t, 'GET', '/settings');
    expect(res.body.offsite.sftp.enabled).toBe(false);
  });

  it("honours a pin another process saved (the CLI's first connection) that the running agent has not read", async () => {
    await save(sftp({ remotePath: 'cli-pinned/gem' }));
    expect(await savedPin()).toBeUndefined();
    // `gem-backup list --from sftp` beside the service met the server first and pinned its key; here
    // it pinned another server's, so the server the agent now reaches shows a key that is not the pin.
    const cli = await SettingsService.open({
      sql: t.agent.sql,
      keyring: t.agent.keyring,
      log: createLogger({ write: () => {} }),
    });
    await cli.change((current) => {
      current.offsite.sftp.hostKeyFingerprint = other.hostKeyFingerprint;
      return current;
    });
    expect(t.agent.settings.get().offsite.sftp.hostKeyFingerprint).toBeUndefined();
    const list = await call(t, 'GET', '/offsite/sftp/backups');
    expect(list.status, JSON.stringify(list.body)).toBe(503);
    expect(list.body.error.details.code).toBe('auth_failed');
    expect(list.body.error.message).toContain(
      `The server's identity changed: the server's host key ${sshd.hostKeyFingerprint} is not the pinned ${other.hostKeyFingerprint}`,
    );
    expect(existsSync(join(sshd.root, 'cli-pinned'))).toBe(false);
    expect(await savedPin()).toBe(other.hostKeyFingerprint);
  });

  it('rejects a fingerprint that is not SHA256:base64 (422 naming the field)', async () => {
    const res = await call(t, 'PUT', '/settings', {
      offsite: { sftp: sftp({ hostKeyFingerprint: 'MD5:12:34:56' }) },
    });
    expect(res.status).toBe(422);
    expect(JSON.stringify(res.body)).toContain('offsite.sftp.hostKeyFingerprint');
  });
});
