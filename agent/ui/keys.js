// The encryption-keys banner (red until downloaded once, then green and collapsible) and key import.
import { api } from './api.js';
import { confirmAction } from './dialogs.js';
import { bytes, dateTime, el } from './format.js';

const $ = (id) => document.getElementById(id);
let status;
let report = () => {};

/** Saves a small response (the keys file) under the name the agent gave it. */
async function saveResponse(response, fallbackName) {
  const disposition = response.headers.get('content-disposition') ?? '';
  const name = /filename="?([^";]+)"?/.exec(disposition)?.[1] ?? fallbackName;
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement('a'), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function render() {
  const banner = $('keys-banner');
  const pill = $('keys-pill');
  const collapsed = status.downloaded && status.bannerCollapsed;
  banner.hidden = collapsed;
  pill.hidden = !collapsed;
  banner.classList.toggle('banner-danger', !status.downloaded);
  banner.classList.toggle('banner-ok', status.downloaded);
  banner.querySelector('.banner-icon').textContent = status.downloaded ? '✓' : '!';
  $('keys-banner-title').textContent = status.downloaded
    ? 'Encryption Keys Backed Up'
    : 'Encryption Keys Required!';
  $('keys-banner-detail').textContent = status.downloaded
    ? `Last downloaded ${dateTime(status.lastDownloadedAt)}. Keep the file somewhere safe, away from this controller.`
    : 'Your backups are encrypted. Without a copy of the keys, nobody (not even GEM support) can open them if this controller is lost. Download the keys file and keep it somewhere safe.';
  $('download-keys').textContent = status.downloaded ? 'Download Again' : 'Download Keys';
  $('download-keys').className = status.downloaded ? 'btn' : 'btn btn-danger';
  $('collapse-banner').hidden = !status.downloaded;
  pill.title = `Encryption keys backed up ${dateTime(status.lastDownloadedAt)}`;
  const installation = $('installation');
  installation.hidden = false;
  // The id alone recovers the Cloud DR backup on a new controller: the owner must have it elsewhere.
  installation.textContent = `Installation ${status.installationId} (keep this id off the controller: it recovers the DR backup)`;
}

/**
 * Far more than a keys file holds (a few KB) and within what the agent takes as a body (1 MiB): a larger
 * file is a backup or another file chosen by mistake, said before it is read whole or sent.
 */
const KEYS_FILE_MAX_BYTES = 512 * 1024;

/** Loads the key status from the agent and draws the banner. */
export async function loadKeys() {
  status = await api('/keys/status');
  render();
}

async function setCollapsed(collapsed, focusTarget) {
  try {
    const answer = await api('/keys/banner', { method: 'PUT', json: { collapsed } });
    status.bannerCollapsed = answer.bannerCollapsed;
    render();
    $(focusTarget).focus();
  } catch (error) {
    report(error);
  }
}

/** The keys dialog's button says what it downloads: protected by the passphrase typed, or not. */
function keysDownloadLabel() {
  $('keys-download').textContent = $('keys-passphrase').value
    ? 'Download With Passphrase'
    : 'Download Without Passphrase';
}

/** Download Keys opens a dialog that says what the file is and offers a passphrase (POST /keys/export). */
function openKeysDialog() {
  const dialog = $('keys-dialog');
  $('keys-passphrase').value = '';
  $('keys-passphrase-again').value = '';
  $('keys-passphrase-error').textContent = '';
  for (const id of ['keys-passphrase', 'keys-passphrase-again']) $(id).removeAttribute('aria-invalid');
  keysDownloadLabel();
  dialog.showModal();
  $('keys-passphrase').focus();
}

/** A passphrase the agent accepts (exportBody: 8 to 1024 characters), typed twice alike; the error, or ''. */
function passphraseProblem(passphrase, again) {
  if (!passphrase && !again) return '';
  if (passphrase.length < 8) return 'Use at least 8 characters, or leave both fields empty.';
  if (passphrase.length > 1024) return 'Use at most 1024 characters.';
  if (passphrase !== again) return 'The two passphrases differ: type the same one twice.';
  return '';
}

function setupKeysDialog() {
  const dialog = $('keys-dialog');
  $('keys-passphrase').addEventListener('input', keysDownloadLabel);
  $('keys-cancel').addEventListener('click', () => dialog.close());
  dialog.addEventListener('close', () => $('download-keys').focus());
  $('keys-export-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const passphrase = $('keys-passphrase').value;
    const again = $('keys-passphrase-again').value;
    const error = $('keys-passphrase-error');
    const problem = passphraseProblem(passphrase, again);
    error.textContent = problem;
    const bad = problem
      ? passphrase.length < 8 || passphrase.length > 1024
        ? 'keys-passphrase'
        : 'keys-passphrase-again'
      : '';
    for (const id of ['keys-passphrase', 'keys-passphrase-again'])
      if (id === bad) $(id).setAttribute('aria-invalid', 'true');
      else $(id).removeAttribute('aria-invalid');
    if (problem) {
      $(bad).focus();
      return;
    }
    const button = $('keys-download');
    button.disabled = true;
    try {
      // POST: the passphrase goes in the body, never in a URL a log may keep.
      const response = await api('/keys/export', {
        method: 'POST',
        json: passphrase ? { passphrase } : {},
        raw: true,
      });
      await saveResponse(response, 'gem-encryption-keys.json');
      dialog.close();
      await loadKeys();
    } catch (failure) {
      error.textContent = `Not downloaded: ${failure.message}`;
    } finally {
      button.disabled = false;
      $('keys-passphrase').value = '';
      $('keys-passphrase-again').value = '';
    }
  });
}

/**
 * What is wrong with a file chosen for import, as the agent would say it (agent/keys/keyring.ts
 * parseKeysExport), read here before the owner is asked to replace the active keys; '' when it looks
 * like a keys export or a data dir's keyring.json (the agent checks the rest on import).
 */
export function keysFileProblem(text, passphrase) {
  let json;
  try {
    // A UTF-8 byte order mark (Notepad's JSON files begin with one) is not part of the JSON, as for the agent.
    json = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch {
    return 'This is not a GEM encryption keys file (it is not JSON). Choose the gem-encryption-keys-….json file you downloaded.';
  }
  const format = json?.format;
  if (format !== 'gem-encryption-keys' && format !== 'gem-keyring')
    return 'This is not a GEM encryption keys file. Choose the gem-encryption-keys-….json file you downloaded, or a data folder’s keyring.json.';
  if (format === 'gem-encryption-keys' && json.protected && !passphrase)
    return 'This keys file is protected by a passphrase: enter the passphrase, then import again.';
  return '';
}

/** The installation id a keys file names (both formats have it at the top); undefined if none. */
function fileInstallation(text) {
  try {
    const id = JSON.parse(text.replace(/^\uFEFF/, ''))?.installationId;
    return typeof id === 'string' ? id : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What importing the keys of another installation than this one also does (agent/http/routes/keys.ts
 * importKeysFile, agent/restore/last-restore.ts): the sentences the import confirmation adds, none for
 * this installation's own keys.
 */
function identityChange(installation) {
  if (!installation || !status?.installationId || installation === status.installationId) return [];
  const short = (id) => `${id.slice(0, 5)}…`;
  return [
    el(
      'p',
      { className: 'warning' },
      `These are the keys of another installation (${short(installation)}): this controller takes its identity, and the installation id changes from ${short(status.installationId)} to ${short(installation)}.`,
    ),
    'Cloud DR pushes are held until one of that installation’s backups is restored here (from its offsite copies), so that this controller’s data never replaces that installation’s cloud copy.',
    'This controller’s own backups, here and offsite, then count as another installation’s: they are marked so, and restoring one asks again.',
  ];
}

/**
 * Wires the banner and the import form; `onError` shows a failure at the top of the page, `onImported`
 * reloads what an import changes besides the keys (which backups count as another installation's, the
 * Cloud DR status).
 */
export function setupKeys(onError, onImported) {
  report = onError;
  setupKeysDialog();
  $('download-keys').addEventListener('click', openKeysDialog);
  $('collapse-banner').addEventListener('click', () => setCollapsed(true, 'keys-pill'));
  $('keys-pill').addEventListener('click', () => setCollapsed(false, 'collapse-banner'));

  /**
   * The chosen keys file, the field's error and the result line cleared; undefined (said at the field) if
   * none, or one too large to be a keys file.
   */
  const chosenFile = (doing) => {
    const fileInput = $('import-file');
    const fieldError = $('import-file-error');
    const result = $('import-result');
    fieldError.textContent = '';
    fileInput.removeAttribute('aria-invalid');
    result.textContent = '';
    result.className = 'result';
    const file = fileInput.files?.[0];
    const problem = !file
      ? `Choose the keys file to ${doing}.`
      : file.size > KEYS_FILE_MAX_BYTES
        ? `This is not a GEM encryption keys file (it is ${bytes(file.size)}; a keys file is a few KB). Choose the gem-encryption-keys-….json file you downloaded.`
        : '';
    if (problem) {
      fieldError.textContent = problem;
      fileInput.setAttribute('aria-invalid', 'true');
      fileInput.focus();
      return undefined;
    }
    return file;
  };

  // Nothing is imported: the agent tries the file on the newest backup and says what it found.
  $('check-keys').addEventListener('click', async () => {
    const file = chosenFile('check');
    if (!file) return;
    const button = $('check-keys');
    const result = $('import-result');
    button.disabled = true;
    result.textContent = 'Checking the keys file…';
    try {
      const passphrase = $('import-passphrase').value;
      const answer = await api('/keys/check', {
        method: 'POST',
        json: { file: await file.text(), ...(passphrase ? { passphrase } : {}) },
      });
      result.className = answer.canOpen ? 'result ok' : 'result bad';
      result.textContent = answer.reason.replace(/\.?$/, '.');
    } catch (error) {
      result.className = 'result bad';
      result.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  });

  $('import-keys-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const fileInput = $('import-file');
    const result = $('import-result');
    const file = chosenFile('import');
    if (!file) return;
    const passphrase = $('import-passphrase').value;
    // The file is read and checked first: one that cannot be a keys file is said at the field, not
    // after the owner has agreed to replace the active keys with it.
    const text = await file.text();
    const problem = keysFileProblem(text, passphrase);
    if (problem) {
      $('import-file-error').textContent = problem;
      fileInput.setAttribute('aria-invalid', 'true');
      fileInput.focus();
      return;
    }
    const ok = await confirmAction({
      title: 'Replace the active keys?',
      body: [
        `The keys in “${file.name}” will become the active keys. New backups will be encrypted with them.`,
        'The current keys are kept as retired keys, so existing backups stay readable.',
        ...identityChange(fileInstallation(text)),
      ],
      confirmLabel: 'Yes, Import Keys',
    });
    if (!ok) return;
    try {
      const answer = await api('/keys/import', {
        method: 'POST',
        json: { file: text, ...(passphrase ? { passphrase } : {}) },
      });
      result.className = 'result ok';
      result.textContent = `Keys imported. Active key: ${answer.activeKeyId}${answer.retiredKeyIds?.length ? `; ${answer.retiredKeyIds.length} retired key(s) kept` : ''}.`;
      $('import-passphrase').value = '';
      fileInput.value = '';
      await Promise.all([loadKeys(), onImported?.()]);
    } catch (error) {
      result.className = 'result bad';
      result.textContent = error.message;
    }
  });
}
