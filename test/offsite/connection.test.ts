// Test Connection against real sshd, smbd and s3rver: one readable message per failure, unsaved settings, saved secrets.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { s3Options } from '../../agent/offsite/index';
import type { TestAgent } from '../services/agent';
import { freePort } from '../services/ports';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { type SmbdService, startSmbd } from '../services/smbd';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { call, startOffsiteAgent } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let sshd: SshdService;
let smbd: SmbdService;
let s3: S3Service;

beforeAll(async () => {
  ({ pg, sshd, smbd, s3 } = await startAll({
    pg: startPostgres,
    sshd: startSshd,
    smbd: startSmbd,
    s3: startS3,
  }));
  t = await startOffsiteAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop(), smbd?.stop(), s3?.stop()]);
});

const sftpBody = (overrides: Record<string, unknown> = {}) => ({
  enabled: true,
  host: sshd.host,
  port: sshd.port,
  username: sshd.passwordUser.username,
  remotePath: 'tested/gem',
  auth: { password: sshd.passwordUser.password },
  ...overrides,
});
const s3Body = (overrides: Record<string, unknown> = {}) => ({
  enabled: true,
  provider: 'minio',
  endpoint: s3.endpoint,
  region: s3.region,
  bucket: s3.bucket,
  accessKeyId: s3.accessKeyId,
  secretAccessKey: s3.secretAccessKey,
  forcePathStyle: true,
  ...overrides,
});
const smbBody = (overrides: Record<string, unknown> = {}) => ({
  enabled: true,
  host: smbd.host,
  port: smbd.port,
  share: smbd.share,
  username: smbd.username,
  password: smbd.password,
  remotePath: '/gem/',
  ...overrides,
});

async function test(provider: string, body?: unknown) {
  const res = await call(t, 'POST', `/offsite/${provider}/test`, body);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body as {
    ok: boolean;
    message: string;
    details: { code?: string; step?: string; field?: string };
  };
}

describe('Test Connection: SFTP', () => {
  it('succeeds on unsaved settings from the body, creating the folder and leaving no probe behind', async () => {
    const result = await test('sftp', sftpBody());
    expect(result.ok, result.message).toBe(true);
    expect(result.message).toMatch(/test file was written and removed/);
    const { readdir } = await import('node:fs/promises');
    expect(await readdir(join(sshd.root, 'tested', 'gem'))).toEqual([]);
  });

  it('says the password or key was refused', async () => {
    const result = await test('sftp', sftpBody({ auth: { password: 'wrong-password' } }));
    expect(result).toMatchObject({ ok: false, details: { code: 'auth_failed', step: 'connect' } });
    expect(result.message).toContain(`refused the username "${sshd.passwordUser.username}"`);
  });

  it('says the host cannot be reached on a closed port', async () => {
    const port = await freePort();
    const result = await test('sftp', sftpBody({ port }));
    expect(result).toMatchObject({ ok: false, details: { code: 'unreachable' } });
    expect(result.message).toContain(`Cannot reach 127.0.0.1 on port ${port}`);
    expect(result.message).toMatch(/firewall/);
  });

  it('says the folder cannot be created or written (permission denied)', async () => {
    await mkdir(join(sshd.root, '..', 'root-only'), { recursive: true });
    const remotePath = join(sshd.root, '..', 'root-only', 'gem');
    const result = await test('sftp', sftpBody({ remotePath }));
    expect(result).toMatchObject({ ok: false, details: { code: 'permission_denied', step: 'write' } });
    expect(result.message).toContain(`create or write the folder ${remotePath}`);
  });

  it('says a PuTTY key must be converted to OpenSSH, with the command', async () => {
    const result = await test(
      'sftp',
      sftpBody({ username: sshd.keyUser.username, auth: { privateKey: sshd.keyUser.puttyPrivateKey } }),
    );
    expect(result).toMatchObject({ ok: false, details: { code: 'bad_key_format' } });
    expect(result.message).toContain('PuTTY format');
    expect(result.message).toContain('puttygen key.ppk -O private-openssh -o key');
  });

  it('logs in with an OpenSSH key', async () => {
    const result = await test(
      'sftp',
      sftpBody({ username: sshd.keyUser.username, auth: { privateKey: sshd.keyUser.privateKey } }),
    );
    expect(result.ok, result.message).toBe(true);
  });

  it('uses the saved secret when the form sends {set: true}, and the saved settings when there is no body', async () => {
    await t.agent.settings.update({ offsite: { sftp: sftpBody({ remotePath: 'saved' }) } });
    const echoed = await test('sftp', sftpBody({ auth: { password: { set: true } }, remotePath: 'echoed' }));
    expect(echoed.ok, echoed.message).toBe(true);
    const saved = await test('sftp');
    expect(saved.ok, saved.message).toBe(true);
    expect(saved.message).toContain('folder saved');
    // A missing secret in an unsaved form, with none saved for another method, is a settings problem.
    await t.agent.settings.update({
      offsite: { sftp: { ...sftpBody(), enabled: false, auth: { password: null } } },
    });
    const none = await test('sftp', sftpBody({ auth: undefined }));
    expect(none).toMatchObject({
      ok: false,
      details: { code: 'invalid_settings', field: 'offsite.sftp.auth' },
    });
  });
});

describe('Test Connection: S3', () => {
  it('succeeds with a MinIO-style preset on unsaved settings', async () => {
    const result = await test('s3', s3Body());
    expect(result.ok, result.message).toBe(true);
  });

  it('says the bucket does not exist', async () => {
    const result = await test('s3', s3Body({ bucket: 'no-such-bucket' }));
    expect(result).toMatchObject({ ok: false, details: { code: 'bucket_missing' } });
    expect(result.message).toContain('The bucket "no-such-bucket" does not exist');
  });

  it('says the keys were refused', async () => {
    const result = await test('s3', s3Body({ accessKeyId: 'NOT-A-KEY' }));
    expect(result).toMatchObject({ ok: false, details: { code: 'auth_failed' } });
    expect(result.message).toContain('refused the access key ID or secret access key');
  });

  it('says the storage cannot be reached', async () => {
    const endpoint = `http://127.0.0.1:${await freePort()}`;
    const result = await test('s3', s3Body({ endpoint }));
    expect(result).toMatchObject({ ok: false, details: { code: 'unreachable' } });
    expect(result.message).toContain(`Cannot reach the storage at ${endpoint}`);
  });

  it('checks each provider preset with a clear message', async () => {
    const base = {
      enabled: true,
      accessKeyId: 'k',
      secretAccessKey: 's',
      bucket: 'b',
      region: '',
      forcePathStyle: false,
      autoUpload: false,
    } as const;
    expect(() => s3Options({ ...base, provider: 'b2' })).toThrow(/Backblaze B2 needs its S3 endpoint/);
    expect(() =>
      s3Options({
        ...base,
        provider: 'b2',
        endpoint: 'https://s3.eu-central-003.backblazeb2.com',
        region: 'us-west-004',
      }),
    ).toThrow(/does not match the endpoint's region "eu-central-003"/);
    expect(
      s3Options({ ...base, provider: 'b2', endpoint: 'https://s3.eu-central-003.backblazeb2.com' }).region,
    ).toBe('eu-central-003');
    expect(s3Options({ ...base, provider: 'wasabi', region: 'eu-west-1' }).endpoint).toBe(
      'https://s3.eu-west-1.wasabisys.com',
    );
    expect(() =>
      s3Options({
        ...base,
        provider: 'wasabi',
        region: 'eu-west-1',
        endpoint: 'https://s3.us-east-1.wasabisys.com',
      }),
    ).toThrow(/must match the bucket's region/);
    expect(s3Options({ ...base, provider: 'minio', endpoint: 'http://nas:9000' })).toMatchObject({
      forcePathStyle: true,
      region: 'us-east-1',
    });
    expect(() => s3Options({ ...base, provider: 'aws', endpoint: 'https://minio.example.com' })).toThrow(
      /Amazon S3 needs no endpoint/,
    );
    expect(() => s3Options({ ...base, provider: 'aws' })).toThrow(/Enter the bucket's region/);
    expect(s3Options({ ...base, provider: 'aws', region: 'eu-central-1' }).endpoint).toBeUndefined();
    // Through the route, a preset problem is a failed test naming the field.
    const result = await test('s3', s3Body({ provider: 'b2', endpoint: undefined }));
    expect(result).toMatchObject({
      ok: false,
      details: { code: 'invalid_settings', field: 'offsite.s3.endpoint' },
    });
  });
});

describe('Test Connection: SMB', () => {
  it('succeeds on unsaved settings', async () => {
    const result = await test('smb', smbBody());
    expect(result.ok, result.message).toBe(true);
  });

  it('says the share does not exist', async () => {
    const result = await test('smb', smbBody({ share: 'nosuchshare' }));
    expect(result).toMatchObject({ ok: false, details: { code: 'path_missing' } });
    expect(result.message).toContain('The share "nosuchshare" does not exist');
  });

  it('says the username or password was refused', async () => {
    const result = await test('smb', smbBody({ password: 'wrong-password' }));
    expect(result).toMatchObject({ ok: false, details: { code: 'auth_failed' } });
    expect(result.message).toContain('refused the username or password');
  });

  it('says smbclient is missing, with the install command', async () => {
    const path = process.env['PATH'];
    process.env['PATH'] = '/nonexistent';
    try {
      const result = await test('smb', smbBody());
      expect(result).toMatchObject({ ok: false, details: { code: 'tool_missing' } });
      expect(result.message).toContain('sudo apt-get install -y smbclient');
    } finally {
      process.env['PATH'] = path;
    }
  });
});

describe('offsite routes: names', () => {
  it('refuses an unknown provider (404) and a bad backup name (400)', async () => {
    expect((await call(t, 'POST', '/offsite/ftp/test', {})).status).toBe(404);
    expect((await call(t, 'GET', '/offsite/dropbox/backups')).status).toBe(404);
    await t.agent.settings.update({ offsite: { sftp: sftpBody() } });
    expect((await call(t, 'DELETE', '/offsite/sftp/backups/..%2Fetc%2Fpasswd')).status).toBe(400);
    expect((await call(t, 'POST', '/offsite/sftp/backups/evil.tar.gz/download')).status).toBe(400);
  });

  it('refuses a destination that is off (422, as a DR push while DR is off), and an invalid body (422)', async () => {
    await t.agent.settings.update({ offsite: { smb: { ...smbBody(), enabled: false } } });
    expect((await call(t, 'POST', '/offsite/smb/sync')).status).toBe(422);
    expect((await call(t, 'POST', '/offsite/sftp/test', { port: 'twenty-two' })).status).toBe(422);
  });
});
