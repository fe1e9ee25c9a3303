// Offsite destinations (SFTP, S3-compatible, SMB): their fields, Test Connection, Sync Now and the remote list.
import { api } from './api.js';
import { loadBackups, restoreWithProgress } from './backups.js';
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

function remoteTable(provider, list, refresh) {
  if (list.length === 0) return el('p', { className: 'muted' }, 'No backups at this destination yet.');
  const rows = list.map((item) => {
    const name = item.filename ?? item.name;
    const when = item.createdAt ?? item.modifiedAt ?? item.lastModified;
    const base = `/offsite/${provider}/backups/${encodeURIComponent(name)}`;
    return el(
      'tr',
      { 'data-filename': name },
      el('th', { scope: 'row', className: 'filename' }, name),
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
            onclick: () => copyToLocal(provider, name),
          },
          'Download',
        ),
        el(
          'button',
          {
            type: 'button',
            className: 'btn btn-small btn-warn',
            'aria-label': `Restore ${name}`,
            onclick: () => restoreWithProgress(`${base}/restore`, name, `from ${PROVIDERS[provider].title}`),
          },
          'Restore',
        ),
        el(
          'button',
          {
            type: 'button',
            className: 'btn btn-small btn-quiet-danger',
            'aria-label': `Delete remote ${name}`,
            onclick: () => deleteRemote(provider, name, refresh),
          },
          'Delete',
        ),
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
    tell(out, error.message, 'bad');
  }
}

async function deleteRemote(provider, name, refresh) {
  const ok = await confirmAction({
    title: 'Delete the remote copy?',
    body: [
      el(
        'p',
        {},
        el('strong', {}, name),
        ` will be deleted from ${PROVIDERS[provider].title}. Local backups are not affected.`,
      ),
      'This cannot be undone.',
    ],
    confirmLabel: 'Delete',
  });
  if (!ok) return;
  const out = document.getElementById(`${provider}-remote-status`);
  try {
    await api(`/offsite/${provider}/backups/${encodeURIComponent(name)}`, { method: 'DELETE' });
    await refresh();
  } catch (error) {
    tell(out, error.message, 'bad');
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

function providerSection(provider, collectProvider) {
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

  const refresh = async () => {
    tell(remoteStatus, 'Loading the remote list…');
    try {
      const answer = await api(`/offsite/${provider}/backups`);
      const list = Array.isArray(answer) ? answer : (answer.backups ?? []);
      tell(remoteStatus, `${list.length} backup${list.length === 1 ? '' : 's'} at this destination.`);
      remoteList.replaceChildren(remoteTable(provider, list, refresh));
    } catch (error) {
      tell(remoteStatus, error.message, 'bad');
      remoteList.replaceChildren();
    }
  };

  const test = el('button', { type: 'button', className: 'btn', id: `${provider}-test` }, 'Test Connection');
  test.addEventListener('click', async () => {
    test.disabled = true;
    tell(testResult, 'Testing the connection…');
    try {
      const answer = await api(`/offsite/${provider}/test`, {
        method: 'POST',
        json: collectProvider(provider),
      });
      // The host key accepted on first use: shown (and saved with the form) so the pin is not lost.
      const pin = document.getElementById('f-offsite-sftp-hostKeyFingerprint');
      if (provider === 'sftp' && answer.ok && answer.details?.hostKeyFingerprint && pin && !pin.value)
        pin.value = answer.details.hostKeyFingerprint;
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
  });
  const sync = el('button', { type: 'button', className: 'btn', id: `${provider}-sync` }, 'Sync Now');
  sync.addEventListener('click', async () => {
    try {
      const { jobId } = await api(`/offsite/${provider}/sync`, { method: 'POST' });
      await showJobProgress(jobId, {
        title: `Syncing with ${title}`,
        describe: syncSummary,
      });
      await loadBackups();
      if (remoteList.childElementCount) await refresh();
    } catch (error) {
      tell(remoteStatus, error.message, 'bad');
    }
  });
  const list = el(
    'button',
    { type: 'button', className: 'btn', id: `${provider}-list` },
    'List Remote Backups',
  );
  list.addEventListener('click', refresh);

  const checkbox = enabled.querySelector('input');
  const actions = el('div', { className: 'row' }, test, sync, list);
  // A destination that is off shows only its switch; turning it on reveals its fields and actions.
  const showBody = () => {
    body.hidden = !checkbox.checked;
    actions.hidden = !checkbox.checked;
  };
  checkbox.addEventListener('change', showBody);
  showBody();

  return el(
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
}

/** Builds the three destination sections; `collectProvider(provider)` gives that provider's unsaved form values. */
export function setupOffsite(collectProvider) {
  const root = document.getElementById('offsite');
  root.replaceChildren(
    ...Object.keys(PROVIDERS).map((provider) => providerSection(provider, collectProvider)),
  );
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
}

/** The SFTP sign-in method chosen in the tabs: 'password' or 'key'. */
export function sftpMethod() {
  return document.querySelector('#sftp-auth .tabs').dataset.method;
}
