// The Backup & Restore page: sign-in, then every section loads its state from the agent's API.
import { api, changeUnanswered, endSignIn, signInSignal, token, whenUnauthorized } from './api.js';
import { backupProgress, loadBackups, restoreProgress, setupBackups } from './backups.js';
import { forgetOwnJobs, showJobProgress, startedHere } from './dialogs.js';
import { clearHealth, loadHealth, setupHealth } from './health.js';
import { loadKeys, setupKeys } from './keys.js';
import { syncSummary } from './offsite.js';
import { loadDrStatus, loadSettings, pushProgress, setupSettings } from './settings.js';

const $ = (id) => document.getElementById(id);

function showError(error) {
  const box = $('page-error');
  box.textContent = error.message ?? String(error);
  box.hidden = false;
}

function showSignIn(message = '') {
  // Ends what the signed-in page started: the look for running jobs, the follows of jobs.
  endSignIn();
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
  $('app').hidden = true;
  clearHealth();
  $('sign-out').hidden = true;
  $('installation').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
  $('token').setAttribute('aria-invalid', String(Boolean(message)));
  $('token').focus();
}

async function showApp() {
  const signIn = signInSignal();
  $('sign-in').hidden = true;
  $('app').hidden = false;
  $('sign-out').hidden = false;
  $('page-error').hidden = true;
  // The keys call doubles as the token check: a 401 sends us back to sign-in.
  await loadKeys();
  // Not awaited: the status may contact offsite destinations; the rest of the page need not wait.
  loadHealth();
  await Promise.all([loadBackups().catch(showError), loadSettings(), loadDrStatus()]);
  // A job started before a reload (or in another tab) still runs: show it again, as its starter did;
  // and one that starts while the page is open (the schedule, the CLI) shows as it starts. Not if
  // signed out meanwhile (the sign-in ended).
  watchJobs(signIn);
}

/** What a job may have changed: the backups list and the Cloud DR status. */
async function refreshAfterJob() {
  await Promise.all([loadBackups().catch(showError), loadDrStatus()]);
}

// Jobs running when the page opens (a reload, a second tab) or starting while it is open (the schedule,
// the CLI): their progress is shown.
const OFFSITE_NAMES = { sftp: 'SFTP server', s3: 'S3-compatible storage', smb: 'Windows share (SMB)' };

/** The progress dialog's title and texts for a job the page did not start itself. */
function progressFor(job) {
  const target = job.target ?? '';
  switch (job.kind) {
    case 'restore':
      return restoreProgress(target || 'a backup');
    case 'backup':
      return backupProgress();
    case 'verify':
      return {
        title: `Verifying ${target || 'a backup'}`,
        describe: () => 'The backup is intact: every file decrypted and matched its checksum.',
      };
    case 'sync':
      return {
        title: `Syncing with ${OFFSITE_NAMES[target] ?? (target || 'an offsite destination')}`,
        describe: syncSummary,
      };
    case 'download':
      return {
        title: `Copying ${target || 'a backup'} to this controller`,
        describe: () => `${target || 'The backup'} is now in the local backups.`,
      };
    case 'upload':
      return { title: `Uploading ${target || 'a backup'}` };
    case 'dr-push':
      return pushProgress();
    case 'dr-recover':
      return { title: 'Recovering from Cloud Disaster Recovery' };
    case 'maintenance':
      return {
        title: 'Database maintenance',
        describe: (done) => `Deleted ${done.result?.total ?? 0} old rows.`,
      };
    case 'verification':
      return { title: 'Checking every copy' };
    default:
      return { title: 'A job is running' };
  }
}

/**
 * Jobs that change the data under the whole page (a restore, a DR recovery): found running, they are
 * shown in the progress dialog, whoever started them; the page reloads once they are done.
 */
const PAGE_WIDE_KINDS = new Set(['restore', 'dr-recover']);

/**
 * Asks the agent which jobs run and shows each one's progress until it ends (one at a time, oldest
 * first), then `afterJobs()` refreshes what they may have changed; the end of the sign-in `signIn`
 * (its AbortSignal: signed out meanwhile) stops it, the follow of the job it shows too (rejecting).
 * A job this tab started (before a reload) is shown in the progress dialog as its starter did; one
 * started elsewhere (the schedule, the CLI, another tab) in the job panel, which leaves the page usable.
 */
async function showRunningJobs(afterJobs, signIn) {
  const going = () => !signIn.aborted;
  const jobs = await api('/jobs', { signal: signIn });
  // A job this page is starting may be among them before its starter has its id: the next look sees.
  if (changeUnanswered()) return;
  const running = jobs
    .filter((job) => !job.endedAt)
    .sort((a, b) => String(a.startedAt).localeCompare(String(b.startedAt)));
  for (const job of running) {
    if (!going()) return;
    const modal = startedHere(job.id) || PAGE_WIDE_KINDS.has(job.kind);
    // The dialog is taken (by this tab's own job, which may be this one, or by how a job ended): this
    // one waits for the next look. The panel shows only what these looks find, one at a time.
    if (modal && $('progress-dialog').open) continue;
    await showJobProgress(job.id, { ...progressFor(job), modal });
    if (going()) await afterJobs?.();
  }
}

/** How often the signed-in page, while in view, looks for jobs it does not show yet. */
const JOBS_LOOK_MS = 4000;

/**
 * For the sign-in `signIn` (its AbortSignal): looks for running jobs now (what it cannot reach is
 * told), then every JOBS_LOOK_MS while the page is in view and at once when it comes back into view
 * (quietly: the next look tries again), until the sign-in ends; the follow of a job it shows ends with
 * it too (api.js followJob). One look at a time: the jobs it found are shown one after another before
 * it looks again.
 */
function watchJobs(signIn) {
  if (signIn.aborted) return;
  let busy = false;
  const look = (report = false) => {
    if (signIn.aborted || busy || document.visibilityState === 'hidden') return;
    busy = true;
    showRunningJobs(refreshAfterJob, signIn)
      .catch((error) => report && !signIn.aborted && error.status !== 401 && showError(error))
      .finally(() => {
        busy = false;
      });
  };
  const timer = setInterval(() => look(), JOBS_LOOK_MS);
  const onVisibility = () => look();
  document.addEventListener('visibilitychange', onVisibility);
  signIn.addEventListener(
    'abort',
    () => {
      clearInterval(timer);
      document.removeEventListener('visibilitychange', onVisibility);
    },
    { once: true },
  );
  look(true);
}

/** The agent's lower-case words ("invalid admin token") as the start of a sentence. */
const sentenceStart = (text) => text.charAt(0).toUpperCase() + text.slice(1).replace(/\.$/, '');

whenUnauthorized((error) => {
  // Without a token (signed out in another tab) the agent's "missing admin token (Authorization: …)"
  // is HTTP talk: only a token the agent refused is worth its words.
  const had = Boolean(token.get());
  token.clear();
  showSignIn(
    had && error.code === 'unauthorized' && error.message
      ? `${sentenceStart(error.message)}. Please sign in again.`
      : 'You are signed out. Please sign in again.',
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
  forgetOwnJobs();
  showSignIn();
});

setupKeys(showError, refreshAfterJob);
setupBackups(showError, () => Promise.all([loadKeys(), loadBackups(), loadSettings(), loadDrStatus()]));
setupSettings();
setupHealth();

if (token.get()) showApp().catch((error) => error.status !== 401 && showError(error));
else showSignIn();
