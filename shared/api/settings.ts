// The agent's settings: the PUT body schema (zod, strict) and the shapes GET returns; shared with the page and the cloud side.
import { z } from 'zod';

/** Auto-backup schedules; every one runs at 02:00 except hourly (on the hour). */
export const SCHEDULES = ['hourly', 'daily', 'weekly', 'monthly'] as const;
export type Schedule = (typeof SCHEDULES)[number];
const S3_PROVIDERS = ['aws', 'b2', 'wasabi', 'minio', 'other'] as const;
export type S3Provider = (typeof S3_PROVIDERS)[number];

/** Bounds the API promises (API.md). */
export const MAX_BACKUPS_RANGE = { min: 1, max: 100, default: 10 } as const;
const MAINTENANCE_DEFAULT_RETENTION_DAYS = 90;
/** Safety backups (taken by a restore) are kept out of maxBackups and pruned by this limit. */
export const SAFETY_BACKUPS_KEPT = 3;

/** True if `tz` is an IANA time zone this runtime knows (Intl works in Node and in workerd). */
export function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/**
 * A secret in a PUT body: a new value; `{set: ...}` as a GET returned it, or the key left out, keeps the
 * stored one; `null` clears it. A password the server receives (SFTP, SMB, SMTP) is kept only while
 * the host and port it was saved for stay the same: otherwise it must be given again (422 naming it).
 */
export const SecretInput = z
  .union([z.string().min(1).max(16384), z.object({ set: z.boolean() }).strict()])
  .nullable();
export type SecretInput = z.infer<typeof SecretInput>;
/** How a secret reads back: never its value. */
export type SecretView = { set: boolean };

const text = (max = 1024) => z.string().max(max);

const AutoBackupInput = z
  .object({
    enabled: z.boolean().default(true),
    schedule: z.enum(SCHEDULES).default('daily'),
    maxBackups: z
      .number()
      .int()
      .min(MAX_BACKUPS_RANGE.min)
      .max(MAX_BACKUPS_RANGE.max)
      .default(MAX_BACKUPS_RANGE.default),
    timezone: z.string().refine(isTimeZone, 'unknown time zone').optional(),
  })
  .strict();

const CloudDrInput = z.object({ enabled: z.boolean().default(true) }).strict();

/** A host key fingerprint as `ssh-keygen -lf` prints it: `SHA256:` and the unpadded base64 of the hash. */
const HOST_KEY_FINGERPRINT = /^SHA256:[A-Za-z0-9+/]{43}$/;

const SftpAuthInput = z.union([
  z.object({ password: SecretInput }).strict(),
  z.object({ privateKey: SecretInput, passphrase: SecretInput.optional() }).strict(),
]);

/** What SMB's user name, password and domain must be: smbclient reads them from a file of `key = value` lines. */
export const ONE_LINE_RULE =
  'must be one line (no line break or NUL): smbclient reads the user name, password and domain from a file of lines';

/** True for text without a line break or NUL (ONE_LINE_RULE). */
export function isOneLine(text: string): boolean {
  return !/[\r\n\u0000]/.test(text);
}

/** What an SMB folder must be: smbclient takes it in its `-c` commands, quoted, where ';' ends a command. */
export const SMB_FOLDER_RULE =
  'must be a folder path without a double quote ("), a semicolon (;) or a control character: smbclient takes the folder in its commands';

/** True for a folder smbclient's commands can take (SMB_FOLDER_RULE); spaces around it are trimmed before use. */
export function isSmbFolder(path: string): boolean {
  return !/[";\u0000-\u001f]/.test(path.trim());
}

/** What a destination's host (SFTP, SMB) and the alerts' SMTP server must be: a name or an address, never an option of a tool. */
export const HOST_RULE = 'must be a host name, an IPv4 address or an [IPv6] address (and not start with "-")';

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
/** A DNS (or NetBIOS) name: labels of letters, digits, '-' and '_', none starting with '-'; an ending dot allowed. */
const HOST_NAME = /^(?=.{1,253}\.?$)[A-Za-z0-9_][A-Za-z0-9_-]{0,62}(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?$/;

/** True if `address` (without brackets) is an IPv6 address, as the URL parser reads one. */
function isIpv6(address: string): boolean {
  if (!/^[0-9A-Fa-f:.]+$/.test(address) || !address.includes(':')) return false;
  try {
    new URL(`http://[${address}]/`);
    return true;
  } catch {
    return false;
  }
}

/**
 * True if `host` (surrounding spaces aside) is a host name, an IPv4 address, or an IPv6 address in
 * brackets; also bare, as earlier versions saved it. Digits and dots alone must make an IPv4 address.
 */
export function isHost(host: string): boolean {
  const h = host.trim();
  if (h.startsWith('[') && h.endsWith(']')) return isIpv6(h.slice(1, -1));
  if (h.includes(':')) return isIpv6(h);
  if (/^[\d.]+$/.test(h)) return IPV4.test(h);
  return HOST_NAME.test(h);
}

/**
 * A host the settings accept (isHost) as a connection takes it: spaces around it trimmed, an IPv6
 * address bare (`::1`), since ssh2, smbclient and Node's sockets would look up `[::1]` as a name.
 */
export function bareHost(host: string): string {
  const h = host.trim();
  return /^\[.*\]$/.test(h) ? h.slice(1, -1) : h;
}

/** What an S3 bucket name must be (isBucketName). */
export const BUCKET_RULE =
  'must be 3 to 63 letters, digits, dots or hyphens, starting and ending with a letter or digit (as the storage names it)';

/**
 * True if `bucket` is a bucket name by the S3 rules as MinIO's client checks an existing bucket's name
 * (3–63 characters; letters, digits, '.', '-', '_', ':'; a letter or digit at each end; no '..', '.-'
 * or '-.'; not an IPv4 address). New buckets on AWS take lowercase letters, digits, '.' and '-' only;
 * the others are accepted for older buckets and S3-compatible servers that allow them.
 */
export function isBucketName(bucket: string): boolean {
  const b = bucket.trim();
  return (
    /^[A-Za-z0-9][A-Za-z0-9._:-]{1,61}[A-Za-z0-9]$/.test(b) &&
    !/\.\.|\.-|-\./.test(b) &&
    !/^(\d+\.){3}\d+$/.test(b)
  );
}

/** What an S3 endpoint must be (isHttpEndpoint). */
export const ENDPOINT_SCHEME_RULE = 'must be an http:// or https:// address';

/** True if `endpoint` is an http:// or https:// URL. */
export function isHttpEndpoint(endpoint: string): boolean {
  try {
    const { protocol } = new URL(endpoint);
    return protocol === 'http:' || protocol === 'https:';
  } catch {
    return false;
  }
}

/** A field of a destination section and why its value is refused. */
export interface FieldProblem {
  field: string;
  message: string;
}

/**
 * The fields of a destination section (a PUT's, or one saved by an earlier version that accepted
 * anything) whose value is not of its kind: host, bucket, endpoint. Empty values are left to the
 * "required when enabled" rule.
 */
export function destinationFieldProblems(
  kind: 'sftp' | 's3' | 'smb',
  section: {
    host?: string;
    bucket?: string;
    endpoint?: string | undefined;
    username?: string;
    domain?: string | undefined;
    password?: unknown;
    remotePath?: string;
  },
): FieldProblem[] {
  const problems: FieldProblem[] = [];
  if (kind === 'smb') {
    // A line break would end the line and start another: `domain = …` added to the file, or the password cut.
    for (const field of ['username', 'password', 'domain'] as const) {
      const value = section[field];
      if (typeof value === 'string' && !isOneLine(value)) problems.push({ field, message: ONE_LINE_RULE });
    }
    if (section.remotePath !== undefined && !isSmbFolder(section.remotePath))
      problems.push({ field: 'remotePath', message: SMB_FOLDER_RULE });
  }
  if (kind === 's3') {
    if (section.endpoint && !isHttpEndpoint(section.endpoint))
      problems.push({ field: 'endpoint', message: ENDPOINT_SCHEME_RULE });
    if (section.bucket?.trim() && !isBucketName(section.bucket))
      problems.push({ field: 'bucket', message: BUCKET_RULE });
  } else if (section.host?.trim() && !isHost(section.host)) {
    problems.push({ field: 'host', message: HOST_RULE });
  }
  return problems;
}

/** Adds an issue for each field `destinationFieldProblems` refuses. */
function refuseFieldProblems(problems: FieldProblem[], ctx: z.RefinementCtx): void {
  for (const { field, message } of problems) ctx.addIssue({ code: 'custom', path: [field], message });
}

export const SftpInput = z
  .object({
    enabled: z.boolean().default(false),
    host: text(255).default(''),
    port: z.number().int().min(1).max(65535).default(22),
    username: text(255).default(''),
    remotePath: text().default(''),
    auth: SftpAuthInput.optional(),
    /**
     * The server's pinned host key (`SHA256:` + unpadded base64, as `ssh-keygen -lf` prints it); not a
     * secret. Left out, empty or null: none pinned, and the key seen on the next successful connection is
     * recorded (trust on first use).
     */
    hostKeyFingerprint: z
      .union([
        z.string().regex(HOST_KEY_FINGERPRINT, 'expected SHA256: and 43 base64 characters'),
        z.literal(''),
      ])
      .nullable()
      .optional(),
    autoUpload: z.boolean().default(false),
  })
  .strict()
  .superRefine((s, ctx) => {
    refuseFieldProblems(destinationFieldProblems('sftp', s), ctx);
    if (!s.enabled) return;
    for (const field of ['host', 'username', 'remotePath'] as const) {
      if (!s[field]) ctx.addIssue({ code: 'custom', path: [field], message: 'required when enabled' });
    }
  });

/**
 * An S3 endpoint never carries a user or password (`https://key:secret@host`): S3 signs with the access
 * keys, and the endpoint is shown back in settings and in messages, where a password must not be.
 */
export const ENDPOINT_CREDENTIALS_RULE =
  'must not hold a user name or password: enter the keys as access key ID and secret access key, and the endpoint as https://host[:port]';

export function endpointHoldsCredentials(endpoint: string): boolean {
  try {
    const url = new URL(endpoint);
    return url.username !== '' || url.password !== '';
  } catch {
    return false;
  }
}

/** An Amazon S3 endpoint (`*.amazonaws.com`, `*.amazonaws.com.cn`): the only endpoint provider `aws` takes. */
export function isAwsEndpoint(endpoint: string): boolean {
  try {
    return /\.amazonaws\.com(\.cn)?$/i.test(new URL(endpoint).hostname);
  } catch {
    return false;
  }
}

export const AWS_ENDPOINT_RULE =
  'Amazon S3 needs no endpoint: leave it empty, or choose "Other S3-compatible" for another service.';

export const S3Input = z
  .object({
    enabled: z.boolean().default(false),
    provider: z.enum(S3_PROVIDERS).default('aws'),
    accessKeyId: text(512).default(''),
    secretAccessKey: SecretInput.optional(),
    bucket: text(255).default(''),
    endpoint: z.url().optional(),
    region: text(64).default(''),
    prefix: text().optional(),
    forcePathStyle: z.boolean().default(false),
    autoUpload: z.boolean().default(false),
    /** Read-only (derived); accepted so a GET body can be sent back. */
    needsAttention: z.array(z.string()).optional(),
  })
  .strict()
  .superRefine((s, ctx) => {
    if (s.endpoint && endpointHoldsCredentials(s.endpoint)) {
      ctx.addIssue({ code: 'custom', path: ['endpoint'], message: ENDPOINT_CREDENTIALS_RULE });
    }
    refuseFieldProblems(destinationFieldProblems('s3', s), ctx);
    // Only for a destination in use: the page saves every section, and an older installation may keep a
    // turned-off one that was saved before this rule (it could never upload).
    if (!s.enabled) return;
    if (s.provider === 'aws' && s.endpoint && !isAwsEndpoint(s.endpoint)) {
      ctx.addIssue({ code: 'custom', path: ['endpoint'], message: AWS_ENDPOINT_RULE });
    }
    for (const field of ['accessKeyId', 'bucket'] as const) {
      if (!s[field]) ctx.addIssue({ code: 'custom', path: [field], message: 'required when enabled' });
    }
  });

export const SmbInput = z
  .object({
    enabled: z.boolean().default(false),
    host: text(255).default(''),
    share: text(255).default(''),
    username: text(255).default(''),
    password: SecretInput.optional(),
    domain: text(255).optional(),
    remotePath: text().default('/gem/'),
    port: z.number().int().min(1).max(65535).optional(),
    autoUpload: z.boolean().default(false),
  })
  .strict()
  .superRefine((s, ctx) => {
    refuseFieldProblems(destinationFieldProblems('smb', s), ctx);
    if (!s.enabled) return;
    for (const field of ['host', 'share', 'username'] as const) {
      if (!s[field]) ctx.addIssue({ code: 'custom', path: [field], message: 'required when enabled' });
    }
  });

const MaintenanceInput = z
  .object({
    enabled: z.boolean().default(false),
    retentionDays: z.number().int().min(1).max(36500).default(MAINTENANCE_DEFAULT_RETENTION_DAYS),
  })
  .strict();

/** How often the scheduled verification runs (at 04:00; weekly on Sundays, monthly on the 1st). */
export const VERIFICATION_SCHEDULES = ['daily', 'weekly', 'monthly'] as const;
export type VerificationSchedule = (typeof VERIFICATION_SCHEDULES)[number];

/** What stands for the hidden part of a webhook address in its display form. */
const WEBHOOK_URL_ELLIPSIS = '…';
/** The longest first path segment shown: a longer one may be a key itself (Telegram's `bot<token>`). */
const SHOWN_SEGMENT_MAX = 16;

/**
 * The DISPLAY FORM of a webhook address, never the address: the address is a credential (a Slack,
 * Teams or Discord URL, a `?token=`: whoever has it can post). Keeps the scheme, host and port, the
 * first path segment when more path follows and it is at most 16 characters, then `…` and the last 4
 * characters of the rest (the rest of the path and the query), e.g.
 * `https://hooks.slack.com/services/…wXyZ`. A rest of 8 characters or fewer shows nothing of the path:
 * `https://host.example/…`. Never a user name, password, query or fragment. Always holds `…`, which
 * marks it (isWebhookUrlDisplay); a PUT that sends it back keeps the saved address.
 */
export function webhookUrlForDisplay(url: string): string {
  let address: URL;
  try {
    address = new URL(url);
  } catch {
    return WEBHOOK_URL_ELLIPSIS;
  }
  const head = `${address.protocol}//${address.host}/`;
  const path = address.pathname.slice(1);
  const cut = path.indexOf('/');
  const first = cut > 0 && cut <= SHOWN_SEGMENT_MAX ? path.slice(0, cut) : '';
  const rest = (first ? path.slice(cut + 1) : path) + address.search;
  if (rest.length <= 8) return `${head}${WEBHOOK_URL_ELLIPSIS}`;
  return `${head}${first ? `${first}/` : ''}${WEBHOOK_URL_ELLIPSIS}${rest.slice(-4)}`;
}

/** True if `url` is a display form (it holds `…`), not an address a webhook can be sent to. */
export function isWebhookUrlDisplay(url: string): boolean {
  return url.includes(WEBHOOK_URL_ELLIPSIS);
}

/**
 * A webhook that receives alerts; `secret` signs each one (X-Gem-Signature), write-only like every
 * secret. `url` is the full address, or the display form a GET returned (webhookUrlForDisplay): that
 * keeps the saved address of the webhook at the same index if its display form is the same, else of
 * the only saved webhook with that display form (422 `alerts.webhooks.N.url` otherwise).
 * `urlMasked` is read-only; accepted so a GET body can be sent back.
 */
export const WebhookInput = z
  .object({
    url: z.url().refine((u) => /^https?:\/\//i.test(u), 'use an http(s) address'),
    urlMasked: z.boolean().optional(),
    secret: SecretInput.optional(),
  })
  .strict();

const emailAddress = z
  .string()
  .max(320)
  .regex(/^[^\s@<>]+@[^\s@<>]+$/, 'not an e-mail address');

/** Alerts by e-mail through the site's own SMTP server (STARTTLS on 587, TLS on 465 with `secure`). */
const EmailAlertsInput = z
  .object({
    enabled: z.boolean().default(false),
    host: text(255).default(''),
    port: z.number().int().min(1).max(65535).default(587),
    secure: z.boolean().default(false),
    username: text(255).default(''),
    password: SecretInput.optional(),
    from: z.union([z.literal(''), emailAddress]).default(''),
    to: z.array(emailAddress).max(20).default([]),
  })
  .strict()
  .superRefine((e, ctx) => {
    // Refused whether or not it is on, as a destination's host: `smtp.example.com:587` reaches no server.
    if (e.host.trim() && !isHost(e.host))
      ctx.addIssue({ code: 'custom', path: ['host'], message: HOST_RULE });
    if (!e.enabled) return;
    if (!e.host) ctx.addIssue({ code: 'custom', path: ['host'], message: 'required when enabled' });
    if (!e.from) ctx.addIssue({ code: 'custom', path: ['from'], message: 'required when enabled' });
    if (!e.to.length) ctx.addIssue({ code: 'custom', path: ['to'], message: 'required when enabled' });
  });

const AlertsInput = z
  .object({
    webhooks: z.array(WebhookInput).max(10).default([]),
    email: EmailAlertsInput.optional(),
  })
  .strict();

const VerificationInput = z
  .object({
    enabled: z.boolean().default(true),
    schedule: z.enum(VERIFICATION_SCHEDULES).default('weekly'),
  })
  .strict();

/**
 * The `PUT /api/v1/settings` body. Partial at the top level and inside `offsite`: each section given
 * replaces the stored section as a whole (its missing fields take their defaults), except secrets,
 * which are kept unless a new value or null is given. `status`, `warnings` and `revision` are read-only
 * and ignored: to save only if nobody changed the settings since they were read, send their revision as
 * the `If-Match` header (the ETag of the GET), else 412 `settings_changed` and nothing is saved.
 */
export const SettingsUpdate = z
  .object({
    autoBackup: AutoBackupInput.optional(),
    cloudDr: CloudDrInput.optional(),
    offsite: z
      .object({ sftp: SftpInput.optional(), s3: S3Input.optional(), smb: SmbInput.optional() })
      .strict()
      .optional(),
    maintenance: MaintenanceInput.optional(),
    alerts: AlertsInput.optional(),
    verification: VerificationInput.optional(),
    status: z.unknown().optional(),
    warnings: z.unknown().optional(),
    revision: z.unknown().optional(),
  })
  .strict();
export type SettingsUpdate = z.infer<typeof SettingsUpdate>;

/** The settings as the agent uses them (secrets in plain text: never leaves the agent). */
export interface Settings {
  autoBackup: { enabled: boolean; schedule: Schedule; maxBackups: number; timezone?: string };
  cloudDr: { enabled: boolean };
  offsite: {
    sftp: {
      enabled: boolean;
      host: string;
      port: number;
      username: string;
      remotePath: string;
      auth?: { password: string } | { privateKey: string; passphrase?: string };
      /** Pinned host key (`SHA256:…`); absent until the first successful connection records it. */
      hostKeyFingerprint?: string;
      autoUpload: boolean;
    };
    s3: {
      enabled: boolean;
      provider: S3Provider;
      accessKeyId: string;
      secretAccessKey?: string;
      bucket: string;
      endpoint?: string;
      region: string;
      prefix?: string;
      forcePathStyle: boolean;
      autoUpload: boolean;
    };
    smb: {
      enabled: boolean;
      host: string;
      share: string;
      username: string;
      password?: string;
      domain?: string;
      remotePath: string;
      port?: number;
      autoUpload: boolean;
    };
  };
  maintenance: { enabled: boolean; retentionDays: number };
  alerts: {
    webhooks: Array<{ url: string; secret?: string }>;
    email: {
      enabled: boolean;
      host: string;
      port: number;
      secure: boolean;
      username: string;
      password?: string;
      from: string;
      to: string[];
    };
  };
  verification: { enabled: boolean; schedule: VerificationSchedule };
}

/** What `GET /api/v1/settings` returns: secrets masked, plus read-only status. */
export interface SettingsView {
  autoBackup: Settings['autoBackup'];
  cloudDr: Settings['cloudDr'];
  offsite: {
    sftp: Omit<Settings['offsite']['sftp'], 'auth'> & {
      auth: { password: SecretView } | { privateKey: SecretView; passphrase: SecretView };
    };
    s3: Omit<Settings['offsite']['s3'], 'secretAccessKey'> & {
      secretAccessKey: SecretView;
      needsAttention: string[];
    };
    smb: Omit<Settings['offsite']['smb'], 'password'> & { password: SecretView };
  };
  maintenance: Settings['maintenance'];
  alerts: {
    /** `url` is the display form (webhookUrlForDisplay), never the address: `urlMasked` says so. */
    webhooks: Array<{ url: string; urlMasked: true; secret: SecretView }>;
    email: Omit<Settings['alerts']['email'], 'password'> & { password: SecretView };
  };
  verification: Settings['verification'];
  status: { autoBackup: TaskStatus; maintenance: TaskStatus };
  /**
   * The revision of the saved settings shown (also the GET's and the PUT's `ETag`, quoted): every save
   * changes it. A PUT with `If-Match: "<revision>"` saves only if it is still the current one.
   */
  revision: string;
}

/** A scheduled task's last and next run (ISO strings; null when none). */
export interface TaskStatus {
  lastRunAt: string | null;
  /** `at`: when a slot that was skipped or could not start fired (it ran no job). */
  lastResult: { ok: boolean; error?: string; jobId?: string; at?: string } | null;
  nextRunAt: string | null;
}

/** A consequence a PUT reports before it happens. */
export interface SettingsWarning {
  code: 'cloud_dr_opt_out' | 'auto_backup_off';
  message: string;
}

/** What a PUT returns: the saved settings (as GET) and the warnings. */
export type SettingsPutResponse = SettingsView & { warnings: SettingsWarning[] };

/** The defaults of a fresh installation: daily auto-backup keeping 10, Cloud DR on, no offsite, purge off. */
export function defaultSettings(): Settings {
  return {
    autoBackup: { enabled: true, schedule: 'daily', maxBackups: MAX_BACKUPS_RANGE.default },
    cloudDr: { enabled: true },
    offsite: {
      sftp: { enabled: false, host: '', port: 22, username: '', remotePath: '', autoUpload: false },
      s3: {
        enabled: false,
        provider: 'aws',
        accessKeyId: '',
        bucket: '',
        region: '',
        forcePathStyle: false,
        autoUpload: false,
      },
      smb: { enabled: false, host: '', share: '', username: '', remotePath: '/gem/', autoUpload: false },
    },
    maintenance: { enabled: false, retentionDays: MAINTENANCE_DEFAULT_RETENTION_DAYS },
    alerts: {
      webhooks: [],
      email: { enabled: false, host: '', port: 587, secure: false, username: '', from: '', to: [] },
    },
    verification: { enabled: true, schedule: 'weekly' },
  };
}

/** Fields of an S3 destination a person must still fill in (e.g. after the legacy B2 migration). */
export function s3NeedsAttention(s3: Settings['offsite']['s3']): string[] {
  if (!s3.enabled && !s3.accessKeyId) return [];
  const missing: string[] = [];
  if (!s3.endpoint && s3.provider !== 'aws') missing.push('endpoint');
  if (!s3.region) missing.push('region');
  return missing;
}
