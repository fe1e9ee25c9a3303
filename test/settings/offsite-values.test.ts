// Offsite settings whose values are not of their kind (a host that is an option or a command, an ftp://
// endpoint, a bucket name S3 never takes) are refused on save with a 422 naming the field, and nothing is
// saved; settings an earlier version saved with such values still load, and health names the field.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { SmbProvider } from '../../agent/providers/smb';
import {
  BUCKET_RULE,
  ENDPOINT_SCHEME_RULE,
  HOST_RULE,
  isBucketName,
  isHost,
  ONE_LINE_RULE,
  SMB_FOLDER_RULE,
} from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let dataDir: string;
const modules = [settingsModule, offsiteModule, healthModule];

beforeAll(async () => {
  pg = await startPostgres();
  dataDir = await mkdtemp(join(tmpdir(), 'gem-offsite-values-'));
  t = await startTestAgent(pg, { dataDir, modules });
}, 60_000);
afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await rm(dataDir, { recursive: true, force: true });
});

async function call(method: string, path: string, body?: unknown) {
  const res = await t.request(`/api/v1${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  });
  const text = await res.text();
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers, checked by the expectations
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as any };
}

const sftp = (host: string) => ({
  enabled: true,
  host,
  port: 22,
  username: 'gem',
  remotePath: '/backups',
  auth: { password: 'pw' },
});
const smb = (host: string) => ({ enabled: true, host, share: 'gem', username: 'gem', password: 'pw' });
const s3 = (fields: { endpoint?: string; bucket?: string }) => ({
  enabled: true,
  provider: 'other',
  endpoint: 'http://127.0.0.1:9000',
  region: 'us-east-1',
  bucket: 'gem-backups',
  accessKeyId: 'key',
  secretAccessKey: 'secret',
  ...fields,
});

describe('offsite values on save', () => {
  it.each([
    ['sftp', sftp('h;rm -rf /'), 'offsite.sftp.host'],
    ['sftp', sftp('-oProxyCommand=x'), 'offsite.sftp.host'],
    ['sftp', { ...sftp('-N'), enabled: false }, 'offsite.sftp.host'],
    ['smb', smb('-N'), 'offsite.smb.host'],
    ['smb', smb('nas local'), 'offsite.smb.host'],
    ['smb', smb('10.0.0.256'), 'offsite.smb.host'],
    // smbclient reads these from a file of `key = value` lines: a line break would write a line of its own.
    ['smb', { ...smb('nas'), username: 'gem\ndomain = OTHER' }, 'offsite.smb.username'],
    ['smb', { ...smb('nas'), password: 'pw\r\nusername = admin' }, 'offsite.smb.password'],
    ['smb', { ...smb('nas'), domain: 'WORK\u0000' }, 'offsite.smb.domain'],
    // smbclient takes the folder inside its `-c` commands: a ';' would end the command, a '"' its quoting.
    ['smb', { ...smb('nas'), remotePath: '/gem;backups/' }, 'offsite.smb.remotePath'],
    ['smb', { ...smb('nas'), remotePath: '/gem"x/' }, 'offsite.smb.remotePath'],
    ['smb', { ...smb('nas'), enabled: false, remotePath: '/gem\tx/' }, 'offsite.smb.remotePath'],
    ['s3', s3({ endpoint: 'ftp://x' }), 'offsite.s3.endpoint'],
    ['s3', s3({ bucket: 'Bad_Bucket!' }), 'offsite.s3.bucket'],
    ['s3', s3({ bucket: 'ab' }), 'offsite.s3.bucket'],
    ['s3', s3({ bucket: 'my..bucket' }), 'offsite.s3.bucket'],
    ['s3', s3({ bucket: '192.168.1.10' }), 'offsite.s3.bucket'],
  ])('%s %j: 422 naming %s, nothing saved', async (kind, section, field) => {
    const before = await call('GET', '/settings');
    const res = await call('PUT', '/settings', { offsite: { [kind]: section } });
    expect(res.status, JSON.stringify(res.body)).toBe(422);
    expect(res.body.error.details.field).toBe(field);
    expect(res.body.error.message).toMatch(new RegExp(`^${field.replaceAll('.', '\\.')}: must be `));
    const after = await call('GET', '/settings');
    expect(after.body.revision).toBe(before.body.revision);
    // Test Connection with such a form is refused alike, before anything is contacted.
    const tested = await call('POST', `/offsite/${kind}/test`, section);
    expect(tested.status).toBe(422);
    expect(tested.body.error.details.field).toBe(field.replace(/^offsite\.\w+\./, ''));
  });

  it('the SMB provider refuses a user name, password or domain with a line break before it writes its auth file', async () => {
    for (const fields of [{ username: 'gem\nx = y' }, { password: 'pw\nx = y' }, { domain: 'W\rORK' }]) {
      const provider = new SmbProvider({
        host: '127.0.0.1',
        share: 'gem',
        username: 'gem',
        password: 'pw',
        ...fields,
      });
      await expect(provider.list(), JSON.stringify(fields)).rejects.toThrow(
        `the SMB user name, password or domain ${ONE_LINE_RULE}`,
      );
    }
  });

  it('takes host names, IPv4 and IPv6 addresses, http(s) endpoints and the bucket names S3 servers take', async () => {
    for (const host of ['nas', 'NAS.Example.com.', ' backup-1.example.net ', 'FILESRV_01', '192.168.1.10']) {
      expect(isHost(host), host).toBe(true);
    }
    for (const host of ['[fd00::10]', 'fd00::10', '[::1]']) expect(isHost(host), host).toBe(true);
    for (const host of ['-N', 'a..b', '[fd00::zz]', 'nas.example.com..', 'h;x', '[nas]', '1.2.3']) {
      expect(isHost(host), host).toBe(false);
    }
    for (const bucket of ['gem', 'gem-backups.2026', 'Legacy_Bucket', 'a'.repeat(63)]) {
      expect(isBucketName(bucket), bucket).toBe(true);
    }
    for (const bucket of ['-gem', 'gem-', 'a'.repeat(64), 'gem.-x', 'gem bucket']) {
      expect(isBucketName(bucket), bucket).toBe(false);
    }
    const saved = await call('PUT', '/settings', {
      offsite: {
        sftp: sftp('[::1]'),
        smb: { ...smb('nas.example.com'), remotePath: '/Backups GEM/été/' },
        s3: s3({ endpoint: 'https://minio.example.com:9000', bucket: 'gem.backups-1' }),
      },
    });
    expect(saved.status, JSON.stringify(saved.body)).toBe(200);
    expect(saved.body.offsite.sftp.host).toBe('[::1]');
  });
});

describe('values an earlier version saved', () => {
  it('still load after a restart; health names each field to correct', async () => {
    // Stored as an earlier version stored them: it took any text.
    await t.agent.settings.change((current) => {
      Object.assign(current.offsite.sftp, sftp('-oProxyCommand=x'));
      Object.assign(current.offsite.smb, { ...smb('h;rm -rf /'), remotePath: '/gem;x/' });
      Object.assign(current.offsite.s3, s3({ endpoint: 'ftp://x', bucket: 'Bad_Bucket!' }));
      return current;
    });
    const databaseUrl = t.agent.databaseUrl;
    await t.close();
    t = await startTestAgent(pg, { dataDir, databaseUrl, modules });
    const loaded = await call('GET', '/settings');
    expect(loaded.status).toBe(200);
    expect(loaded.body.offsite.sftp.host).toBe('-oProxyCommand=x');
    expect(loaded.body.offsite.s3.bucket).toBe('Bad_Bucket!');

    healthFor(t.agent, { offsiteProbeIntervalMs: 0 });
    const health = await call('GET', '/health');
    expect(health.status).toBe(200);
    const offsite = health.body.areas.offsite;
    expect(offsite.status).toBe('failing');
    const reasons = (kind: string) => offsite.destinations[kind].reason as string;
    expect(reasons('sftp')).toBe(
      `The SFTP server settings hold a value that is not valid: the host ${HOST_RULE}. Correct it in the settings and save`,
    );
    expect(reasons('smb')).toContain(
      `Windows share (SMB) settings hold values that are not valid: the remotePath ${SMB_FOLDER_RULE}; the host ${HOST_RULE}. Correct them`,
    );
    expect(reasons('s3')).toContain(
      `S3 storage settings hold values that are not valid: the endpoint ${ENDPOINT_SCHEME_RULE}; the bucket ${BUCKET_RULE}. Correct them`,
    );

    // Test Connection of the saved settings answers (a failure in words), it does not crash.
    const tested = await call('POST', '/offsite/sftp/test');
    expect(tested.status).toBe(200);
    expect(tested.body.ok).toBe(false);
    // Correcting the field saves again.
    const fixed = await call('PUT', '/settings', { offsite: { sftp: sftp('127.0.0.1') } });
    expect(fixed.status, JSON.stringify(fixed.body)).toBe(200);
  }, 60_000);
});
