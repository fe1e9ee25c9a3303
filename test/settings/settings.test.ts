// Settings through a real PostgreSQL: round-trip, secrets sealed at rest and masked, 422s that save nothing, legacy B2.
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { drServiceFor } from '../../agent/dr/service';
import { maintenanceModule } from '../../agent/http/routes/maintenance';
import { retentionModule, settingsModule } from '../../agent/http/routes/settings';
import { Scheduler } from '../../agent/jobs/scheduler';
import { openSecret } from '../../agent/keys/secrets';
import { createLogger } from '../../agent/log';
import { migrateLegacyB2 } from '../../agent/settings/legacy';
import { SettingsService } from '../../agent/settings/service';
import { VerificationScheduler } from '../../agent/verification/schedule';
import {
  HOST_RULE,
  type Settings,
  type SettingsPutResponse,
  type SettingsView,
} from '../../shared/api/settings';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';

const modules = [settingsModule, retentionModule, maintenanceModule];
const SECRETS = {
  sftpPassword: 'sftp-pass-Zq81!x',
  s3Secret: 's3-secret-Kp3vWq9e7',
  smbPassword: 'smb-pass-Lm44?y',
  privateKey:
    '-----BEGIN OPENSSH PRIVATE KEY-----\nfake-key-material-Ab12\n-----END OPENSSH PRIVATE KEY-----',
};

let pg: TestPostgres;
let t: TestAgent;

const get = async (agent = t) => (await (await agent.request('/api/v1/settings')).json()) as SettingsView;
const put = (body: unknown, agent = t) =>
  agent.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
const storedRow = () =>
  withSql(t.agent.databaseUrl, async (sql) => {
    const rows = await sql`select doc::text as doc, updated_at from gem_backup.settings`;
    return rows[0] as { doc: string; updated_at: Date } | undefined;
  });

const fullBody = {
  autoBackup: { enabled: true, schedule: 'weekly', maxBackups: 7, timezone: 'Europe/Berlin' },
  cloudDr: { enabled: true },
  offsite: {
    sftp: {
      enabled: true,
      host: 'backup.example.net',
      port: 2222,
      username: 'gem',
      remotePath: '/srv/gem',
      auth: { password: SECRETS.sftpPassword },
      autoUpload: true,
    },
    s3: {
      enabled: true,
      provider: 'minio',
      accessKeyId: 'AKIAEXAMPLE',
      secretAccessKey: SECRETS.s3Secret,
      bucket: 'gem-backups',
      endpoint: 'http://127.0.0.1:9000',
      region: 'us-east-1',
      prefix: 'site-1/',
      forcePathStyle: true,
      autoUpload: false,
    },
    smb: {
      enabled: true,
      host: 'nas.local',
      share: 'backups',
      username: 'gem',
      password: SECRETS.smbPassword,
      domain: 'WORKGROUP',
      remotePath: '/gem/',
      autoUpload: true,
    },
  },
  maintenance: { enabled: true, retentionDays: 30 },
};

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules });
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('settings', () => {
  it('starts from the defaults, with the migrations applied in schema gem_backup', async () => {
    const view = await get();
    expect(view.autoBackup).toEqual({ enabled: true, schedule: 'daily', maxBackups: 10 });
    expect(view.cloudDr).toEqual({ enabled: true });
    expect(view.maintenance).toEqual({ enabled: false, retentionDays: 90 });
    expect(view.offsite.sftp.auth).toEqual({ password: { set: false } });
    expect(view.offsite.s3.secretAccessKey).toEqual({ set: false });
    expect(view.status.autoBackup.nextRunAt).not.toBeNull();
    expect(view.status.maintenance.nextRunAt).toBeNull();
    const migrations = await withSql(
      t.agent.databaseUrl,
      (sql) => sql`select count(*)::int as n from gem_backup.__drizzle_migrations`,
    );
    expect(migrations[0]!.n).toBeGreaterThanOrEqual(1);
  });

  it('round-trips every section; secrets are sealed at rest, masked in responses, plain only inside the agent', async () => {
    const res = await put(fullBody);
    expect(res.status).toBe(200);
    const text = await res.text();
    for (const secret of Object.values(SECRETS)) expect(text).not.toContain(secret);
    const saved = JSON.parse(text) as SettingsPutResponse;
    expect(saved.warnings).toEqual([]);
    expect(saved.autoBackup).toEqual(fullBody.autoBackup);
    expect(saved.maintenance).toEqual(fullBody.maintenance);
    expect(saved.offsite.sftp).toMatchObject({
      host: 'backup.example.net',
      port: 2222,
      auth: { password: { set: true } },
    });
    expect(saved.offsite.s3).toMatchObject({
      provider: 'minio',
      secretAccessKey: { set: true },
      needsAttention: [],
    });
    expect(saved.offsite.smb).toMatchObject({ domain: 'WORKGROUP', password: { set: true } });
    expect(saved.status.maintenance.nextRunAt).not.toBeNull();

    const view = await get();
    expect(JSON.stringify(view)).not.toContain(SECRETS.s3Secret);
    expect(view).toMatchObject({ autoBackup: fullBody.autoBackup, maintenance: fullBody.maintenance });

    const row = await storedRow();
    for (const secret of Object.values(SECRETS)) expect(row!.doc).not.toContain(secret);
    const doc = JSON.parse(row!.doc) as Settings;
    expect(doc.offsite.s3.secretAccessKey).toMatch(/^gemsec1\./);
    expect(openSecret(doc.offsite.s3.secretAccessKey!, t.agent.keyring.masterKeys, 'settings')).toBe(
      SECRETS.s3Secret,
    );

    const plain = t.agent.settings.get();
    expect(plain.offsite.sftp.auth).toEqual({ password: SECRETS.sftpPassword });
    expect(plain.offsite.smb.password).toBe(SECRETS.smbPassword);
  });

  it('a PUT that omits a secret (or echoes {set: true}) keeps it; a new value replaces it; null clears it', async () => {
    const view = await get();
    // Send back exactly what GET returned (status and masked secrets included): nothing changes.
    expect((await put(view)).status).toBe(200);
    expect(t.agent.settings.get().offsite.s3.secretAccessKey).toBe(SECRETS.s3Secret);

    const { auth: _a, ...sftpWithoutAuth } = fullBody.offsite.sftp;
    // Same server (host and port), another folder: the password is kept (another address needs it again).
    expect((await put({ offsite: { sftp: { ...sftpWithoutAuth, remotePath: '/srv/gem-2' } } })).status).toBe(
      200,
    );
    expect(t.agent.settings.get().offsite.sftp).toMatchObject({
      remotePath: '/srv/gem-2',
      auth: { password: SECRETS.sftpPassword },
    });

    // Switching to key authentication drops the password.
    expect(
      (
        await put({
          offsite: {
            sftp: { ...sftpWithoutAuth, auth: { privateKey: SECRETS.privateKey, passphrase: 'pp-1' } },
          },
        })
      ).status,
    ).toBe(200);
    expect(t.agent.settings.get().offsite.sftp.auth).toEqual({
      privateKey: SECRETS.privateKey,
      passphrase: 'pp-1',
    });
    expect((await get()).offsite.sftp.auth).toEqual({ privateKey: { set: true }, passphrase: { set: true } });

    const { secretAccessKey: _s, ...s3WithoutSecret } = fullBody.offsite.s3;
    expect(
      (await put({ offsite: { s3: { ...s3WithoutSecret, enabled: false, secretAccessKey: null } } })).status,
    ).toBe(200);
    expect(t.agent.settings.get().offsite.s3.secretAccessKey).toBeUndefined();
    expect((await get()).offsite.s3.secretAccessKey).toEqual({ set: false });
    // Other sections were not given, so they are untouched.
    expect(t.agent.settings.get().offsite.smb.password).toBe(SECRETS.smbPassword);
    expect(t.agent.settings.get().autoBackup).toEqual(fullBody.autoBackup);
  });

  it('bad bodies get a 422 naming the field, and nothing is saved', async () => {
    const before = await storedRow();
    const cases: Array<[unknown, string]> = [
      [{ surprise: 1 }, 'body'],
      [{ autoBackup: { ...fullBody.autoBackup, extra: true } }, 'autoBackup'],
      [{ autoBackup: { ...fullBody.autoBackup, maxBackups: 0 } }, 'autoBackup.maxBackups'],
      [{ autoBackup: { ...fullBody.autoBackup, maxBackups: 101 } }, 'autoBackup.maxBackups'],
      [{ autoBackup: { ...fullBody.autoBackup, maxBackups: 2.5 } }, 'autoBackup.maxBackups'],
      [{ autoBackup: { ...fullBody.autoBackup, schedule: 'yearly' } }, 'autoBackup.schedule'],
      [{ autoBackup: { ...fullBody.autoBackup, timezone: 'Mars/Olympus' } }, 'autoBackup.timezone'],
      [{ maintenance: { enabled: true, retentionDays: 0 } }, 'maintenance.retentionDays'],
      [{ maintenance: { enabled: true, retentionDays: -5 } }, 'maintenance.retentionDays'],
      [{ offsite: { ftp: {} } }, 'offsite'],
      [{ offsite: { sftp: { ...fullBody.offsite.sftp, port: 70000 } } }, 'offsite.sftp.port'],
      [{ offsite: { sftp: { ...fullBody.offsite.sftp, host: '' } } }, 'offsite.sftp.host'],
      [{ offsite: { s3: { ...fullBody.offsite.s3, provider: 'gcs' } } }, 'offsite.s3.provider'],
      // Valid shape, but enabling S3 while its secret was cleared above.
      [
        { offsite: { s3: { ...fullBody.offsite.s3, secretAccessKey: undefined } } },
        'offsite.s3.secretAccessKey',
      ],
      // A good section next to a bad one: the good one is not saved either.
      [{ cloudDr: { enabled: false }, maintenance: { retentionDays: 0 } }, 'maintenance.retentionDays'],
    ];
    for (const [body, field] of cases) {
      const res = await put(body);
      expect(res.status, JSON.stringify(body)).toBe(422);
      const error = ((await res.json()) as { error: { code: string; message: string } }).error;
      expect(error.code).toBe('unprocessable');
      expect(error.message.startsWith(`${field}:`), `${error.message} should name ${field}`).toBe(true);
    }
    const after = await storedRow();
    expect(after!.doc).toBe(before!.doc);
    expect(after!.updated_at.getTime()).toBe(before!.updated_at.getTime());
    expect(t.agent.settings.get().cloudDr.enabled).toBe(true);
  });

  it('the SMTP server of e-mail alerts must be a host name or an address, as a destination’s host: 422 otherwise', async () => {
    const email = { enabled: true, host: '', from: 'gem@example.com', to: ['ops@example.com'] };
    const before = await storedRow();
    // The port typed into the host, a URL, a space inside, an option: each reached no server, every alert lost.
    for (const host of ['smtp.example.com:587', 'smtp://smtp.example.com', 'smtp example.com', '-oX']) {
      const res = await put({ alerts: { webhooks: [], email: { ...email, host } } });
      expect(res.status, host).toBe(422);
      const error = ((await res.json()) as { error: { message: string } }).error;
      expect(error.message).toBe(`alerts.email.host: ${HOST_RULE}`);
    }
    expect((await storedRow())!.doc).toBe(before!.doc);
    for (const host of ['smtp.example.com', '192.0.2.25', 'fd00::25']) {
      const res = await put({ alerts: { webhooks: [], email: { ...email, enabled: false, host } } });
      expect(res.status, host).toBe(200);
      expect(t.agent.settings.get().alerts.email.host).toBe(host);
    }
  });

  it('turning Cloud DR off is announced as a warning and reaches the change listeners', async () => {
    const seen: Array<[boolean, boolean]> = [];
    const off = t.agent.settings.subscribe((previous, next) => {
      seen.push([previous.cloudDr.enabled, next.cloudDr.enabled]);
    });
    const res = await put({ cloudDr: { enabled: false } });
    expect(res.status).toBe(200);
    const body = (await res.json()) as SettingsPutResponse;
    expect(body.warnings).toEqual([
      {
        code: 'cloud_dr_opt_out',
        message: 'Turning Cloud DR off deletes the cloud copy of this installation',
      },
    ]);
    expect(seen).toEqual([[true, false]]);
    // Already off: no warning the second time.
    expect(
      ((await (await put({ cloudDr: { enabled: false } })).json()) as SettingsPutResponse).warnings,
    ).toEqual([]);
    off();
  });

  it('survives a restart: a new agent on the same database reads the same settings and opens the secrets', async () => {
    const before = t.agent.settings.get();
    const again = await startTestAgent(pg, { modules, databaseUrl: t.agent.databaseUrl, dataDir: t.dataDir });
    try {
      expect(again.agent.settings.get()).toEqual(before);
      expect(await get(again)).toMatchObject({
        autoBackup: fullBody.autoBackup,
        cloudDr: { enabled: false },
      });
    } finally {
      await again.agent.close();
    }
  });

  it("a saved time zone this machine's Node does not know: the agent starts, its schedules arm on the server's zone, a warning names it", async () => {
    // Saved where the zone was known (a newer Node's time zone data, a database restored from another
    // controller); before, GET /settings answered 500 and every schedule's start threw, the agent's too.
    const url = await pg.createDatabase();
    const first = await startTestAgent(pg, { modules, databaseUrl: url, seed: false });
    try {
      expect(
        (await put({ autoBackup: { ...fullBody.autoBackup, timezone: 'Europe/Berlin' } }, first)).status,
      ).toBe(200);
    } finally {
      await first.close();
    }
    await withSql(
      url,
      (sql) =>
        sql`update gem_backup.settings set doc = jsonb_set(doc, '{autoBackup,timezone}', '"Mars/Olympus"')`,
    );
    const lines: { level: string; msg: string; timezone?: string }[] = [];
    const log = createLogger({ level: 'debug', write: (line) => lines.push(JSON.parse(line)) });
    const again = await startTestAgent(pg, { modules, databaseUrl: url, seed: false, log });
    try {
      const view = await again.request('/api/v1/settings');
      expect(view.status).toBe(200);
      const shown = (await view.json()) as SettingsView;
      expect(shown.autoBackup).toEqual({ ...fullBody.autoBackup, timezone: undefined });
      expect(shown.status.autoBackup.nextRunAt).toEqual(expect.any(String));
      expect(lines).toContainEqual(
        expect.objectContaining({
          level: 'warn',
          msg: expect.stringMatching(/time zone is unknown/),
          timezone: 'Mars/Olympus',
        }),
      );
      const scheduler = new Scheduler(again.agent);
      await scheduler.start();
      scheduler.stop();
      const verification = new VerificationScheduler(again.agent);
      await verification.start();
      verification.stop();
      const dr = drServiceFor(again.agent);
      await dr.start();
      await dr.stop();
      // A zone it knows is saved and used as before.
      expect(
        (await put({ autoBackup: { ...fullBody.autoBackup, timezone: 'Asia/Tokyo' } }, again)).status,
      ).toBe(200);
      expect(again.agent.settings.get().autoBackup.timezone).toBe('Asia/Tokyo');
    } finally {
      await again.close();
    }
  });

  it("a new webhook sent without a secret is a 422, not signed with another webhook's key; an edited URL keeps its own", async () => {
    const A = 'https://a.example/hook';
    const B = 'https://b.example/hook';
    const C = 'https://c.example/hook';
    const saved = await put({
      alerts: {
        webhooks: [
          { url: A, secret: 'webhook-secret-A' },
          { url: B, secret: 'webhook-secret-B' },
        ],
      },
    });
    expect(saved.status).toBe(200);
    const before = await storedRow();

    // A removed, C added in its place with no secret typed: C must not inherit A's signing key.
    const res = await put({ alerts: { webhooks: [{ url: B, secret: { set: true } }, { url: C }] } });
    expect(res.status).toBe(422);
    const error = ((await res.json()) as { error: { code: string; message: string } }).error;
    expect(error.message.startsWith('alerts.webhooks.1.secret:'), error.message).toBe(true);
    const after = await storedRow();
    expect(after!.doc).toBe(before!.doc);
    expect(after!.updated_at.getTime()).toBe(before!.updated_at.getTime());
    expect(t.agent.settings.get().alerts.webhooks).toEqual([
      { url: A, secret: 'webhook-secret-A' },
      { url: B, secret: 'webhook-secret-B' },
    ]);

    // A's URL edited in place (A no longer in the list): the entry keeps its own secret.
    const edited = await put({ alerts: { webhooks: [{ url: C }, { url: B, secret: { set: true } }] } });
    expect(edited.status).toBe(200);
    expect(t.agent.settings.get().alerts.webhooks).toEqual([
      { url: C, secret: 'webhook-secret-A' },
      { url: B, secret: 'webhook-secret-B' },
    ]);
  });
});

describe('the legacy B2 configuration', () => {
  it('is moved to the S3 destination (provider b2, credentials kept and sealed), flagged, and its plaintext file removed', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'gem-legacy-'));
    const legacyPath = join(dataDir, 'settings.json');
    await writeFile(
      legacyPath,
      JSON.stringify({
        b2: { keyId: '0041a2b3c4d5e6f0000000001', applicationKey: 'K004legacyAppKeyXyz', bucket: 'old-gem' },
      }),
    );
    const legacy = await startTestAgent(pg, { modules, dataDir });
    try {
      const view = await get(legacy);
      expect(view.offsite.s3).toMatchObject({
        enabled: true,
        provider: 'b2',
        accessKeyId: '0041a2b3c4d5e6f0000000001',
        bucket: 'old-gem',
        secretAccessKey: { set: true },
        needsAttention: ['endpoint', 'region'],
      });
      expect(legacy.agent.settings.get().offsite.s3.secretAccessKey).toBe('K004legacyAppKeyXyz');
      await expect(access(legacyPath)).rejects.toThrow();
      const row = await withSql(
        legacy.agent.databaseUrl,
        (sql) => sql`select doc::text as doc from gem_backup.settings`,
      );
      expect(row[0]!.doc).not.toContain('K004legacyAppKeyXyz');

      // Filling in endpoint and region clears the flag; the key is kept.
      const { secretAccessKey: _s, needsAttention: _n, ...s3 } = view.offsite.s3;
      const res = await put(
        {
          offsite: {
            s3: { ...s3, endpoint: 'https://s3.us-west-004.backblazeb2.com', region: 'us-west-004' },
          },
        },
        legacy,
      );
      expect(res.status).toBe(200);
      expect(((await res.json()) as SettingsView).offsite.s3.needsAttention).toEqual([]);
      expect(legacy.agent.settings.get().offsite.s3.secretAccessKey).toBe('K004legacyAppKeyXyz');
    } finally {
      await legacy.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('is moved too when the file begins with a byte order mark (saved by Notepad or PowerShell)', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'gem-legacy-bom-'));
    const legacyPath = join(dataDir, 'settings.json');
    const b2 = { keyId: '0041a2b3c4d5e6f0000000003', applicationKey: 'K004editedByHand', bucket: 'old-gem' };
    await writeFile(legacyPath, `\uFEFF${JSON.stringify({ b2 }, null, 2)}`);
    const legacy = await startTestAgent(pg, { modules, dataDir });
    try {
      expect((await get(legacy)).offsite.s3).toMatchObject({ provider: 'b2', accessKeyId: b2.keyId });
      expect(legacy.agent.settings.get().offsite.s3.secretAccessKey).toBe(b2.applicationKey);
      await expect(access(legacyPath)).rejects.toThrow();
    } finally {
      await legacy.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('is removed at the next start when a start stopped after moving it, before removing the file', async () => {
    const configured = await startTestAgent(pg, { modules });
    const dataDir = await mkdtemp(join(tmpdir(), 'gem-legacy-moved-'));
    try {
      const b2 = {
        keyId: '0041a2b3c4d5e6f0000000004',
        applicationKey: 'K004movedNotRemoved',
        bucket: 'old-gem',
      };
      // What the interrupted start saved: the S3 destination made of the file, endpoint and region still to fill in.
      await configured.agent.settings.change((current) => {
        current.offsite.s3 = migrateLegacyB2({ b2 });
        return current;
      });
      const legacyPath = join(dataDir, 'settings.json');
      await writeFile(legacyPath, JSON.stringify({ b2 }), { mode: 0o600 });
      const lines: { level: string; msg: string }[] = [];
      const log = createLogger({ level: 'debug', write: (line) => lines.push(JSON.parse(line)) });
      const service = await SettingsService.open({
        sql: configured.agent.sql,
        keyring: configured.agent.keyring,
        log,
        dataDir,
      });
      expect(service.get().offsite.s3).toMatchObject({ provider: 'b2', secretAccessKey: b2.applicationKey });
      await expect(access(legacyPath)).rejects.toThrow();
      expect(lines.filter((line) => line.level === 'warn')).toEqual([]);
    } finally {
      await configured.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('is left in place, with a warning saying so, when an S3 destination is already configured', async () => {
    const configured = await startTestAgent(pg, { modules });
    const dataDir = await mkdtemp(join(tmpdir(), 'gem-legacy-kept-'));
    try {
      expect((await put({ offsite: { s3: fullBody.offsite.s3 } }, configured)).status).toBe(200);
      const legacyPath = join(dataDir, 'settings.json');
      const legacyText = JSON.stringify({
        b2: { keyId: '0041a2b3c4d5e6f0000000002', applicationKey: 'K004onlyCopyOfKey', bucket: 'old-gem' },
      });
      await writeFile(legacyPath, legacyText, { mode: 0o600 });
      const lines: { level: string; msg: string; path?: string }[] = [];
      const log = createLogger({ level: 'debug', write: (line) => lines.push(JSON.parse(line)) });
      const service = await SettingsService.open({
        sql: configured.agent.sql,
        keyring: configured.agent.keyring,
        log,
        dataDir,
      });
      // The configured destination is untouched, and the only copy of the B2 key is still there.
      expect(service.get().offsite.s3).toMatchObject({
        provider: 'minio',
        secretAccessKey: SECRETS.s3Secret,
      });
      expect(await readFile(legacyPath, 'utf8')).toBe(legacyText);
      const warning = lines.find((line) => line.level === 'warn' && /legacy B2/.test(line.msg));
      expect(warning?.msg).toMatch(/not migrated.*left in place/);
      expect(warning?.path).toBe(legacyPath);
      expect(JSON.stringify(lines)).not.toContain('K004onlyCopyOfKey');
    } finally {
      await configured.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
