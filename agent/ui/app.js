// The Backup & Restore page: sign-in, then every section loads its state from the agent's API.
import { token, whenUnauthorized } from './api.js';
import { loadBackups, setupBackups } from './backups.js';
import { loadKeys, setupKeys } from './keys.js';
import { loadDrStatus, loadSettings, setupSettings } from './settings.js';

const $ = (id) => document.getElementById(id);

function showError(error) {
  const box = $('page-error');
  box.textContent = error.message ?? String(error);
  box.hidden = false;
}

function showSignIn(message = '') {
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
  $('app').hidden = true;
  $('sign-out').hidden = true;
  $('installation').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
  $('token').setAttribute('aria-invalid', String(Boolean(message)));
  $('token').focus();
}

async function showApp() {
  $('sign-in').hidden = true;
  $('app').hidden = false;
  $('sign-out').hidden = false;
  $('page-error').hidden = true;
  // The keys call doubles as the token check: a 401 sends us back to sign-in.
  await loadKeys();
  await Promise.all([loadBackups().catch(showError), loadSettings(), loadDrStatus()]);
}

whenUnauthorized((error) => {
  token.clear();
  showSignIn(
    error.code === 'unauthorized' && error.message
      ? `${error.message}. Please sign in again.`
      : 'Please sign in again.',
  );
});

$('sign-in-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const value = $('token').value.trim();
  if (!value) return showSignIn('Enter the admin token.');
  token.set(value);
  $('token').value = '';
  try {
    await showApp();
  } catch (error) {
    if (error.status !== 401) showError(error);
  }
});

$('sign-out').addEventListener('click', () => {
  token.clear();
  showSignIn();
});

setupKeys(showError);
setupBackups(showError);
setupSettings();

if (token.get()) showApp().catch((error) => error.status !== 401 && showError(error));
else showSignIn();
