// The settings form: load, Save All Settings with field errors from the API, DR status and maintenance.
import { ApiError, api, signedOut } from './api.js';
import { confirmAction, showJobProgress } from './dialogs.js';
import { bytes, dateTime, el, tell } from './format.js';
import { setupOffsite, sftpMethod, syncOffsiteView } from './offsite.js';

const $ = (id) => document.getElementById(id);
let loaded = {};
/**
 * True while the form holds the agent's saved settings (GET /settings answered). A form the load failed
 * for shows defaults: saving it would turn automatic backups and every destination off, so Save waits.
 */
let formLoaded = false;

const getPath = (object, path) =>
  path.split('.').reduce((value, key) => (value == null ? undefined : value[key]), object);
function setPath(object, path, value) {
  const keys = path.split('.');
  let node = object;
  for (const key of keys.slice(0, -1)) {
    if (typeof node[key] !== 'object' || node[key] === null) node[key] = {};
    node = node[key];
  }
  node[keys.at(-1)] = value;
}
function deletePath(object, path) {
  const keys = path.split('.');
  const parent = getPath(object, keys.slice(0, -1).join('.'));
  if (parent && typeof parent === 'object') delete parent[keys.at(-1)];
}
/** How a secret reads back: `{set: true|false}`, never its value. */
const isSetMarker = (value) =>
  value && typeof value === 'object' && typeof value.set === 'boolean' && Object.keys(value).length === 1;

/** Removes every `{"set": …}` marker; collectSettings puts back the ones to keep. */
function withoutMarkers(value) {
  if (Array.isArray(value)) return value.map(withoutMarkers);
  if (!value || typeof value !== 'object') return value;
  const out = {};
  for (const [key, inner] of Object.entries(value)) if (!isSetMarker(inner)) out[key] = withoutMarkers(inner);
  return out;
}

const controls = () => [...document.querySelectorAll('#settings-form [data-path]')];
/**
 * The controls whose value is sent: not one the agent cannot use (the Cloud DR switch on a controller
 * without a DR endpoint shows off and disabled, while the saved setting is kept as it is).
 */
const sentControls = () => controls().filter((control) => control.dataset.unavailable === undefined);

/**
 * The settings as the form shows them, unsaved. A blank secret that is stored is sent back as `{set: true}`
 * (the API keeps the stored value); blank optional fields are left out.
 */
export function collectSettings() {
  const settings = withoutMarkers(structuredClone(loaded));
  delete settings.status;
  delete settings.warnings;
  delete settings.revision;
  for (const control of sentControls()) {
    const path = control.dataset.path;
    if (control.type === 'checkbox') setPath(settings, path, control.checked);
    else if (control.value.trim() === '') {
      if (control.dataset.secret !== undefined && getPath(loaded, path)?.set === true)
        setPath(settings, path, { set: true });
      else deletePath(settings, path);
    } else if (control.dataset.type === 'number') setPath(settings, path, Number(control.value));
    else setPath(settings, path, control.dataset.secret === undefined ? control.value.trim() : control.value);
  }
  // Only the chosen SFTP sign-in method is sent, and none at all if nothing was given.
  const sftp = settings.offsite?.sftp;
  if (sftp?.auth) {
    const auth = sftp.auth;
    if (sftpMethod() === 'password') {
      delete auth.privateKey;
      delete auth.passphrase;
    } else delete auth.password;
    if (!('password' in auth) && !('privateKey' in auth)) delete sftp.auth;
  }
  return settings;
}

/**
 * Passwords the server receives, with the address they were saved for (host, port and its default): the
 * agent keeps one only for that address (422 otherwise), so a changed address asks for it again here.
 */
const SENT_SECRETS = [
  {
    secret: 'offsite.sftp.auth.password',
    host: 'offsite.sftp.host',
    port: 'offsite.sftp.port',
    defaultPort: 22,
  },
  { secret: 'offsite.smb.password', host: 'offsite.smb.host', port: 'offsite.smb.port', defaultPort: 445 },
];
const KEEP_HINT = 'Saved. Leave empty to keep it.';

/** A host as the agent compares it (hostKey in agent/settings/model.ts): no case, spaces, final dot or IPv6 brackets. */
function hostKey(host) {
  let h = String(host ?? '')
    .trim()
    .toLowerCase();
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

/** What of a secret's address the form changed ('host', 'port'), or undefined when it is the saved one. */
function addressChange({ host, port, defaultPort }) {
  const typedHost = hostKey($(`f-${host.replaceAll('.', '-')}`)?.value);
  if (!typedHost) return undefined; // a blank host reaches nobody: the agent keeps the secret
  if (typedHost !== hostKey(getPath(loaded, host))) return 'host';
  const typedPort = ($(`f-${port.replaceAll('.', '-')}`)?.value ?? '').trim();
  const savedPort = getPath(loaded, port) ?? defaultPort;
  return (typedPort === '' ? defaultPort : Number(typedPort)) !== savedPort ? 'port' : undefined;
}

/** The placeholder of each saved password: kept, or to be entered again because its address changed. */
function secretHints() {
  for (const entry of SENT_SECRETS) {
    const control = $(`f-${entry.secret.replaceAll('.', '-')}`);
    if (!control || getPath(loaded, entry.secret)?.set !== true) continue;
    const change = addressChange(entry);
    control.placeholder = change ? `Enter the password again: the ${change} changed` : KEEP_HINT;
    if (change) control.dataset.reenter = change;
    else delete control.dataset.reenter;
  }
}

function fill(settings) {
  for (const control of controls()) {
    const value = getPath(settings, control.dataset.path);
    if (control.type === 'checkbox') control.checked = Boolean(value);
    else if (isSetMarker(value) || (control.dataset.secret !== undefined && value === undefined)) {
      control.value = '';
      control.placeholder = value?.set ? KEEP_HINT : '';
    } else control.value = value ?? '';
  }
  syncOffsiteView(settings);
  secretHints();
  showDrAvailability();
  showZone();
  const auto = settings.status?.autoBackup;
  const result = auto?.lastResult;
  $('auto-last').textContent = auto?.lastRunAt
    ? `${dateTime(auto.lastRunAt)}${result ? (result.ok ? ' · succeeded' : ` · failed: ${result.error ?? 'unknown error'}`) : ''}`
    : 'Never';
  $('auto-next').textContent =
    settings.autoBackup?.enabled && auto?.nextRunAt ? dateTime(auto.nextRunAt) : 'Off';
}

/** The schedules' words; `{zone}` is the clock they run by. */
const SCHEDULE_WORDS = {
  hourly: 'Hourly (on the hour)',
  daily: 'Daily (02:00, {zone})',
  weekly: 'Weekly (Sunday 02:00, {zone})',
  monthly: 'Monthly (1st, 02:00, {zone})',
};

/** True for a time zone name the browser knows (as the agent checks it: Intl). */
function isTimeZone(zone) {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

/**
 * The time zone the schedules run in (autoBackup.timezone, also maintenance's and verification's):
 * the one typed, when it is a zone, else the saved one; undefined for the controller's own.
 */
function scheduleZone() {
  const typed = $('f-autoBackup-timezone').value.trim();
  if (typed && isTimeZone(typed)) return typed;
  return loaded.autoBackup?.timezone || undefined;
}

/** The schedule's options and the maintenance line say the clock they run by. */
function showZone() {
  const zone = scheduleZone();
  for (const option of $('f-autoBackup-schedule').options)
    if (SCHEDULE_WORDS[option.value])
      option.textContent = SCHEDULE_WORDS[option.value].replace(
        '{zone}',
        zone ? `${zone} time` : 'controller time',
      );
  $('maint-zone').textContent = zone ? `${zone} time` : 'the controller’s time';
}

/** The zones the browser knows, offered as the time zone field is typed in. */
function listZones() {
  const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
  $('time-zones').replaceChildren(...zones.map((zone) => el('option', { value: zone })));
}

/** False once the agent said it has no Cloud DR endpoint (DrStatus.configured), true until then. */
let drAvailable = true;

function drWarning() {
  $('dr-off-warning').hidden = !drAvailable || $('f-cloudDr-enabled').checked;
}

/**
 * Without a DR endpoint (not set up at installation) the switch cannot do anything: it shows off and
 * disabled, with why in the owner's words, and the setting for the installer in a smaller hint. A switch
 * shown on beside "Cloud DR is off" would say both at once.
 */
function showDrAvailability() {
  const control = $('f-cloudDr-enabled');
  let note = $('dr-unavailable');
  if (!note && !drAvailable) {
    note = el(
      'div',
      { id: 'dr-unavailable' },
      el(
        'p',
        { id: 'dr-unavailable-text' },
        'Cloud DR is not available on this controller (it was not set up at installation).',
      ),
      el(
        'p',
        { className: 'hint' },
        'For the installer: no Cloud DR endpoint is configured (GEM_DR_URL is not set).',
      ),
    );
    control.closest('.field').after(note);
  }
  if (note) note.hidden = drAvailable;
  const described = (control.getAttribute('aria-describedby') ?? '')
    .split(' ')
    .filter((id) => id && id !== 'dr-unavailable-text');
  if (drAvailable) {
    // Back from unavailable: the switch shows the saved setting again (an unsaved toggle is left alone).
    if (control.dataset.unavailable !== undefined) control.checked = Boolean(loaded.cloudDr?.enabled);
    control.disabled = false;
    delete control.dataset.unavailable;
  } else {
    control.disabled = true;
    control.dataset.unavailable = '';
    control.checked = false;
    described.push('dr-unavailable-text');
  }
  control.setAttribute('aria-describedby', described.join(' '));
  drWarning();
}

function clearFieldErrors() {
  for (const node of document.querySelectorAll('#settings-form .field-error')) node.remove();
  for (const control of document.querySelectorAll('#settings-form [aria-invalid]')) {
    control.removeAttribute('aria-invalid');
    const described = (control.getAttribute('aria-describedby') ?? '')
      .split(' ')
      .filter((id) => !id.startsWith('err-'));
    if (described.length) control.setAttribute('aria-describedby', described.join(' '));
    else control.removeAttribute('aria-describedby');
  }
}

/** Takes the error off a field once it is edited: the mark of an old mistake must not stay on a corrected value. */
function clearFieldError(event) {
  const control = event.target;
  if (!(control instanceof Element) || control.getAttribute('aria-invalid') !== 'true') return;
  document.getElementById(`err-${control.id}`)?.remove();
  control.removeAttribute('aria-invalid');
  const described = (control.getAttribute('aria-describedby') ?? '')
    .split(' ')
    .filter((id) => id && !id.startsWith('err-'));
  if (described.length) control.setAttribute('aria-describedby', described.join(' '));
  else control.removeAttribute('aria-describedby');
}

/** What to type, for a field the agent says is missing (the schema's "required when enabled"). */
const MISSING_WORDS = {
  host: 'Enter the server’s host name or IP address.',
  username: 'Enter the user name to sign in with.',
  password: 'Enter the password.',
  remotePath: 'Enter the folder on the server for the backups.',
  auth: 'Enter a password or a private key.',
  privateKey: 'Paste the private key.',
  bucket: 'Enter the bucket’s name.',
  region: 'Enter the bucket’s region.',
  endpoint: 'Enter the storage’s endpoint URL.',
  accessKeyId: 'Enter the access key ID.',
  secretAccessKey: 'Enter the secret access key.',
  share: 'Enter the share’s name, as the PC or NAS shows it.',
  from: 'Enter the address the emails come from.',
  to: 'Enter at least one address to send the emails to.',
};

/**
 * The agent's words for a field ("required when enabled", "must be at least 1") as a sentence that
 * starts with a capital and says what is expected: "Enter the bucket’s name.", "Backups to keep must be at least 1."
 */
function fieldWords(control, fieldPath, message) {
  let text = message.startsWith(`${fieldPath}: `) ? message.slice(fieldPath.length + 2) : message;
  if (/^(required when enabled|is required|must not be empty)$/.test(text)) {
    const key = fieldPath.split('.').pop();
    const label = control.labels?.[0]?.textContent.trim();
    return (
      MISSING_WORDS[key] ??
      `Enter ${label ? `“${label}”` : 'this field'}: it is needed while this is turned on.`
    );
  }
  if (/^(must|is) /.test(text)) {
    // "Backups to keep (1–100)" reads "Backups to keep must be at least 1."
    const label = control.labels?.[0]?.textContent.replace(/\s*\([^)]*\)\s*$/, '').trim();
    text = label ? `${label} ${text}` : `This ${text}`;
  }
  text = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

/**
 * Puts an API field error next to its field (or its nearest named parent); false if no field matches.
 * `focus`: only the first of several errors takes the focus.
 */
function showFieldError(fieldPath, message, focus = true) {
  const candidates = controls();
  let control;
  for (let path = fieldPath; path && !control; path = path.split('.').slice(0, -1).join('.')) {
    control =
      candidates.find((c) => c.dataset.path === path) ??
      candidates.find((c) => c.dataset.path.startsWith(`${path}.`));
  }
  if (!control) return false;
  // Reveal it if it sits in a closed destination or an unselected tab.
  const provider = control.closest('.provider');
  if (provider) for (const part of provider.querySelectorAll('.provider-body, .row')) part.hidden = false;
  const panel = control.closest('[role=tabpanel]');
  if (panel?.hidden)
    document.querySelector('#sftp-auth .tabs').selectAuth(panel.id.endsWith('key') ? 'key' : 'password');
  const id = `err-${control.id}`;
  // Two errors on one control (a section's parent path): the first stays.
  if (document.getElementById(id)) return true;
  control
    .closest('.field')
    .append(el('p', { className: 'field-error', id }, fieldWords(control, fieldPath, message)));
  control.setAttribute('aria-invalid', 'true');
  control.setAttribute(
    'aria-describedby',
    [control.getAttribute('aria-describedby'), id].filter(Boolean).join(' '),
  );
  if (focus) control.focus();
  return true;
}

/** Marks every field an API error names (details.issues, else details.field); how many were marked. */
function showFieldErrors(error) {
  const issues = Array.isArray(error.details?.issues) ? error.details.issues : [];
  const list = issues.length
    ? issues
    : error.details?.field
      ? [{ field: error.details.field, message: error.message }]
      : [];
  let placed = 0;
  for (const issue of list) {
    if (typeof issue?.field !== 'string' || typeof issue.message !== 'string') continue;
    if (showFieldError(issue.field, issue.message, placed === 0)) placed += 1;
  }
  return placed;
}

/** Turning Cloud DR off deletes the cloud copy at once, like any other destructive action it asks first. */
function confirmCloudDrOff() {
  return confirmAction({
    title: 'Turn off Cloud Disaster Recovery?',
    body: [
      'The cloud copy of this installation is deleted now, when the settings are saved.',
      'If this controller is then lost, there is no cloud copy to recover from. Turning it back on later pushes a new copy.',
    ],
    confirmLabel: 'Turn Off and Delete Cloud Copy',
  });
}

/** The agent's warnings as they read after the save: done, in the past tense. */
const SAVED_WARNINGS = {
  cloud_dr_opt_out:
    'Cloud Disaster Recovery was turned off, and the cloud copy of this installation was marked for deletion (the agent keeps trying until the cloud confirms it).',
};

/** A field's name as the page shows it, with its destination's (e.g. "SFTP: Host"). */
function fieldName(control) {
  const label = control.labels?.[0]?.textContent.trim() || control.id;
  const section = control.closest('.provider');
  const title = section && document.getElementById(section.getAttribute('aria-labelledby') ?? '');
  return title ? `${title.textContent.trim()}: ${label}` : label;
}

/** The form's controls whose value differs from the settings it loaded (its unsaved edits). */
function editedControls() {
  return sentControls().filter((control) => {
    const saved = getPath(loaded, control.dataset.path);
    return control.type === 'checkbox'
      ? control.checked !== Boolean(saved)
      : control.dataset.secret !== undefined || isSetMarker(saved)
        ? control.value !== ''
        : control.value.trim() !== String(saved ?? '');
  });
}

/** The names of the fields the form changed from the settings it loaded (unsaved edits). */
function editedFields() {
  return [...new Set(editedControls().map(fieldName))];
}

/** The SFTP sign-in method saved in `settings`: 'key' or 'password'. */
const savedSftpMethod = (settings) =>
  'privateKey' in (settings?.offsite?.sftp?.auth ?? {}) ? 'key' : 'password';

/**
 * After a 412: loads the current settings and puts this page's edits back on top of them, unless the
 * other writer changed one of the same fields (or the SFTP sign-in method): then the form shows the
 * current settings and the clashing fields' names are returned. A change made elsewhere to other
 * fields (another section, the SFTP host key the agent pins at the first connection) is kept, and
 * this page's edits can be saved over it.
 */
async function rebaseEdits() {
  const edits = editedControls().map((control) => ({
    control,
    value: control.type === 'checkbox' ? control.checked : control.value,
  }));
  const method = sftpMethod();
  const current = await api('/settings');
  const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
  // A clash: the other writer changed the field, to something else than this page's value.
  const clashes = ({ control, value }) => {
    const now = getPath(current, control.dataset.path);
    if (same(now, getPath(loaded, control.dataset.path))) return false;
    if (control.type === 'checkbox') return Boolean(now) !== value;
    return isSetMarker(now) || String(now ?? '') !== String(value).trim();
  };
  const clash = [...new Set(edits.filter(clashes).map(({ control }) => fieldName(control)))];
  if (method !== savedSftpMethod(loaded) && savedSftpMethod(current) !== savedSftpMethod(loaded))
    clash.push('SFTP sign-in method');
  loaded = current;
  fill(current);
  if (clash.length) return clash;
  if (method !== savedSftpMethod(current)) document.querySelector('#sftp-auth .tabs').selectAuth(method);
  for (const { control, value } of edits) {
    if (control.type === 'checkbox') control.checked = value;
    else control.value = value;
    control.dispatchEvent(new Event('input', { bubbles: true }));
    control.dispatchEvent(new Event('change', { bubbles: true }));
  }
  secretHints();
  drWarning();
  return [];
}

/**
 * The save was refused because the settings changed elsewhere since this page loaded them (412
 * `settings_changed`: another tab or person, a script, the agent itself). Saving the form anyway would
 * put their change back silently. When none of this page's edits touches what changed (rebaseEdits),
 * they go on top of the current settings and true is returned: save again. Otherwise the form shows
 * the current settings and says which edits of this page were dropped, to be made again.
 */
async function reloadAfterConflict(status) {
  const edits = editedFields();
  clearFieldErrors();
  let clash;
  try {
    clash = await rebaseEdits();
    if (clash.length === 0) return true;
  } catch (error) {
    tell(
      status,
      `Not saved: the settings were changed elsewhere since this page loaded them, and the current settings could not be loaded (${error.message}). Reload the page.`,
      'bad',
    );
    return false;
  }
  const dropped = edits.length
    ? `Your unsaved changes were discarded (${edits.join(', ')}), since ${clash.join(', ')} changed there too: check the settings, make them again and save.`
    : 'Check the settings and save again.';
  tell(
    status,
    `Not saved: the settings were changed elsewhere (another tab, another person or the agent itself) since this page loaded them. The form now shows the current settings. ${dropped}`,
    'bad',
  );
  return false;
}

/**
 * Number fields the settings always have: left empty, collectSettings leaves them out and the agent keeps
 * the old value, so "Settings saved." would hide that the field was not taken.
 */
const REQUIRED_NUMBERS = ['autoBackup.maxBackups', 'maintenance.retentionDays'];

/** Marks every empty required number field (focus on the first); how many were. */
function refuseEmptyRequired() {
  const empty = controls().filter(
    (control) => REQUIRED_NUMBERS.includes(control.dataset.path) && control.value.trim() === '',
  );
  empty.forEach((control, i) => {
    showFieldError(control.dataset.path, 'Enter a number: this setting cannot be left empty.', i === 0);
  });
  return empty.length;
}

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
/** The names shown in a confirmation before the rest is counted: the dialog must fit the screen. */
const LISTED_BACKUPS = 12;

/** Destinations' names as the page shows them. */
const OFFSITE_NAMES = { sftp: 'SFTP', s3: 'S3', smb: 'SMB' };

/** The local backups listed in the confirmation: name, date, kind; the rest counted. */
function backupList(backups) {
  const shown = backups.slice(0, LISTED_BACKUPS);
  const items = shown.map((b) =>
    el('li', { 'data-filename': b.filename }, `${b.filename} (${dateTime(b.createdAt)}, ${b.kind})`),
  );
  if (backups.length > shown.length) items.push(el('li', {}, `and ${backups.length - shown.length} more`));
  return el('ul', { className: 'prune-preview' }, ...items);
}

/**
 * Lowering "Backups to keep" deletes backups at the next backup (and offsite copies at the next upload
 * or Sync), without anything else asking: so this asks first, naming the local backups that go (the
 * agent's plan with the new number, the next backup counted). Resolves true to save; false when the user
 * cancelled or the plan could not be read (the status says which). Not lowered, or nothing to delete
 * anywhere: true without asking.
 */
async function confirmFewerBackups(settings, status) {
  const from = loaded.autoBackup?.maxBackups;
  const to = settings.autoBackup?.maxBackups;
  // Out of range, the agent refuses the save itself (422, marked at the field): nothing to ask.
  if (!Number.isInteger(from) || !Number.isInteger(to) || to < 1 || to > 100 || to >= from) return true;
  let preview;
  try {
    preview = await api(`/retention/preview?maxBackups=${to}`);
  } catch (error) {
    tell(
      status,
      `Not saved: which backups a lower “Backups to keep” deletes could not be checked (${error.message}). Nothing was changed.`,
      'bad',
    );
    return false;
  }
  const going = preview?.nextBackup?.delete ?? [];
  const offsite = Object.entries(settings.offsite ?? {})
    .filter(([, destination]) => destination?.enabled === true)
    .map(([name]) => OFFSITE_NAMES[name] ?? name);
  if (going.length === 0 && offsite.length === 0) return true;
  const body = [
    `“Backups to keep” goes down from ${from} to ${to}. The next backup (automatic or made by hand) keeps the newest ${to}, itself included, and deletes older ones. Pinned backups are never deleted.`,
  ];
  if (going.length) body.push(`It deletes ${plural(going.length, 'local backup')}:`, backupList(going));
  else body.push('No local backup is deleted: this controller holds no more than that.');
  if (offsite.length)
    body.push(
      `Copies at ${offsite.join(', ')} beyond the newest ${to} are deleted at the next upload or Sync.`,
    );
  const ok = await confirmAction({
    title: `Keep only ${plural(to, 'backup')}?`,
    body,
    confirmLabel: going.length
      ? `Save and Delete ${plural(going.length, 'Backup')}`
      : `Save: Keep ${plural(to, 'Backup')}`,
  });
  if (!ok)
    tell(
      status,
      `Not saved: “Backups to keep” is still ${from}, and no backup is deleted. Your changes are still in the form.`,
    );
  return ok;
}

/**
 * Turning the history clean-up on, or keeping fewer days while it is on, deletes history at its next
 * run without anything else asking: so this asks first, with the cut-off the setting means (rows
 * recorded before it go; the agent has no count of them before the run). Resolves true to save; false
 * when the user cancelled (the status says so). Nothing more deleted than before, or than the
 * `agreedDays` the user already saved with: true without asking.
 */
async function confirmHistoryPurge(settings, status, agreedDays) {
  const from = loaded.maintenance ?? {};
  const to = settings.maintenance ?? {};
  const days = to.retentionDays;
  // Out of range, the agent refuses the save itself (422, marked at the field): nothing to ask.
  if (!to.enabled || !Number.isInteger(days) || days < 1) return true;
  if (from.enabled && Number.isInteger(from.retentionDays) && days >= from.retentionDays) return true;
  if (agreedDays !== undefined && days >= agreedDays) return true;
  const cutoff = new Date(Date.now() - days * 86_400_000).toISOString();
  const zone = scheduleZone();
  const ok = await confirmAction({
    title: `Delete history older than ${plural(days, 'day')}?`,
    body: [
      from.enabled
        ? `“Keep history for” goes down from ${from.retentionDays} to ${plural(days, 'day')}.`
        : `The automatic clean-up of history is turned on, keeping ${plural(days, 'day')}.`,
      el(
        'p',
        {},
        'At its next run (daily at 03:00, ',
        zone ? `${zone} time` : 'the controller’s time',
        '), every history row older than that is permanently deleted: as of now, everything recorded before ',
        el('strong', { id: 'purge-cutoff' }, dateTime(cutoff)),
        ' (attribute history, request history and access log).',
      ),
      'They cannot be brought back except by restoring an older backup. Configuration and current values are not touched.',
    ],
    confirmLabel: `Save: Keep ${plural(days, 'Day')} of History`,
  });
  if (!ok)
    tell(
      status,
      'Not saved: the history clean-up is as it was, and no history is deleted. Your changes are still in the form.',
    );
  return ok;
}

/** An edit after a save makes "Settings saved." untrue for what the form shows: it goes. */
function clearSavedStatus() {
  const status = $('settings-status');
  if (status.classList.contains('ok')) tell(status, '');
}

/** How long a save waits for the agent's answer before it says the outcome is unknown (a stopped or hung agent). */
const SAVE_TIMEOUT_MS = 30_000;

async function save(event) {
  event.preventDefault();
  const status = $('settings-status');
  const button = $('save-settings');
  // Enter in a field submits even with Save disabled in some browsers: the form of defaults is never sent.
  if (!formLoaded) return;
  clearFieldErrors();
  const empty = refuseEmptyRequired();
  if (empty) {
    tell(status, `Not saved: correct the ${empty === 1 ? 'field' : `${empty} fields`} marked below.`, 'bad');
    return;
  }
  const settings = collectSettings();
  button.disabled = true;
  const fewer = await confirmFewerBackups(settings, status);
  const purge = fewer && (await confirmHistoryPurge(settings, status));
  button.disabled = false;
  if (!purge) return;
  if (loaded.cloudDr?.enabled === true && settings.cloudDr?.enabled === false) {
    button.disabled = true;
    const ok = await confirmCloudDrOff();
    button.disabled = false;
    if (!ok) {
      tell(status, 'Not saved: Cloud Disaster Recovery is still on.');
      return;
    }
  }
  status.className = 'result';
  status.textContent = 'Saving…';
  button.disabled = true;
  try {
    // Saved only if nobody changed the settings since this page loaded them (else 412 settings_changed);
    // a change elsewhere to other fields is merged once and the save tried again.
    let answer;
    let merged = false;
    for (let body = settings; ; body = collectSettings()) {
      const headers = loaded.revision ? { 'if-match': `"${loaded.revision}"` } : {};
      try {
        answer = await api('/settings', { method: 'PUT', json: body, headers, timeoutMs: SAVE_TIMEOUT_MS });
        break;
      } catch (error) {
        if (merged || !(error instanceof ApiError && error.code === 'settings_changed')) throw error;
        if (!(await reloadAfterConflict(status))) return;
        merged = true;
        // The change made elsewhere (fewer days kept) may make the merged save delete more history than
        // the form did: asked again then.
        const agreed = settings.maintenance?.enabled ? settings.maintenance.retentionDays : undefined;
        if (!(await confirmHistoryPurge(collectSettings(), status, agreed))) return;
      }
    }
    loaded = answer && typeof answer === 'object' && answer.autoBackup ? answer : await api('/settings');
    fill(loaded);
    const warnings = (answer?.warnings ?? []).map((w) => SAVED_WARNINGS[w.code] ?? w.message).join(' ');
    const saved = merged
      ? 'Settings saved, together with a change made elsewhere meanwhile (another tab, another person or the agent itself).'
      : 'Settings saved.';
    tell(status, warnings ? `${saved} ${warnings}` : saved, 'ok');
    await loadDrStatus();
  } catch (error) {
    if (error instanceof ApiError && error.code === 'settings_changed') {
      // Changed elsewhere again during the retry: the form holds the newest settings and the edits.
      if (await reloadAfterConflict(status))
        tell(
          status,
          'Not saved: the settings were changed elsewhere again while saving. Your changes are still in the form: save again.',
          'bad',
        );
      return;
    }
    status.className = 'result bad';
    if (error instanceof ApiError && error.code === 'no_answer') {
      // The PUT may have landed or not: say so rather than "Not saved", and never wait for ever.
      status.textContent =
        'The agent did not answer; the settings may not be saved: reload the page to check.';
      return;
    }
    const placed = error instanceof ApiError ? showFieldErrors(error) : 0;
    status.textContent = placed
      ? `Not saved: correct the ${placed === 1 ? 'field' : `${placed} fields`} marked below.`
      : `Not saved: ${error.message}`;
  } finally {
    button.disabled = !formLoaded;
  }
}

/** How long the page waits before it asks for the settings again after a failed load: doubles up to the last. */
const RELOAD_DELAYS_MS = [2000, 4000, 8000, 15_000, 30_000];
let reloadTimer;
let reloadAttempt = 0;
let loading;

/**
 * The load failed: Save is disabled and says why, with a Retry; the page asks again on its own until
 * the agent answers (not after a 401: the page is back at sign-in).
 */
function showLoadFailure(error) {
  formLoaded = false;
  const button = $('save-settings');
  button.disabled = true;
  button.title = 'The saved settings could not be loaded: nothing is saved until they are.';
  const status = $('settings-status');
  const message = String(error.message ?? error);
  const retry = el(
    'button',
    { type: 'button', className: 'btn btn-small', id: 'settings-retry', onclick: () => loadSettings() },
    'Retry',
  );
  status.className = 'result bad';
  status.replaceChildren(
    `Settings could not be loaded: ${message}${/[.?!]$/.test(message) ? '' : '.'} Saving is off until they are, so that the form’s defaults never replace them. `,
    retry,
  );
  clearTimeout(reloadTimer);
  if (error.status === 401) return;
  const delay = RELOAD_DELAYS_MS[Math.min(reloadAttempt++, RELOAD_DELAYS_MS.length - 1)];
  reloadTimer = setTimeout(() => {
    if (!$('app').hidden) loadSettings();
  }, delay);
}

/** Loads the saved settings into the form; on failure Save stays off until a load succeeds. */
export function loadSettings() {
  loading ??= (async () => {
    clearTimeout(reloadTimer);
    const retry = $('settings-retry');
    if (retry) retry.disabled = true;
    try {
      loaded = await api('/settings');
      formLoaded = true;
      reloadAttempt = 0;
      fill(loaded);
      const button = $('save-settings');
      button.disabled = false;
      button.removeAttribute('title');
      // The load failure's line goes; any other line (a save's result) stays.
      if ($('settings-status').querySelector('#settings-retry')) tell($('settings-status'), '');
    } catch (error) {
      showLoadFailure(error);
    } finally {
      loading = undefined;
    }
  })();
  return loading;
}

/** One DR push record (DrPushRecord) in words. */
function pushText(push) {
  if (!push) return 'Never';
  const size = push.size ? ` · ${bytes(push.size)}` : '';
  if (push.outcome === 'succeeded') return `${dateTime(push.at)}${size} · succeeded`;
  if (push.outcome === 'skipped')
    return `${dateTime(push.at)} · skipped${push.reason ? `: ${push.reason}` : ''}`;
  return `${dateTime(push.at)} · failed: ${push.error?.message ?? push.reason ?? 'unknown error'}`;
}

/** Shows the last and next Cloud DR push, or why DR is not pushing. */
export async function loadDrStatus() {
  try {
    const status = await api('/dr/status');
    drAvailable = status.configured !== false;
    showDrAvailability();
    $('dr-last').textContent = status.recovered
      ? `${status.lastPush ? `${pushText(status.lastPush)} · ` : ''}Recovered from the cloud ${dateTime(status.recovered.at)} (a backup made ${dateTime(status.recovered.createdAt)}); the next push replaces it`
      : pushText(status.lastPush);
    $('dr-next').textContent = !drAvailable
      ? 'Not available on this controller'
      : status.running
        ? 'Pushing now…'
        : status.nextRunAt
          ? dateTime(status.nextRunAt)
          : (status.reason ?? 'Off');
    $('dr-push').disabled = !status.enabled || status.running;
  } catch (error) {
    $('dr-last').textContent = error.status === 404 ? 'Not available' : error.message;
    $('dr-push').disabled = true;
  }
}

/** What a push that did not succeed left behind, in words: a failure must never leave an older success shown. */
function pushFailureText(job) {
  const reason = job.error?.message;
  if (job.state === 'cancelled') return 'Push cancelled: the cloud copy was not updated.';
  if (job.state === 'interrupted')
    return 'Push cut short by an agent restart: the cloud copy was not updated. Push again.';
  return `Push failed: ${reason ?? 'unknown error'}. The cloud copy was not updated.`;
}

/** A push never sends a backup older than this, unless it finishes one it had begun (agent/dr/push.ts). */
const PUSH_FRESH_MS = 24 * 3600_000;

/** The backup a push sends (its dr-push-backup notice, or its result), in words: which one, how big. */
function pushedBackupText(pushed) {
  const made = pushed.temporary ? 'a backup made for this push,' : 'the backup of';
  return `${made} ${dateTime(pushed.createdAt)} (${bytes(pushed.size)})`;
}

/** A push that sent a backup more than a day old still succeeded, but the cloud holds data that old. */
function pushProblems(job) {
  const pushed = job.result;
  if (!pushed?.createdAt || Date.now() - Date.parse(pushed.createdAt) <= PUSH_FRESH_MS) return [];
  return [
    `The backup sent is more than a day old (made ${dateTime(pushed.createdAt)}): the cloud holds data that old. Check that automatic backups run.`,
  ];
}

/** How a push's progress dialog reads: Push Now, and a push found running after a reload. */
export function pushProgress() {
  return {
    title: 'Pushing to Cloud Disaster Recovery',
    // Which backup goes, as soon as the push has chosen it, before it is hashed or sent.
    onNotice: (notice, data, { title }) => {
      if (notice === 'dr-push-backup' && data) title.textContent = `Pushing ${pushedBackupText(data)}`;
    },
    describe: (done, { title }) => {
      // Also when the push ended before this page heard its notice (a small upload, a slow reload).
      title.textContent = `Pushed ${pushedBackupText(done.result)}`;
      return `In the cloud now: ${pushedBackupText(done.result)}.`;
    },
    problems: pushProblems,
  };
}

async function pushNow() {
  const out = $('dr-result');
  tell(out, '');
  try {
    const { jobId } = await api('/dr/push', { method: 'POST' });
    const job = await showJobProgress(jobId, pushProgress());
    if (job.state === 'succeeded') tell(out, `Cloud copy updated: ${pushedBackupText(job.result)}.`, 'ok');
    else tell(out, pushFailureText(job), 'bad');
  } catch (error) {
    // Signed out meanwhile: the job goes on unfollowed, and what follows it belongs to that sign-in.
    if (signedOut(error)) return;
    tell(out, `Push failed: ${error.message}`, 'bad');
  }
  await loadDrStatus();
}

const TABLE_NAMES = {
  attributeHistory: 'Attribute history',
  requestHistory: 'Request history',
  accessLog: 'Access log',
};

function showMaintenance(result) {
  const out = $('maintenance-result');
  const deleted = result?.deleted ?? {};
  out.className = 'result ok';
  out.replaceChildren(
    el(
      'p',
      {},
      `Deleted ${Number(result?.total ?? 0).toLocaleString()} old row${result?.total === 1 ? '' : 's'}.`,
    ),
    el(
      'ul',
      { className: 'counts' },
      ...Object.entries(deleted).map(([table, count]) =>
        el(
          'li',
          { 'data-table': table },
          `${TABLE_NAMES[table] ?? table}: `,
          el('strong', {}, Number(count).toLocaleString()),
        ),
      ),
    ),
  );
}

/**
 * The run uses the SAVED days: when the field beside the button says otherwise, it does not run (the
 * user would lose rows they meant to keep); otherwise it asks first, naming the days and what goes.
 */
async function confirmMaintenance(out) {
  const saved = (await api('/settings'))?.maintenance?.retentionDays;
  const field = $('f-maintenance-retentionDays');
  const typed = field.value.trim();
  if (!Number.isInteger(saved)) {
    tell(out, 'Not run: the saved history setting could not be read. Reload the page.', 'bad');
    return false;
  }
  if (typed === '' || Number(typed) !== saved) {
    tell(
      out,
      `Not run: “Keep history for” shows ${typed === '' ? 'nothing' : `${typed} days`}, but the saved setting is ${saved} days, and maintenance uses the saved one. Save All Settings first, then run maintenance.`,
      'bad',
    );
    field.focus();
    return false;
  }
  const ok = await confirmAction({
    title: 'Delete old history now?',
    body: [
      `History rows older than ${saved} day${saved === 1 ? '' : 's'} (the saved setting) are permanently deleted now: attribute history, request history and access log.`,
      'They cannot be brought back except by restoring an older backup. Configuration and current values are not touched.',
    ],
    confirmLabel: `Delete History Older Than ${saved} Day${saved === 1 ? '' : 's'}`,
  });
  if (!ok) tell(out, 'Maintenance not run: nothing was deleted.');
  return ok;
}

let maintenanceBusy = false;

async function runMaintenance() {
  if (maintenanceBusy) return;
  maintenanceBusy = true;
  const out = $('maintenance-result');
  const button = $('run-maintenance');
  tell(out, '');
  try {
    // The button stays enabled while the dialog is open, so focus comes back to it on Cancel.
    if (!(await confirmMaintenance(out))) return;
    button.disabled = true;
    tell(out, 'Running maintenance…');
    const answer = await api('/maintenance/run', { method: 'POST' });
    if (answer?.jobId && answer.deleted === undefined) {
      const job = await showJobProgress(answer.jobId, {
        title: 'Database maintenance',
        describe: (j) => `Deleted ${j.result?.total ?? 0} old rows.`,
      });
      if (job.state === 'succeeded') showMaintenance(job.result);
      else tell(out, job.error?.message ?? 'maintenance did not finish', 'bad');
    } else showMaintenance(answer);
  } catch (error) {
    if (signedOut(error)) return;
    out.className = 'result bad';
    tell(out, error.message, 'bad');
  } finally {
    button.disabled = false;
    maintenanceBusy = false;
  }
}

/** Wires the settings form, offsite sections and maintenance. */
export function setupSettings() {
  setupOffsite((provider) => collectSettings().offsite?.[provider] ?? {});
  $('settings-form').addEventListener('submit', save);
  $('settings-form').addEventListener('input', secretHints);
  $('f-autoBackup-timezone').addEventListener('input', showZone);
  listZones();
  $('settings-form').addEventListener('input', clearSavedStatus);
  $('settings-form').addEventListener('input', clearFieldError);
  $('settings-form').addEventListener('change', clearFieldError);
  $('f-cloudDr-enabled').addEventListener('change', drWarning);
  $('run-maintenance').addEventListener('click', runMaintenance);
  $('dr-push').addEventListener('click', pushNow);
}
