// Offsite destinations (SFTP, S3-compatible, SMB): their fields, Test Connection, Sync Now and the remote list.
import { api, signedOut } from './api.js';
import { loadBackups, otherInstallation, otherInstallationTag, restoreWithProgress } from './backups.js';
import { confirmAction, showJobProgress } from './dialogs.js';
import { bytes, dateTime, el, tell } from './format.js';

const S3_PRESETS = {
  aws: {
    endpoint: '',
    region: 'us-east-1',
    forcePathStyle: false,
    hint: 'Amazon S3: leave the endpoint empty; the region is the bucket’s region.',
  },
  b2: {
    endpoint: 'https://s3.us-west-004.backblazeb2.com',
    region: 'us-west-004',
    forcePathStyle: false,
    hint: 'Backblaze B2: use the S3 endpoint shown on the bucket’s page; the access key ID is the application key ID.',
  },
  wasabi: {
    endpoint: 'https://s3.us-east-1.wasabisys.com',
    region: 'us-east-1',
    forcePathStyle: false,
    hint: 'Wasabi: the endpoint must match the bucket’s region.',
  },
  minio: {
    endpoint: 'http://minio.local:9000',
    region: 'us-east-1',
    forcePathStyle: true,
    hint: 'MinIO: your server’s address and port; path-style addressing is required.',
  },
  other: {
    endpoint: '',
    region: 'us-east-1',
    forcePathStyle: true,
    hint: 'Any S3-compatible service: its endpoint URL and region; most need path-style addressing.',
  },
};

const PROVIDERS = {
  sftp: { title: 'SFTP server', blurb: 'A server you reach over SSH.' },
  s3: { title: 'S3-compatible storage', blurb: 'Amazon S3, Backblaze B2, Wasabi, MinIO and others.' },
  smb: { title: 'Windows share (SMB)', blurb: 'A shared folder on a Windows PC or NAS.' },
};

/** One labelled input bound to a settings path. */
function field(
  provider,
  name,
  label,
  { type = 'text', secret = false, hint, options, autocomplete = 'off', placeholder } = {},
) {
  const path = `offsite.${provider}.${name}`;
  const id = `f-${path.replaceAll('.', '-')}`;
  const hintId = hint ? `${id}-hint` : undefined;
  let control;
  if (options) {
    control = el(
      'select',
      { id, 'data-path': path },
      ...options.map(([value, text]) => el('option', { value }, text)),
    );
  } else if (type === 'textarea') {
    control = el('textarea', {
      id,
      'data-path': path,
      rows: 4,
      spellcheck: 'false',
      'data-secret': secret || undefined,
      'aria-describedby': hintId,
    });
  } else {
    control = el('input', {
      id,
      type: type === 'number' ? 'number' : secret ? 'password' : 'text',
      'data-path': path,
      'data-type': type === 'number' ? 'number' : undefined,
      'data-secret': secret || undefined,
      autocomplete,
      spellcheck: 'false',
      placeholder,
      'aria-describedby': hintId,
    });
  }
  return el(
    'div',
    { className: 'field' },
    el('label', { for: id }, label),
    control,
    hint ? el('p', { className: 'hint', id: hintId }, hint) : null,
  );
}

function toggle(provider, name, label) {
  const path = `offsite.${provider}.${name}`;
  const id = `f-${path.replaceAll('.', '-')}`;
  return el(
    'div',
    { className: 'field switch-field' },
    el('input', { type: 'checkbox', id, 'data-path': path, className: 'switch' }),
    el('label', { for: id }, label),
  );
}

function sftpFields() {
  const tabs = el(
    'div',
    { className: 'tabs', role: 'tablist', 'aria-label': 'SFTP sign-in method' },
    el(
      'button',
      {
        type: 'button',
        role: 'tab',
        id: 'sftp-tab-password',
        'aria-selected': 'true',
        'aria-controls': 'sftp-panel-password',
        'data-auth': 'password',
      },
      'Password',
    ),
    el(
      'button',
      {
        type: 'button',
        role: 'tab',
        id: 'sftp-tab-key',
        'aria-selected': 'false',
        'aria-controls': 'sftp-panel-key',
        'data-auth': 'key',
        tabindex: '-1',
      },
      'SSH key',
    ),
  );
  const passwordPanel = el(
    'div',
    { role: 'tabpanel', id: 'sftp-panel-password', 'aria-labelledby': 'sftp-tab-password' },
    field('sftp', 'auth.password', 'Password', { secret: true, autocomplete: 'new-password' }),
  );
  const keyPanel = el(
    'div',
    { role: 'tabpanel', id: 'sftp-panel-key', 'aria-labelledby': 'sftp-tab-key', hidden: true },
    field('sftp', 'auth.privateKey', 'Private key (OpenSSH format)', {
      type: 'textarea',
      secret: true,
      hint: 'Paste the whole key, including the BEGIN and END lines.',
    }),
    field('sftp', 'auth.passphrase', 'Key passphrase (if any)', {
      secret: true,
      autocomplete: 'new-password',
    }),
  );
  const select = (method) => {
    for (const tab of tabs.querySelectorAll('[role=tab]')) {
      const on = tab.dataset.auth === method;
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
    }
    passwordPanel.hidden = method !== 'password';
    keyPanel.hidden = method !== 'key';
    tabs.dataset.method = method;
  };
  tabs.dataset.method = 'password';
  tabs.addEventListener('click', (event) => {
    const tab = event.target.closest('[role=tab]');
    if (tab) select(tab.dataset.auth);
  });
  tabs.addEventListener('keydown', (event) => {
    if (event.key !== 'ArrowLeft' && event.key !== 'ArrowRight') return;
    const next = tabs.dataset.method === 'password' ? 'key' : 'password';
    select(next);
    tabs.querySelector(`[data-auth=${next}]`).focus();
  });
  tabs.selectAuth = select;
  return [
    el(
      'div',
      { className: 'grid' },
      field('sftp', 'host', 'Host', { placeholder: 'backup.example.com' }),
      field('sftp', 'port', 'Port', { type: 'number' }),
      field('sftp', 'username', 'Username'),
      field('sftp', 'remotePath', 'Remote folder', { placeholder: '/backups/gem' }),
    ),
    el('div', { className: 'auth', id: 'sftp-auth' }, tabs, passwordPanel, keyPanel),
    field('sftp', 'hostKeyFingerprint', 'Server host key (pinned)', {
      placeholder: 'Recorded at the first successful connection',
      hint: 'A server showing another key is refused. If the server was reinstalled, empty this field and save to trust its new key.',
    }),
  ];
}

function s3Fields() {
  const providerField = field('s3', 'provider', 'Provider', {
    options: [
      ['aws', 'Amazon S3'],
      ['b2', 'Backblaze B2'],
      ['wasabi', 'Wasabi'],
      ['minio', 'MinIO'],
      ['other', 'Other S3-compatible'],
    ],
  });
  const hint = el('p', { className: 'hint', id: 's3-provider-hint' }, S3_PRESETS.aws.hint);
  providerField.append(hint);
  return [
    el(
      'div',
      { className: 'grid' },
      providerField,
      field('s3', 'bucket', 'Bucket'),
      field('s3', 'endpoint', 'Endpoint URL', { placeholder: 'https://…' }),
      field('s3', 'region', 'Region'),
      field('s3', 'accessKeyId', 'Access key ID'),
      field('s3', 'secretAccessKey', 'Secret access key', { secret: true, autocomplete: 'new-password' }),
      field('s3', 'prefix', 'Folder prefix (optional)', { placeholder: 'gem/' }),
    ),
    toggle('s3', 'forcePathStyle', 'Path-style addressing'),
  ];
}

function smbFields() {
  return [
    el(
      'div',
      { className: 'grid' },
      field('smb', 'host', 'Host', { placeholder: 'nas.local' }),
      field('smb', 'share', 'Share', { placeholder: 'backups' }),
      field('smb', 'remotePath', 'Folder in the share'),
      field('smb', 'port', 'Port (optional)', { type: 'number', placeholder: '445' }),
      field('smb', 'username', 'Username'),
      field('smb', 'password', 'Password', { secret: true, autocomplete: 'new-password' }),
      field('smb', 'domain', 'Domain (optional)'),
    ),
  ];
}

const FIELDS = { sftp: sftpFields, s3: s3Fields, smb: smbFields };

/** The remote list; each row's action first asks `allowed(action)` (the form shows the saved settings). */
function remoteTable(provider, list, refresh, allowed) {
  if (list.length === 0) return el('p', { className: 'muted' }, 'No backups at this destination yet.');
  const rows = list.map((item) => {
    const name = item.filename ?? item.name;
    const when = item.createdAt ?? item.modifiedAt ?? item.lastModified;
    const base = `/offsite/${provider}/backups/${encodeURIComponent(name)}`;
    // Known to be another installation's (another controller's, or this one's before a keys import).
    const other = otherInstallation(item);
    return el(
      'tr',
      { 'data-filename': name },
      el('th', { scope: 'row', className: 'filename' }, el('span', {}, name), otherInstallationTag(other)),
      el('td', {}, dateTime(when)),
      el('td', { className: 'num' }, bytes(item.size)),
      el(
        'td',
        { className: 'row-actions' },
        el(
          'button',
          {
            type: 'button',
            className: 'btn btn-small',
            'aria-label': `Download ${name} to this controller`,
            onclick: async () => (await allowed('Download')) && copyToLocal(provider, name),
          },
          'Download',
        ),
        el(
          'button',
          {
            type: 'button',
            className: 'btn btn-small btn-warn',
            'aria-label': `Restore ${name}`,
            onclick: async () =>
              (await allowed('Restore')) &&
              restoreWithProgress(
                `${base}/restore`,
                name,
                `from ${PROVIDERS[provider].title}`,
                other
                  ? `This copy was made by another installation (${other}), not the one whose keys are active: restore it only if that is the data you want. After a keys import, restore the newest copy not marked "another installation" instead.`
                  : undefined,
                // Without it the agent refuses a copy of another installation than the active keys'.
                other ? { otherInstallation: true } : {},
              ),
          },
          'Restore',
        ),
        el(
          'button',
          {
            type: 'button',
            className: 'btn btn-small btn-quiet-danger',
            'aria-label': `Delete remote ${name}`,
            // A pin keeps its copies too: the agent refuses the delete until it is unpinned.
            disabled: item.pinned,
            title: item.pinned
              ? item.local
                ? 'Pinned: unpin it first to delete it'
                : 'Pinned: unpin it first (Unpin, beside it: its file here was removed) to delete it'
              : undefined,
            onclick: async () =>
              (await allowed('Delete')) && deleteRemote(provider, name, refresh, item.local === false, other),
          },
          'Delete',
        ),
        // Its file here was removed by hand, so the local list no longer shows it: unpinned from here.
        item.pinned && !item.local
          ? el(
              'button',
              {
                type: 'button',
                className: 'btn btn-small',
                'aria-label': `Unpin ${name}`,
                onclick: () => unpinRemoved(provider, name, refresh),
              },
              'Unpin',
            )
          : null,
      ),
    );
  });
  return el(
    'div',
    { className: 'table-wrap' },
    el(
      'table',
      {},
      el('caption', { className: 'visually-hidden' }, `Backups on ${PROVIDERS[provider].title}`),
      el(
        'thead',
        {},
        el(
          'tr',
          {},
          el('th', { scope: 'col' }, 'Backup'),
          el('th', { scope: 'col' }, 'Date'),
          el('th', { scope: 'col' }, 'Size'),
          el('th', { scope: 'col' }, el('span', { className: 'visually-hidden' }, 'Actions')),
        ),
      ),
      el('tbody', {}, rows),
    ),
  );
}

async function copyToLocal(provider, name) {
  const out = document.getElementById(`${provider}-remote-status`);
  try {
    const { jobId } = await api(`/offsite/${provider}/backups/${encodeURIComponent(name)}/download`, {
      method: 'POST',
    });
    await showJobProgress(jobId, {
      title: `Copying ${name} to this controller`,
      describe: () => `${name} is now in the local backups.`,
    });
    await loadBackups();
  } catch (error) {
    if (!signedOut(error)) tell(out, error.message, 'bad');
  }
}

/**
 * A remote copy's Delete, once confirmed. The question says when the copy is not on this controller
 * (`onlyThere`: it may be the backup's last copy) and when another installation made it (`other`, see
 * otherInstallation: another controller sharing the folder may count on it), as the list's row does.
 */
async function deleteRemote(provider, name, refresh, onlyThere, other) {
  const ok = await confirmAction({
    title: 'Delete the remote copy?',
    body: [
      el(
        'p',
        {},
        el('strong', {}, name),
        ` will be deleted from ${PROVIDERS[provider].title}.`,
        onlyThere
          ? ' It is not on this controller: this may be the last copy of this backup.'
          : ' Its copy on this controller stays.',
      ),
      ...(other
        ? [
            `It was made by another installation (${other}), not the one whose keys are active: another controller using this folder may count on it.`,
          ]
        : []),
      'This cannot be undone.',
    ],
    confirmLabel: 'Delete',
  });
  if (ok) await listAction(provider, `/offsite/${provider}/backups/${encodeURIComponent(name)}`, refresh);
}

/** Unpins a backup whose file here was removed (the agent unpins it from its record), once confirmed. */
async function unpinRemoved(provider, name, refresh) {
  const ok = await confirmAction({
    title: 'Unpin this backup?',
    body: [
      el(
        'p',
        {},
        el('strong', {}, name),
        ' is pinned, and its file on this controller was removed. The pin is all that keeps its offsite copies.',
      ),
      'Once it is unpinned, offsite retention may prune its copies at the next sync or backup, like those of any older backup.',
    ],
    confirmLabel: 'Unpin',
  });
  if (ok) await listAction(provider, `/backups/${encodeURIComponent(name)}/pin`, refresh);
}

/** A confirmed DELETE from the remote list: the list is drawn again, or the agent's refusal is shown. */
async function listAction(provider, path, refresh) {
  try {
    await api(path, { method: 'DELETE' });
    await refresh();
  } catch (error) {
    tell(document.getElementById(`${provider}-remote-status`), error.message, 'bad');
  }
}

/**
 * "Sync complete: 1 uploaded, 0 downloaded." from the sync job's result, then why it stopped early
 * (the destination turned off or changed meanwhile) or stopped pruning (the number kept was raised).
 * The dialog of a Sync started here and of one the page finds running after a reload both end with it.
 */
export function syncSummary(job) {
  const r = job.result ?? {};
  const n = (list) => (Array.isArray(list) ? list.length : 0);
  const removed = n(r.deleted?.remote) + n(r.deleted?.local);
  // A destination left alone mid-job means the sync did not get through its plan: not "complete".
  const outcome = r.skipped ? 'Sync stopped early' : 'Sync complete';
  return [
    `${outcome}: ${n(r.uploaded)} uploaded, ${n(r.downloaded)} downloaded${removed ? `, ${removed} removed by retention` : ''}.`,
    ...offsiteNotes(r),
  ].join(' ');
}

/**
 * What a Sync or an auto-upload at one destination reports besides its counts, as sentences: the
 * destination left alone mid-job (`skipped`), pruning stopped because the number kept was raised
 * (`pruneStopped`). Empty when neither happened.
 */
export function offsiteNotes(result) {
  const notes = [result?.skipped?.message, result?.pruneStopped].filter((note) => typeof note === 'string');
  return notes.map(sentence);
}

/** An agent note ("skipped: the …", "kept: the …") as a sentence: its tag word is for programs, the headline says it. */
function sentence(note) {
  const text = note.replace(/^(skipped|kept): /, '');
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}${text.endsWith('.') ? '' : '.'}`;
}

/** `collectProvider(provider)`: a destination's section as the form shows it (set by setupOffsite). */
let collect = () => ({});

/**
 * Each destination's saved section, taken when the form was filled with the saved settings: `form` as
 * collectProvider gives it then (the same shape as later, so unsaved edits show as a difference), and
 * `view` as the API sent it (to notice a change saved elsewhere since).
 */
const saved = {};

/**
 * The SFTP host key a Test Connection of the saved server put into the empty pin field: the agent
 * pins that same key itself at the first connection, so it is no unsaved change that matters.
 */
let testedPin;

/** JSON with the keys sorted, so two equal sections give the same text whatever their key order. */
function stableJson(value) {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (!value || typeof value !== 'object') return JSON.stringify(value ?? null);
  const keys = Object.keys(value)
    .filter((key) => value[key] !== undefined)
    .sort();
  return `{${keys.map((key) => `${JSON.stringify(key)}:${stableJson(value[key])}`).join(',')}}`;
}

/** A section as `path -> JSON text` of each value, for naming what differs. */
function flatten(value, prefix = '', out = {}) {
  if (value && typeof value === 'object' && !Array.isArray(value) && !('set' in value)) {
    for (const [key, inner] of Object.entries(value)) flatten(inner, prefix ? `${prefix}.${key}` : key, out);
  } else if (value !== undefined) out[prefix] = stableJson(value);
  return out;
}

/** Whether two SFTP sections name the same server (host and port): its host key is the same. */
const sameAddress = (a, b) =>
  Boolean(a && b) && String(a.host ?? '') === String(b.host ?? '') && (a.port ?? 22) === (b.port ?? 22);

/** The form's section, with the pin a Test Connection of the saved settings filled in counted as saved. */
function formSection(provider) {
  const form = structuredClone(collect(provider));
  const pin = saved[provider]?.form.hostKeyFingerprint;
  if (provider === 'sftp' && !pin && testedPin && form.hostKeyFingerprint === testedPin)
    delete form.hostKeyFingerprint;
  return form;
}

/** The labels of the fields whose form value differs from the saved one (their unsaved edits); empty if none. */
function unsavedFields(provider) {
  if (!saved[provider]) return [];
  const now = flatten(formSection(provider));
  const before = flatten(saved[provider].form);
  const paths = [...new Set([...Object.keys(now), ...Object.keys(before)])].filter(
    (path) => now[path] !== before[path],
  );
  const names = paths.map((path) => {
    const control = document.getElementById(`f-offsite-${provider}-${path.replaceAll('.', '-')}`);
    return control?.labels?.[0]?.textContent.trim() || path;
  });
  return [...new Set(names)];
}

/** True when the destination's saved section changed since this page loaded it (another tab or person). */
async function changedElsewhere(provider) {
  const mine = structuredClone(saved[provider]?.view ?? {});
  const theirs = structuredClone((await api('/settings'))?.offsite?.[provider] ?? {});
  // The agent pins the key it trusted on first use into the saved settings: that is no change to ask about.
  if (provider === 'sftp' && !mine.hostKeyFingerprint) {
    delete mine.hostKeyFingerprint;
    delete theirs.hostKeyFingerprint;
  }
  return stableJson(mine) !== stableJson(theirs);
}

/**
 * Whether `action` may run: Sync Now, the remote list and its Download/Restore/Delete use the SAVED
 * settings, so they run only when the form's section is the saved one; otherwise they would act on a
 * destination (server, password, folder) other than the one the form shows. Says why not in `out`.
 */
async function savedSettingsShown(provider, action, out) {
  const { title } = PROVIDERS[provider];
  if (!saved[provider]) {
    tell(out, `Not run: the saved settings could not be read. Reload the page.`, 'bad');
    return false;
  }
  const fields = unsavedFields(provider);
  if (fields.length) {
    tell(
      out,
      `Not run: ${action} uses the saved settings, and your changes to the ${title} (${fields.join(', ')}) are not saved yet. Press Save All Settings first, then ${action} again.`,
      'bad',
    );
    return false;
  }
  try {
    if (await changedElsewhere(provider)) {
      tell(
        out,
        `Not run: the ${title} settings were changed elsewhere (another tab or person) since this page loaded them, and ${action} uses the saved ones. Reload the page to see them.`,
        'bad',
      );
      return false;
    }
  } catch (error) {
    tell(out, `Not run: the saved settings could not be read (${error.message}).`, 'bad');
    return false;
  }
  return true;
}

function providerSection(provider) {
  const { title, blurb } = PROVIDERS[provider];
  const enabled = toggle(provider, 'enabled', `Use ${title}`);
  const body = el(
    'div',
    { className: 'provider-body', id: `${provider}-body` },
    ...FIELDS[provider](),
    toggle(provider, 'autoUpload', 'Upload every new backup automatically'),
  );
  const testResult = el('p', { className: 'result', id: `${provider}-test-result`, 'aria-live': 'polite' });
  const remoteStatus = el('p', {
    className: 'result',
    id: `${provider}-remote-status`,
    'aria-live': 'polite',
  });
  const remoteList = el('div', { id: `${provider}-remote-list` });

  const allowed = (action) => savedSettingsShown(provider, action, remoteStatus);
  // How many backups the shown list has (undefined: none shown), so that its line can say whose list
  // it is while the form is being edited (an edit then also replaces a "Not run" that no longer holds).
  let listed;
  const describeList = () => {
    if (listed === undefined) return;
    const count = `${listed} backup${listed === 1 ? '' : 's'}`;
    tell(
      remoteStatus,
      unsavedFields(provider).length
        ? `${count} at the saved destination (your changes above are not saved yet).`
        : `${count} at this destination.`,
    );
  };
  const refresh = async () => {
    tell(remoteStatus, 'Loading the remote list…');
    listed = undefined;
    try {
      const answer = await api(`/offsite/${provider}/backups`);
      const list = Array.isArray(answer) ? answer : (answer.backups ?? []);
      listed = list.length;
      describeList();
      remoteList.replaceChildren(remoteTable(provider, list, refresh, allowed));
    } catch (error) {
      tell(remoteStatus, error.message, 'bad');
      remoteList.replaceChildren();
    }
  };

  const test = el('button', { type: 'button', className: 'btn', id: `${provider}-test` }, 'Test Connection');
  test.addEventListener('click', async () => {
    test.disabled = true;
    tell(testResult, 'Testing the connection…');
    // The test is of the form (that is its purpose); the other buttons use what is saved, so say when they differ.
    const unsaved = unsavedFields(provider).length > 0;
    const tested = collect(provider);
    try {
      const answer = await api(`/offsite/${provider}/test`, { method: 'POST', json: tested });
      // The host key accepted on first use: shown (and saved with the form) so the pin is not lost.
      const pin = document.getElementById('f-offsite-sftp-hostKeyFingerprint');
      if (provider === 'sftp' && answer.ok && answer.details?.hostKeyFingerprint && pin && !pin.value) {
        pin.value = answer.details.hostKeyFingerprint;
        // Of the saved server (same address), it is the key the agent pins itself at the first connection.
        testedPin = sameAddress(tested, saved.sftp?.form) ? pin.value : undefined;
      }
      tell(
        testResult,
        answer.message ?? (answer.ok ? 'Connected.' : 'The connection failed.'),
        answer.ok ? 'ok' : 'bad',
      );
    } catch (error) {
      tell(testResult, error.message, 'bad');
    } finally {
      test.disabled = false;
    }
    if (unsaved) {
      // Some API messages end without a full stop: the note must still read as its own sentence.
      const stop = /[.!?…]$/.test(testResult.textContent.trim()) ? '' : '.';
      testResult.append(
        el(
          'span',
          { className: 'unsaved-note' },
          `${stop} These are the settings in the form, not saved yet: Sync Now and the remote list use the saved ones until you press Save All Settings.`,
        ),
      );
    }
  });
  const sync = el('button', { type: 'button', className: 'btn', id: `${provider}-sync` }, 'Sync Now');
  sync.addEventListener('click', async () => {
    if (!(await allowed('Sync Now'))) return;
    listed = undefined; // a failure is told on the list's line
    try {
      const { jobId } = await api(`/offsite/${provider}/sync`, { method: 'POST' });
      await showJobProgress(jobId, {
        title: `Syncing with ${title}`,
        describe: syncSummary,
      });
      await loadBackups();
      if (remoteList.childElementCount) await refresh();
    } catch (error) {
      if (!signedOut(error)) tell(remoteStatus, error.message, 'bad');
    }
  });
  const list = el(
    'button',
    { type: 'button', className: 'btn', id: `${provider}-list` },
    'List Remote Backups',
  );
  list.addEventListener('click', async () => {
    if (await allowed('List Remote Backups')) return refresh();
    // A list shown before is of the saved destination, not of the one the form shows.
    listed = undefined;
    remoteList.replaceChildren();
  });

  const checkbox = enabled.querySelector('input');
  const actions = el('div', { className: 'row' }, test, sync, list);
  // A destination that is off shows only its switch; turning it on reveals its fields and actions.
  const showBody = () => {
    body.hidden = !checkbox.checked;
    actions.hidden = !checkbox.checked;
  };
  checkbox.addEventListener('change', showBody);
  showBody();
  body.addEventListener('input', describeList);
  body.addEventListener('change', describeList);
  body.addEventListener('click', describeList); // the SFTP sign-in tabs

  const section = el(
    'section',
    { className: 'provider', id: `offsite-${provider}`, 'aria-labelledby': `${provider}-title` },
    el(
      'div',
      { className: 'provider-head' },
      el(
        'div',
        {},
        el('h3', { id: `${provider}-title` }, title),
        el('p', { className: 'muted small' }, blurb),
      ),
      enabled,
    ),
    body,
    actions,
    testResult,
    remoteStatus,
    remoteList,
  );
  /**
   * Called when the form was filled with the saved settings (loaded or saved): the test's "not saved
   * yet" note no longer holds (the test's result itself stays until the next test); and when this
   * destination's saved section changed, a remote list shown is of the one saved before.
   */
  section.filledFromSaved = (destinationChanged) => {
    for (const note of testResult.querySelectorAll('.unsaved-note')) note.remove();
    if (!destinationChanged) return;
    listed = undefined;
    tell(remoteStatus, '');
    remoteList.replaceChildren();
  };
  return section;
}

/** Builds the three destination sections; `collectProvider(provider)` gives that provider's unsaved form values. */
export function setupOffsite(collectProvider) {
  collect = collectProvider;
  const root = document.getElementById('offsite');
  root.replaceChildren(...Object.keys(PROVIDERS).map((provider) => providerSection(provider)));
  const s3Provider = document.getElementById('f-offsite-s3-provider');
  let previous = 'aws';
  s3Provider.addEventListener('change', () => {
    const preset = S3_PRESETS[s3Provider.value] ?? S3_PRESETS.other;
    const endpoint = document.getElementById('f-offsite-s3-endpoint');
    const region = document.getElementById('f-offsite-s3-region');
    // Pre-fill only what the person has not typed themselves.
    if (!endpoint.value || endpoint.value === S3_PRESETS[previous]?.endpoint)
      endpoint.value = preset.endpoint;
    if (!region.value || region.value === S3_PRESETS[previous]?.region) region.value = preset.region;
    document.getElementById('f-offsite-s3-forcePathStyle').checked = preset.forcePathStyle;
    document.getElementById('s3-provider-hint').textContent = preset.hint;
    previous = s3Provider.value;
  });
}

/** After settings are loaded: show the sections that are enabled and the saved SFTP sign-in method. */
export function syncOffsiteView(settings) {
  for (const provider of Object.keys(PROVIDERS)) {
    document.getElementById(`f-offsite-${provider}-enabled`).dispatchEvent(new Event('change'));
  }
  const auth = settings?.offsite?.sftp?.auth ?? {};
  document.querySelector('#sftp-auth .tabs').selectAuth('privateKey' in auth ? 'key' : 'password');
  const s3 = settings?.offsite?.s3;
  const preset = S3_PRESETS[s3?.provider];
  if (preset) document.getElementById('s3-provider-hint').textContent = preset.hint;
  // Fields the agent says are still missing (e.g. after a migration from an older version).
  for (const name of s3?.needsAttention ?? []) {
    const control = document.getElementById(`f-offsite-s3-${name}`);
    control?.setAttribute('placeholder', 'Needs your attention: please fill in');
  }
  rememberSaved(settings);
}

/**
 * The form now shows the saved settings: each destination's section is taken as the saved one that
 * Sync Now and the remote list act on, and its section told (filledFromSaved) whether it changed.
 */
function rememberSaved(settings) {
  for (const provider of Object.keys(PROVIDERS)) {
    const before = saved[provider];
    saved[provider] = { form: collect(provider), view: settings?.offsite?.[provider] };
    const changed = Boolean(before) && stableJson(before.form) !== stableJson(saved[provider].form);
    document.getElementById(`offsite-${provider}`).filledFromSaved(changed);
  }
}

/** The SFTP sign-in method chosen in the tabs: 'password' or 'key'. */
export function sftpMethod() {
  return document.querySelector('#sftp-auth .tabs').dataset.method;
}
