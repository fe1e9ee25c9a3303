// A saved password goes only to the server it was saved for: PUT settings and Test Connection with a changed address.
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { offsiteServiceFor } from '../../agent/offsite/index';
import type { SettingsView } from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SmbdService, startSmbd } from '../services/smbd';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { call, FAST } from './helpers';

/** A TCP listener that records every connection made to it (and closes it at once). */
interface Recorder {
  host: string;
  port: number;
  connections: number;
  close(): Promise<void>;
}

async function startRecorder(host: string): Promise<Recorder> {
  const server: Server = createServer();
  const recorder = { host, port: 0, connections: 0, close: () => closeServer(server) };
  server.on('connection', (socket) => {
    recorder.connections += 1;
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  recorder.port = (server.address() as { port: number }).port;
  return recorder;
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

let pg: TestPostgres;
let sshd: SshdService;
let smbd: SmbdService;
let t: TestAgent;
/** Another host (127.0.0.2 is loopback too) and another port of the same host. */
let otherHost: Recorder;
let otherPort: Recorder;

beforeAll(async () => {
  ({ pg, sshd, smbd } = await startAll({ pg: startPostgres, sshd: startSshd, smbd: startSmbd }));
  t = await startTestAgent(pg, { modules: [settingsModule, offsiteModule] });
  offsiteServiceFor(t.agent, FAST);
  otherHost = await startRecorder('127.0.0.2');
  otherPort = await startRecorder('127.0.0.1');
});
afterAll(async () => {
  await t?.close();
  await Promise.all([otherHost?.close(), otherPort?.close()]);
  await Promise.all([pg?.stop(), sshd?.stop(), smbd?.stop()]);
});

const sftpSaved = () => ({
  enabled: true,
  host: sshd.host,
  port: sshd.port,
  username: sshd.passwordUser.username,
  remotePath: 'secret-address/gem',
});
const smbSaved = () => ({
  enabled: true,
  host: smbd.host,
  port: smbd.port,
  share: smbd.share,
  username: smbd.username,
  remotePath: '/secret-address/',
});
const emailSaved = {
  enabled: true,
  host: 'smtp.example.net',
  port: 587,
  secure: false,
  username: 'alerts@example.net',
  from: 'alerts@example.net',
  to: ['ops@example.net'],
};
const SMTP_PASSWORD = 'smtp-pass-Rt55!q';

const getSettings = async () => (await call(t, 'GET', '/settings')).body as SettingsView;
const put = (body: unknown) => call(t, 'PUT', '/settings', body);
const connections = () => otherHost.connections + otherPort.connections;

beforeEach(async () => {
  // Every test starts from the real servers with their real secrets saved.
  const res = await put({
    offsite: {
      sftp: { ...sftpSaved(), auth: { password: sshd.passwordUser.password } },
      smb: { ...smbSaved(), password: smbd.password },
    },
    alerts: { webhooks: [], email: { ...emailSaved, password: SMTP_PASSWORD } },
  });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  otherHost.connections = 0;
  otherPort.connections = 0;
});

describe('SFTP password', () => {
  for (const [what, address] of [
    ['host', () => ({ host: otherHost.host, port: otherHost.port })],
    ['port', () => ({ port: otherPort.port })],
  ] as const) {
    it(`PUT with another ${what} and no password: 422 naming the field, nothing saved`, async () => {
      const before = await getSettings();
      for (const auth of [{ auth: { password: { set: true } } }, {}]) {
        const res = await put({ offsite: { sftp: { ...sftpSaved(), ...address(), ...auth } } });
        expect(res.status, JSON.stringify(res.body)).toBe(422);
        expect(res.body.error.details.field).toBe('offsite.sftp.auth.password');
        expect(res.body.error.message).toBe(
          `offsite.sftp.auth.password: enter the password again: the ${what} changed`,
        );
      }
      const after = await getSettings();
      expect(after.offsite.sftp.host).toBe(sshd.host);
      expect(after.offsite.sftp.port).toBe(sshd.port);
      expect(after.offsite).toEqual(before.offsite);
      expect(t.agent.settings.get().offsite.sftp.auth).toEqual({ password: sshd.passwordUser.password });
    });

    it(`Test Connection with another ${what} and no password: 422, no connection made`, async () => {
      const res = await call(t, 'POST', '/offsite/sftp/test', {
        ...sftpSaved(),
        ...address(),
        auth: { password: { set: true } },
      });
      expect(res.status, JSON.stringify(res.body)).toBe(422);
      expect(res.body.error.details.field).toBe('offsite.sftp.auth.password');
      expect(connections()).toBe(0);
      expect((await getSettings()).offsite.sftp.host).toBe(sshd.host);
    });
  }

  it('same server, no password: the saved one is kept and still signs in to the real sshd', async () => {
    const res = await put({
      offsite: {
        sftp: { ...sftpSaved(), remotePath: 'secret-address/kept', auth: { password: { set: true } } },
      },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(t.agent.settings.get().offsite.sftp.auth).toEqual({ password: sshd.passwordUser.password });
    // A host written in other case and with spaces is the same server.
    const body = { ...sftpSaved(), host: ` ${sshd.host.toUpperCase()} `, auth: { password: { set: true } } };
    const result = (await call(t, 'POST', '/offsite/sftp/test', body)).body;
    expect(result.ok, result.message).toBe(true);
    const saved = (await call(t, 'POST', '/offsite/sftp/test')).body;
    expect(saved.ok, saved.message).toBe(true);
  });

  it('another host with a new password is saved and used there', async () => {
    const res = await put({
      offsite: {
        sftp: {
          ...sftpSaved(),
          host: otherHost.host,
          port: otherHost.port,
          auth: { password: 'typed-again' },
        },
      },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect((await getSettings()).offsite.sftp.host).toBe(otherHost.host);
    expect(t.agent.settings.get().offsite.sftp.auth).toEqual({ password: 'typed-again' });
    // The recorder does see a connection that is allowed (so its zero above means none was made).
    const result = (await call(t, 'POST', '/offsite/sftp/test')).body;
    expect(result.ok).toBe(false);
    expect(otherHost.connections).toBeGreaterThan(0);
  });

  it('a private key never leaves the agent: kept for another host', async () => {
    const key = { privateKey: sshd.keyUser.privateKey };
    expect((await put({ offsite: { sftp: { ...sftpSaved(), auth: key } } })).status).toBe(200);
    const res = await put({
      offsite: {
        sftp: {
          ...sftpSaved(),
          host: otherHost.host,
          auth: { privateKey: { set: true }, passphrase: { set: false } },
        },
      },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(t.agent.settings.get().offsite.sftp.auth).toEqual(key);
  });

  it('a blank host reaches nobody: turning SFTP off and clearing the host keeps the password', async () => {
    const res = await put({
      offsite: { sftp: { ...sftpSaved(), enabled: false, host: '', auth: { password: { set: true } } } },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    // Back on at another host: the password must be typed again.
    const back = await put({
      offsite: { sftp: { ...sftpSaved(), host: otherHost.host, auth: { password: { set: true } } } },
    });
    expect(back.status, JSON.stringify(back.body)).toBe(422);
  });
});

describe('SMB password', () => {
  it('PUT with another host and no password: 422 naming the field, nothing saved', async () => {
    const res = await put({
      offsite: {
        smb: { ...smbSaved(), host: otherHost.host, port: otherHost.port, password: { set: true } },
      },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(422);
    expect(res.body.error.message).toBe('offsite.smb.password: enter the password again: the host changed');
    const after = await getSettings();
    expect(after.offsite.smb.host).toBe(smbd.host);
    expect(after.offsite.smb.port).toBe(smbd.port);
    expect(t.agent.settings.get().offsite.smb.password).toBe(smbd.password);
  });

  it('Test Connection with another port and no password: 422, no connection made', async () => {
    const res = await call(t, 'POST', '/offsite/smb/test', { ...smbSaved(), port: otherPort.port });
    expect(res.status, JSON.stringify(res.body)).toBe(422);
    expect(res.body.error.details.field).toBe('offsite.smb.password');
    expect(connections()).toBe(0);
  });

  it('same server, no password: kept and still signs in to the real smbd', async () => {
    const res = await put({
      offsite: { smb: { ...smbSaved(), remotePath: '/secret-address/kept/', password: { set: true } } },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const result = (await call(t, 'POST', '/offsite/smb/test')).body;
    expect(result.ok, result.message).toBe(true);
  });

  it('another host with a new password is saved', async () => {
    const res = await put({
      offsite: { smb: { ...smbSaved(), host: otherHost.host, password: 'typed-again' } },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(t.agent.settings.get().offsite.smb).toMatchObject({
      host: otherHost.host,
      password: 'typed-again',
    });
  });
});

describe('SMTP password (alert e-mail)', () => {
  it('another host or port and no password: 422 naming the field, nothing saved', async () => {
    for (const [change, what] of [
      [{ host: 'smtp.elsewhere.example' }, 'host'],
      [{ port: 2525 }, 'port'],
    ] as const) {
      const res = await put({ alerts: { webhooks: [], email: { ...emailSaved, ...change } } });
      expect(res.status, JSON.stringify(res.body)).toBe(422);
      expect(res.body.error.message).toBe(
        `alerts.email.password: enter the password again: the ${what} changed`,
      );
    }
    expect(t.agent.settings.get().alerts.email).toMatchObject({
      host: emailSaved.host,
      password: SMTP_PASSWORD,
    });
  });

  it('same server keeps it; another server with a new password saves it', async () => {
    const kept = await put({
      alerts: { webhooks: [], email: { ...emailSaved, to: ['oncall@example.net'] } },
    });
    expect(kept.status, JSON.stringify(kept.body)).toBe(200);
    expect(t.agent.settings.get().alerts.email.password).toBe(SMTP_PASSWORD);
    const moved = await put({
      alerts: { webhooks: [], email: { ...emailSaved, host: 'smtp.elsewhere.example', password: 'new-one' } },
    });
    expect(moved.status, JSON.stringify(moved.body)).toBe(200);
    expect(t.agent.settings.get().alerts.email).toMatchObject({
      host: 'smtp.elsewhere.example',
      password: 'new-one',
    });
  });
});
