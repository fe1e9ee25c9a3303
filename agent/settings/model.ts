/** Pure settings logic: applying a PUT to the stored settings, masking, sealing, and the PUT's warnings. */
import {
  defaultSettings,
  isWebhookUrlDisplay,
  type SecretInput,
  type SecretView,
  type Settings,
  type SettingsUpdate,
  type SettingsView,
  type SettingsWarning,
  s3NeedsAttention,
  webhookUrlForDisplay,
} from '../../shared/api/settings';
import { AppError } from '../errors';

/** A new value replaces, null clears, anything else (left out, `{set}` echoed from a GET) keeps. */
function keep(input: SecretInput | undefined, stored: string | undefined): string | undefined {
  if (input === null) return undefined;
  if (typeof input === 'string') return input;
  return stored;
}

/** A server a secret is sent to (SFTP, SMB, SMTP): its host (compared by hostKey) and port. */
interface Server {
  host: string;
  port?: number | undefined;
}

/**
 * A host as the resolver sees it: without case, spaces, a final dot (`nas.example.com.` is the same
 * name) or IPv6 brackets, and an IPv6 address in its shortest spelling (`fd00:0:0:0:0:0:0:10` is
 * `fd00::10`). The page compares hosts the same way (hostKey in agent/ui/settings.js).
 */
export function hostKey(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  else if (h.endsWith('.')) h = h.slice(0, -1);
  if (h.includes(':')) {
    try {
      h = new URL(`http://[${h}]/`).hostname.slice(1, -1);
    } catch {
      // Not an IPv6 address: compared as typed.
    }
  }
  return h;
}

/** The part of the address that changed (`host`, `port`), or undefined when it is the same server. */
function moved(saved: Server, next: Server, defaultPort: number): 'host' | 'port' | undefined {
  const name = (s: Server) => hostKey(s.host);
  // A blank host reaches nobody: the secret may stay until a host is given (which then differs).
  if (!name(next)) return undefined;
  if (name(saved) !== name(next)) return 'host';
  if ((saved.port ?? defaultPort) !== (next.port ?? defaultPort)) return 'port';
  return undefined;
}

/**
 * `keep` for a secret the server receives (a password): the stored one is kept only while the address
 * it was saved for stays the same. A changed address with no new secret is a 422 naming the field, so
 * a saved password is never sent to another server (an address pointed elsewhere, then Test Connection).
 */
function keepForServer(
  input: SecretInput | undefined,
  stored: string | undefined,
  field: string,
  change: 'host' | 'port' | undefined,
): string | undefined {
  const kept = keep(input, stored);
  if (change && stored && kept === stored && typeof input !== 'string') {
    throw unprocessable(field, `enter the password again: the ${change} changed`);
  }
  return kept;
}

type Sftp = Settings['offsite']['sftp'];
type SftpAuthInput = NonNullable<NonNullable<SettingsUpdate['offsite']>['sftp']>['auth'];

/**
 * The SFTP sign-in over the stored one. A password goes to the server, so it is kept only for the same
 * host and port; a private key (and its passphrase) never leaves the agent (the server gets a signature
 * bound to its session), so it is kept as any other secret.
 */
function mergeSftpAuth(
  input: SftpAuthInput,
  stored: Sftp['auth'],
  change: 'host' | 'port' | undefined,
): Sftp['auth'] {
  const field = 'offsite.sftp.auth.password';
  if (input === undefined) {
    if (stored && 'password' in stored) keepForServer(undefined, stored.password, field, change);
    return stored;
  }
  if ('password' in input) {
    const password = keepForServer(
      input.password,
      stored && 'password' in stored ? stored.password : undefined,
      field,
      change,
    );
    return password ? { password } : undefined;
  }
  const old = stored && 'privateKey' in stored ? stored : undefined;
  const privateKey = keep(input.privateKey, old?.privateKey);
  const passphrase = keep(input.passphrase, old?.passphrase);
  return privateKey ? { privateKey, ...(passphrase ? { passphrase } : {}) } : undefined;
}

/** A 422 naming one field, as zod failures read. */
function unprocessable(field: string, message: string): AppError {
  return new AppError('unprocessable', `${field}: ${message}`, {
    details: { field, issues: [{ field, message }] },
  });
}

function missingSecret(field: string): AppError {
  return unprocessable(field, 'required when enabled');
}

/** Drops keys whose value is undefined, so stored JSON and responses stay tidy. */
function tidy<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

/**
 * Applies a validated PUT body to `current`: each section given replaces the stored one, secrets are
 * kept unless replaced or cleared (a password the server receives only for the same host and port).
 * Throws a 422 naming the field if an enabled destination lacks its secret, or if a password would be
 * kept for another address. Test Connection merges its body here too, so it never connects then.
 */
export function applySettingsUpdate(current: Settings, update: SettingsUpdate): Settings {
  const next = structuredClone(current);
  if (update.autoBackup) next.autoBackup = tidy({ ...update.autoBackup });
  if (update.cloudDr) next.cloudDr = { ...update.cloudDr };
  if (update.maintenance) next.maintenance = { ...update.maintenance };
  const offsite = update.offsite;
  if (offsite?.sftp) {
    const { auth, hostKeyFingerprint, ...rest } = offsite.sftp;
    next.offsite.sftp = tidy({
      ...rest,
      // Not a secret: like any other field, left out (or emptied on the page) means none pinned.
      hostKeyFingerprint: hostKeyFingerprint || undefined,
      auth: mergeSftpAuth(auth, current.offsite.sftp.auth, moved(current.offsite.sftp, rest, 22)),
    });
    if (next.offsite.sftp.enabled && !next.offsite.sftp.auth) throw missingSecret('offsite.sftp.auth');
  }
  if (offsite?.s3) {
    const { secretAccessKey, needsAttention: _derived, ...rest } = offsite.s3;
    next.offsite.s3 = tidy({
      ...rest,
      secretAccessKey: keep(secretAccessKey, current.offsite.s3.secretAccessKey),
    });
    if (next.offsite.s3.enabled && !next.offsite.s3.secretAccessKey) {
      throw missingSecret('offsite.s3.secretAccessKey');
    }
  }
  if (update.verification) next.verification = { ...update.verification };
  if (update.alerts) next.alerts = mergeAlerts(update.alerts, current.alerts);
  if (offsite?.smb) {
    const { password, ...rest } = offsite.smb;
    const saved = current.offsite.smb;
    next.offsite.smb = tidy({
      ...rest,
      password: keepForServer(password, saved.password, 'offsite.smb.password', moved(saved, rest, 445)),
    });
    if (next.offsite.smb.enabled && !next.offsite.smb.password) throw missingSecret('offsite.smb.password');
  }
  return next;
}

type Alerts = Settings['alerts'];
type Webhook = Alerts['webhooks'][number];

/**
 * The saved webhook a display form in a PUT stands for (a client sent back what GET showed): the one
 * at the same index if its display form is the same, else the only one with that display form. None,
 * or several: a 422 naming the field, since the address cannot be known.
 */
function savedWebhookFor(display: string, i: number, stored: Alerts['webhooks']): Webhook {
  const same = stored[i];
  if (same && webhookUrlForDisplay(same.url) === display) return same;
  const matches = stored.filter((s) => webhookUrlForDisplay(s.url) === display);
  if (matches.length === 1 && matches[0]) return matches[0];
  throw unprocessable(
    `alerts.webhooks.${i}.url`,
    `this shortened address fits ${matches.length ? 'several saved webhooks' : 'no saved webhook'}: enter the full URL again`,
  );
}

/**
 * The alerts section of a PUT over the stored one. A webhook's URL sent back in its display form (as
 * GET shows it) keeps the saved address and secret of the webhook it stands for (savedWebhookFor).
 * A webhook's secret is kept (matched by URL) unless replaced or cleared; every webhook needs one,
 * since receivers trust alerts by their signature.
 * A URL not stored keeps the secret at its index only when that stored URL is gone from the input
 * (the entry's URL was edited): a new webhook never gets another receiver's signing key. Unlike a
 * password, a webhook secret is never sent (it signs, HMAC), so a URL edit may keep it. The SMTP
 * password is sent to the server, so it is kept only for the same host and port.
 */
function mergeAlerts(input: NonNullable<SettingsUpdate['alerts']>, stored: Alerts): Alerts {
  const saved = input.webhooks.map((w, i) =>
    isWebhookUrlDisplay(w.url) ? savedWebhookFor(w.url, i, stored.webhooks) : undefined,
  );
  const given = input.webhooks.map((w, i) => saved[i]?.url ?? w.url);
  const urls = new Set(given);
  const webhooks = input.webhooks.map((w, i) => {
    const url = given[i] ?? w.url;
    const edited = stored.webhooks[i];
    const old =
      saved[i] ??
      stored.webhooks.find((s) => s.url === url) ??
      (edited && !urls.has(edited.url) ? edited : undefined);
    const secret = keep(w.secret, old?.secret);
    if (!secret) throw missingSecret(`alerts.webhooks.${i}.secret`);
    return { url, secret };
  });
  const email = input.email ?? { ...stored.email, enabled: false };
  const { password, ...rest } = email as NonNullable<NonNullable<SettingsUpdate['alerts']>['email']>;
  const change = moved(stored.email, rest, 587);
  const merged = tidy({
    ...rest,
    password: keepForServer(password, stored.email.password, 'alerts.email.password', change),
  });
  return { webhooks, email: merged as Alerts['email'] };
}

const set = (value: string | undefined): SecretView => ({ set: value !== undefined && value !== '' });

/** The settings as the API shows them: every secret replaced by `{set}`, webhook URLs by their display form. */
export function maskSettings(s: Settings, status: SettingsView['status']): Omit<SettingsView, 'revision'> {
  const { auth, ...sftp } = s.offsite.sftp;
  const { secretAccessKey, ...s3 } = s.offsite.s3;
  const { password, ...smb } = s.offsite.smb;
  return {
    autoBackup: { ...s.autoBackup },
    cloudDr: { ...s.cloudDr },
    offsite: {
      sftp: {
        ...sftp,
        auth:
          auth && 'privateKey' in auth
            ? { privateKey: set(auth.privateKey), passphrase: set(auth.passphrase) }
            : { password: set(auth?.password) },
      },
      s3: { ...s3, secretAccessKey: set(secretAccessKey), needsAttention: s3NeedsAttention(s.offsite.s3) },
      smb: { ...smb, password: set(password) },
    },
    maintenance: { ...s.maintenance },
    alerts: {
      webhooks: s.alerts.webhooks.map((w) => ({
        url: webhookUrlForDisplay(w.url),
        urlMasked: true as const,
        secret: set(w.secret),
      })),
      email: (({ password: p, ...email }) => ({ ...email, password: set(p) }))(s.alerts.email),
    },
    verification: { ...s.verification },
    status,
  };
}

/** Applies `f` to every secret (sealing for storage, opening after load); the rest is copied. */
export function mapSecrets(s: Settings, f: (value: string, field: string) => string | undefined): Settings {
  const out = structuredClone(s);
  const auth = out.offsite.sftp.auth;
  if (auth && 'password' in auth) {
    const password = f(auth.password, 'offsite.sftp.auth.password');
    out.offsite.sftp = tidy({ ...out.offsite.sftp, auth: password ? { password } : undefined });
  } else if (auth) {
    const privateKey = f(auth.privateKey, 'offsite.sftp.auth.privateKey');
    const passphrase = auth.passphrase ? f(auth.passphrase, 'offsite.sftp.auth.passphrase') : undefined;
    out.offsite.sftp = tidy({
      ...out.offsite.sftp,
      auth: privateKey ? tidy({ privateKey, passphrase }) : undefined,
    });
  }
  const { s3, smb } = out.offsite;
  if (s3.secretAccessKey) {
    out.offsite.s3 = tidy({ ...s3, secretAccessKey: f(s3.secretAccessKey, 'offsite.s3.secretAccessKey') });
  }
  if (smb.password) out.offsite.smb = tidy({ ...smb, password: f(smb.password, 'offsite.smb.password') });
  out.alerts.webhooks = out.alerts.webhooks.map((w, i) =>
    tidy({ url: w.url, secret: w.secret ? f(w.secret, `alerts.webhooks.${i}.secret`) : undefined }),
  );
  if (out.alerts.email.password) {
    out.alerts.email = tidy({
      ...out.alerts.email,
      password: f(out.alerts.email.password, 'alerts.email.password'),
    });
  }
  return out;
}

/**
 * A stored document (possibly written by an older version, missing newer fields) over the defaults.
 * Sections are merged one level deep; the document is ours, so it is trusted beyond that.
 */
export function withDefaults(doc: unknown): Settings {
  const d = defaultSettings();
  const o = (doc ?? {}) as Partial<Record<string, Record<string, unknown>>>;
  const offsite = (o.offsite ?? {}) as Partial<Record<string, Record<string, unknown>>>;
  return {
    autoBackup: { ...d.autoBackup, ...o.autoBackup } as Settings['autoBackup'],
    cloudDr: { ...d.cloudDr, ...o.cloudDr } as Settings['cloudDr'],
    offsite: {
      sftp: { ...d.offsite.sftp, ...offsite.sftp } as Settings['offsite']['sftp'],
      s3: { ...d.offsite.s3, ...offsite.s3 } as Settings['offsite']['s3'],
      smb: { ...d.offsite.smb, ...offsite.smb } as Settings['offsite']['smb'],
    },
    maintenance: { ...d.maintenance, ...o.maintenance } as Settings['maintenance'],
    alerts: {
      webhooks: ((o.alerts?.webhooks as Settings['alerts']['webhooks'] | undefined) ?? []).slice(),
      email: {
        ...d.alerts.email,
        ...(o.alerts?.email as Partial<Settings['alerts']['email']> | undefined),
      },
    },
    verification: { ...d.verification, ...o.verification } as Settings['verification'],
  };
}

/** Consequences a PUT announces before they happen (the page asks for confirmation on these). */
export function settingsWarnings(previous: Settings, next: Settings): SettingsWarning[] {
  const warnings: SettingsWarning[] = [];
  if (previous.cloudDr.enabled && !next.cloudDr.enabled) {
    warnings.push({
      code: 'cloud_dr_opt_out',
      message: 'Turning Cloud DR off deletes the cloud copy of this installation',
    });
  }
  if (previous.autoBackup.enabled && !next.autoBackup.enabled) {
    warnings.push({
      code: 'auto_backup_off',
      message: 'Automatic backups are off: only backups you start yourself will be made',
    });
  }
  return warnings;
}
