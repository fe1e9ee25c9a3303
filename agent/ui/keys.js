// The encryption-keys banner (red until downloaded once, then green and collapsible) and key import.
import { api } from './api.js';
import { confirmAction } from './dialogs.js';
import { dateTime } from './format.js';

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

/** Wires the banner and the import form; `onError` shows a failure at the top of the page. */
export function setupKeys(onError) {
  report = onError;
  $('download-keys').addEventListener('click', async () => {
    try {
      const response = await api('/keys/export', { raw: true });
      await saveResponse(response, 'gem-encryption-keys.json');
      await loadKeys();
    } catch (error) {
      report(error);
    }
  });
  $('collapse-banner').addEventListener('click', () => setCollapsed(true, 'keys-pill'));
  $('keys-pill').addEventListener('click', () => setCollapsed(false, 'collapse-banner'));

  /** The chosen keys file, the field's error and the result line cleared; undefined (said at the field) if none. */
  const chosenFile = (doing) => {
    const fileInput = $('import-file');
    const fieldError = $('import-file-error');
    const result = $('import-result');
    fieldError.textContent = '';
    fileInput.removeAttribute('aria-invalid');
    result.textContent = '';
    result.className = 'result';
    const file = fileInput.files?.[0];
    if (!file) {
      fieldError.textContent = `Choose the keys file to ${doing}.`;
      fileInput.setAttribute('aria-invalid', 'true');
      fileInput.focus();
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
    const ok = await confirmAction({
      title: 'Replace the active keys?',
      body: [
        `The keys in “${file.name}” will become the active keys. New backups will be encrypted with them.`,
        'The current keys are kept as retired keys, so existing backups stay readable.',
      ],
      confirmLabel: 'Yes, Import Keys',
    });
    if (!ok) return;
    try {
      const passphrase = $('import-passphrase').value;
      const answer = await api('/keys/import', {
        method: 'POST',
        json: { file: await file.text(), ...(passphrase ? { passphrase } : {}) },
      });
      result.className = 'result ok';
      result.textContent = `Keys imported. Active key: ${answer.activeKeyId}${answer.retiredKeyIds?.length ? `; ${answer.retiredKeyIds.length} retired key(s) kept` : ''}.`;
      $('import-passphrase').value = '';
      fileInput.value = '';
      await loadKeys();
    } catch (error) {
      result.className = 'result bad';
      result.textContent = error.message;
    }
  });
}
