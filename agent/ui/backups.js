// Local backups: the list, Create, Download (one-time link), Verify, Restore, Delete and Upload.
import { api, signedOut, uploadFile } from './api.js';
import { confirmAction, showJobProgress } from './dialogs.js';
import { bytes, dateTime, el } from './format.js';
import { offsiteNotes } from './offsite.js';

const $ = (id) => document.getElementById(id);
let report = () => {};
let reloadData = async () => {};

function verifiedCell(backup) {
  if (backup.verifyResult === 'failed')
    return el('span', { className: 'tag tag-bad', title: backup.verifyError ?? '' }, 'Failed');
  if (backup.verifiedAt)
    return el('span', { className: 'tag tag-ok', title: dateTime(backup.verifiedAt) }, 'Verified');
  return el('span', { className: 'muted' }, 'Not yet');
}

// A restore reloads the page when done; what it did is kept for the page after the reload to say once.
const RESTORE_NOTE_KEY = 'gem-backup-restore-note';
let restoreNote; // {restored, safetyBackup} after a restore's reload: shown until the page is left
let restoreNoteTaken = false;

/** Keeps what a finished restore did (its name, its safety backup's) for the page after the reload. */
function keepRestoreNote(job, name) {
  const restart = restartOutcome(job.result?.restart);
  const warnings = job.result?.warnings ?? [];
  const note = {
    restored: job.result?.restoredFrom ?? name,
    safetyBackup: job.result?.safetyBackup,
    ...(restart.ok ? {} : { restart: restart.todo }),
    ...(warnings.length > 0 ? { warnings } : {}),
  };
  try {
    sessionStorage.setItem(RESTORE_NOTE_KEY, JSON.stringify(note));
  } catch {
    // Storage full or refused: the page reloads without the note, as it did before.
  }
}

/** The note a restore left before the reload, taken out of storage so only this page load shows it. */
function takeRestoreNote() {
  if (restoreNoteTaken) return restoreNote;
  restoreNoteTaken = true;
  try {
    const raw = sessionStorage.getItem(RESTORE_NOTE_KEY);
    sessionStorage.removeItem(RESTORE_NOTE_KEY);
    restoreNote = raw ? JSON.parse(raw) : undefined;
  } catch {
    restoreNote = undefined;
  }
  if (restoreNote?.restored) showRestoreNote(restoreNote);
  return restoreNote;
}

/**
 * "Restored X. To undo, restore the safety backup Y." above the list, where the undo is; and GEM's
 * restart still to be done, when it was not (marked as a warning: the owner must act).
 */
function showRestoreNote({ restored, safetyBackup, restart, warnings = [] }) {
  const note = el(
    'p',
    {
      id: 'restore-note',
      className: restart || warnings.length > 0 ? 'result bad' : 'result ok',
      role: 'status',
    },
    `Restored ${restored}.`,
    safetyBackup ? ` To undo, restore the safety backup ${safetyBackup}.` : '',
    restart ? ` ${restart}` : '',
    ...warnings.map((warning) => ` ${warningSentence(warning)}`),
  );
  $('backups-body').closest('.table-wrap').before(note);
}

/** Marks the safety backup's row: the one to restore to undo the restore this page reloaded after. */
function markUndoRow(row) {
  row.dataset.highlight = 'undo-restore';
  // The stylesheet has no row highlight; the CSSOM is allowed by the page's CSP (a style attribute is not).
  row.style.backgroundColor = 'var(--ok-bg)';
  row
    .querySelector('.filename')
    .append(el('span', { className: 'tag tag-ok', title: 'Restore it to undo the restore' }, 'Undo point'));
}

/** Loads and draws the local backups, newest first. */
export async function loadBackups() {
  const undo = takeRestoreNote()?.safetyBackup;
  const list = await api('/backups');
  const body = $('backups-body');
  body.replaceChildren(
    ...list.map((backup) => {
      const name = backup.filename;
      const kind =
        backup.kind && backup.kind !== 'manual' ? el('span', { className: 'tag' }, backup.kind) : null;
      const label = backup.label
        ? el('span', { className: 'tag tag-label', title: 'Label' }, backup.label)
        : null;
      const pinned = backup.pinned
        ? el('span', { className: 'tag tag-pin', title: 'Pinned: retention never removes it' }, 'Pinned')
        : null;
      const other = otherInstallation(backup);
      return el(
        'tr',
        { 'data-filename': name },
        el(
          'th',
          { scope: 'row', className: 'filename' },
          el('span', {}, name),
          kind,
          label,
          pinned,
          otherInstallationTag(other),
        ),
        el('td', { className: 'date' }, dateTime(backup.createdAt)),
        el('td', { className: 'num' }, bytes(backup.size)),
        el('td', {}, verifiedCell(backup)),
        el(
          'td',
          { className: 'row-actions' },
          el(
            'button',
            {
              type: 'button',
              className: 'btn btn-small',
              'aria-label': `Download ${name}`,
              onclick: () => download(name),
            },
            'Download',
          ),
          el(
            'button',
            {
              type: 'button',
              className: 'btn btn-small',
              'aria-label': `Verify ${name}`,
              onclick: () => verify(name),
            },
            'Verify',
          ),
          el(
            'button',
            {
              type: 'button',
              className: 'btn btn-small btn-warn',
              'aria-label': `Restore ${name}`,
              onclick: () => restore(name, other),
            },
            'Restore',
          ),
          el(
            'button',
            {
              type: 'button',
              className: 'btn btn-small',
              'aria-label': `${backup.pinned ? 'Unpin' : 'Pin'} ${name}`,
              'aria-pressed': backup.pinned ? 'true' : 'false',
              title: backup.pinned
                ? 'Let retention remove it again'
                : 'Keep it: retention never removes a pinned backup',
              onclick: () => togglePin(name, !backup.pinned),
            },
            backup.pinned ? 'Unpin' : 'Pin',
          ),
          el(
            'button',
            {
              type: 'button',
              className: 'btn btn-small btn-quiet-danger',
              'aria-label': `Delete ${name}`,
              // A pin keeps it here and offsite: the agent refuses its deletion until it is unpinned.
              disabled: backup.pinned,
              title: backup.pinned ? 'Pinned: unpin it first to delete it' : undefined,
              onclick: () => remove(name),
            },
            'Delete',
          ),
        ),
      );
    }),
  );
  $('backups-empty').hidden = list.length > 0;
  body.closest('table').hidden = list.length === 0;
  const undoRow = undo ? body.querySelector(`tr[data-filename="${CSS.escape(undo)}"]`) : null;
  if (undoRow) markUndoRow(undoRow);
  // Asked after the list: listing is what finds a damaged records file and pauses pruning.
  showRetentionHold((await api('/retention/hold'))?.held);
}

/**
 * Above the list: pruning is paused (the backup records, and so the pins, were damaged and set aside),
 * with the agent's sentence and a Resume Pruning button; gone when no hold is in force.
 */
function showRetentionHold(held) {
  $('retention-hold')?.remove();
  if (!held) return;
  const button = el(
    'button',
    { type: 'button', className: 'btn btn-small btn-warn', onclick: () => resumePruning(button) },
    'Resume pruning',
  );
  const note = el(
    'div',
    { id: 'retention-hold', className: 'warning retention-hold', role: 'status' },
    el('p', { className: 'retention-hold-text' }, held.message),
    el('div', { className: 'actions' }, button),
  );
  $('backups-body').closest('.table-wrap').before(note);
}

/**
 * Ends the retention hold, after asking: the pins made before the damage are gone, so the dialog names
 * the backups the next backup then deletes (the agent's plan as if resumed), for the owner to pin first.
 */
async function resumePruning(button) {
  button.disabled = true;
  try {
    const preview = await api('/retention/preview');
    const going = preview?.ifResumed?.nextBackup?.delete ?? [];
    const body = [
      'Pins made before the backup records were damaged are gone: pin again every backup that must be kept (Pin, in the list), then resume.',
      going.length
        ? `Once resumed, the next backup deletes ${going.length === 1 ? '1 backup' : `${going.length} backups`} as things stand: ${going.map((b) => b.filename).join(', ')}.`
        : 'As things stand, the next backup deletes no backup.',
    ];
    const ok = await confirmAction({
      title: 'Resume pruning?',
      body,
      confirmLabel: 'Resume Pruning',
      danger: going.length > 0,
    });
    if (!ok) return;
    await api('/retention/resume', { method: 'POST' });
  } catch (error) {
    report(error);
  } finally {
    button.disabled = false;
  }
  await loadBackups().catch(report);
}

async function create() {
  try {
    const { jobId } = await api('/backups', { method: 'POST' });
    await showJobProgress(jobId, backupProgress());
  } catch (error) {
    // Signed out meanwhile: the job goes on unfollowed, and what follows it belongs to that sign-in.
    if (signedOut(error)) return;
    report(error);
  }
  await loadBackups().catch(report);
}

/** The steps run after each backup (agent/backup/operations.ts followUps), by the hook's name. */
const FOLLOW_UP_NAMES = {
  offsiteUpload: 'Automatic offsite upload',
  retention: 'Removing old backups (keep limit)',
};

/** The steps after a backup that did not succeed (failed, or stopped by a Cancel): [name, outcome]. */
function unfinishedFollowUps(job) {
  return Object.entries(job.result?.followUps ?? {}).filter(([, outcome]) => outcome?.ok === false);
}

/** The steps after a backup that failed, in words: which one and its error. */
export function failedFollowUps(job) {
  return unfinishedFollowUps(job).map(
    ([name, outcome]) =>
      `${FOLLOW_UP_NAMES[name] ?? name} ${outcome.cancelled ? 'was cancelled' : 'failed'}: ${outcome.error ?? 'unknown error'}`,
  );
}

/**
 * What the auto-upload after a backup reports besides success (one outcome per destination): a
 * destination left alone mid-job, pruning stopped. The same sentences as Sync Now's, each once.
 */
function autoUploadNotes(outcomes) {
  return [...new Set(Object.values(outcomes ?? {}).flatMap((outcome) => offsiteNotes(outcome)))];
}

/** "a, b, c and 2 more": the first `shown` names, then how many others. */
function someNames(names, shown = 3) {
  const first = names.slice(0, shown).join(', ');
  return names.length > shown ? `${first} and ${names.length - shown} more` : first;
}

/** The keep limit as saved now (the prune just used it); undefined if the agent does not say. */
async function keepLimit() {
  try {
    return (await api('/settings'))?.autoBackup?.maxBackups;
  } catch {
    return undefined;
  }
}

/**
 * What the keep-limit prune after a backup deleted, in words ("" if nothing): the owner must hear that
 * backups are gone, not only that one was made.
 */
async function prunedNote(job) {
  const deleted = job.result?.followUps?.retention?.details?.deleted ?? [];
  if (!Array.isArray(deleted) || deleted.length === 0) return '';
  const limit = await keepLimit();
  const count = `${deleted.length} older backup${deleted.length === 1 ? '' : 's'}`;
  return `Removed ${count}${limit ? ` (keep limit: ${limit})` : ''}: ${someNames(deleted)}.`;
}

/**
 * The progress dialog's texts for a backup job: created, what the keep-limit prune removed, what its
 * auto-upload noted, and any step after it that failed. One per dialog: it keeps the job's
 * `offsite-upload` notice for the end.
 */
export function backupProgress() {
  // The outcomes are in the job's result (followUps.offsiteUpload.details); the live notice is the
  // same, for a result from an agent of an earlier version that kept only ok/error.
  let uploads;
  return {
    title: 'Creating a backup',
    cancelQuestion: {
      title: 'Cancel the running backup?',
      body: 'The backup stops and nothing of it is kept. The backups made before stay as they are.',
    },
    onNotice: (notice, data) => {
      if (notice === 'offsite-upload') uploads = data;
    },
    describe: async (job) => {
      const name = `Backup created: ${job.result?.backup?.filename ?? 'done'}`;
      const pruned = await prunedNote(job);
      const notes = [
        ...(pruned ? [pruned] : []),
        ...autoUploadNotes(job.result?.followUps?.offsiteUpload?.details ?? uploads),
      ];
      const problems = unfinishedFollowUps(job);
      if (problems.length) {
        const what = problems.every(([, outcome]) => outcome.cancelled) ? 'was cancelled' : 'failed';
        return [`${name}.`, ...notes, `The backup is good, but a step after it ${what}:`].join(' ');
      }
      return notes.length ? [`${name}.`, ...notes].join(' ') : name;
    },
    problems: failedFollowUps,
  };
}

/** Lets the browser itself save the file (streamed to disk) via a one-time link, so the token never sits in a URL. */
async function download(name) {
  try {
    const { url } = await api(`/backups/${encodeURIComponent(name)}/download-link`, { method: 'POST' });
    const link = el('a', { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (error) {
    report(error);
  }
}

async function verify(name) {
  try {
    const { jobId } = await api(`/backups/${encodeURIComponent(name)}/verify`, { method: 'POST' });
    await showJobProgress(jobId, {
      title: `Verifying ${name}`,
      describe: () => 'The backup is intact: every file decrypted and matched its checksum.',
    });
  } catch (error) {
    if (signedOut(error)) return;
    report(error);
  }
  await loadBackups().catch(report);
}

/**
 * Asks, then restores through `path` (local or offsite) with progress, and reloads the page when done:
 * everything on it may have changed. `warning`: a caution the confirmation shows under what it does
 * (an offsite copy made by another installation); `extra`: more of the request's body (such a copy's
 * `otherInstallation: true`, without which the agent refuses it).
 */
export async function restoreWithProgress(
  path,
  name,
  where = 'this backup',
  warning = undefined,
  extra = {},
) {
  const ok = await confirmAction({
    title: 'Restore this backup?',
    body: [
      el(
        'p',
        {},
        'Restoring ',
        el('strong', {}, name),
        ` (${where}) `,
        el('strong', {}, 'replaces all current data'),
        ' of GEM with the data in the backup.',
      ),
      ...(warning ? [el('p', { className: 'warning' }, warning)] : []),
      'A safety backup of the current data is taken first. GEM is briefly unavailable while the data is switched over.',
    ],
    confirmLabel: 'Yes, Restore',
  });
  if (!ok) return;
  try {
    const { jobId } = await api(path, { method: 'POST', json: { ...extra, confirm: name } });
    await showJobProgress(jobId, restoreProgress(name));
  } catch (error) {
    if (!signedOut(error)) report(error);
  }
}

/**
 * How a restore's progress dialog reads and what follows it: the swap notice, and a page reload after
 * success (everything on it may have changed). Also used for a restore found running after a reload.
 */
export function restoreProgress(name) {
  // Set once the switch-over began (the restore-swap notice, or the job in its swap or restart step):
  // from then on a Cancel cannot stop the restore, and a failure may no longer leave the data as it was.
  let switching = false;
  const switchOver = (ui) => {
    switching = true;
    ui.endCancel('Too late to cancel: the data is being switched over.');
  };
  return {
    title: `Restoring ${name}`,
    cancellable: true,
    cancelQuestion: {
      title: 'Cancel the restore?',
      body: 'The restore stops before it switches the data over: GEM keeps its current data.',
    },
    onJob: (job, ui) => {
      if (SWITCH_PHASES.has(job.phase)) switchOver(ui);
    },
    onNotice: (notice, _data, ui) => {
      if (notice !== 'restore-swap') return;
      ui.text.textContent = 'Switching over to the restored data…';
      switchOver(ui);
    },
    describe: (job) => {
      const restart = restartOutcome(job.result?.restart);
      return `${restart.text} ${ownerReads(job) ? 'Close reloads the page.' : 'Reloading the page…'}`;
    },
    problems: (job) => {
      const restart = restartOutcome(job.result?.restart);
      // What the restore did or could not keep beside the data (a role it created, grants left out).
      const warnings = (job.result?.warnings ?? []).map(warningSentence);
      return [...(restart.ok ? [] : [restart.todo]), ...warnings];
    },
    failed: (job) => restoreFailedText(job, switching),
    afterSuccess: async (job, { untilClosed }) => {
      keepRestoreNote(job, name);
      // GEM still runs on the old data until someone restarts it: the owner reads that before the reload.
      if (!ownerReads(job)) await new Promise((resolve) => setTimeout(resolve, 1500));
      else await untilClosed();
      location.reload();
    },
    // The agent restarted mid-restore and settled it either way at start: show what is live now.
    afterInterrupted: () => reloadData(),
  };
}

/** The restore's steps from which its data is switched over (agent/restore/restore.ts): a cancel no longer stops it. */
const SWITCH_PHASES = new Set(['swap', 'restart']);

/** A finished restore the owner must read before the reload: GEM not restarted, or warnings. */
function ownerReads(job) {
  return !restartOutcome(job.result?.restart).ok || (job.result?.warnings ?? []).length > 0;
}

/** A restore's warning ("created role x (no login): …") as a sentence of its own. */
const warningSentence = (warning) => sentence(warning.charAt(0).toUpperCase() + warning.slice(1));

/** An error of the agent as one sentence: trimmed (a command's stderr ends in a newline), one final stop. */
const sentence = (error) =>
  `${String(error ?? 'unknown error')
    .trim()
    .replace(/[.:]$/, '')}.`;

/**
 * How GEM's restart after a restore went (the job's `restart`: agent/restore/restore.ts runRestart), in
 * words: `ok` when nothing is left to do, `text` for the result line, `todo` what the owner must do.
 */
export function restartOutcome(restart) {
  if (restart?.ran && restart.ok)
    return { ok: true, text: 'Restore complete. GEM was restarted and uses the restored data.' };
  if (restart?.ran)
    return {
      ok: false,
      text: 'The data is restored, but GEM could not be restarted.',
      todo: `GEM could not be restarted: ${sentence(restart.error)} The data is restored; restart GEM by hand so it uses it.`,
    };
  return {
    ok: false,
    text: 'The data is restored, but GEM was not restarted: no restart command is set up on this controller.',
    todo: 'Restart GEM now so it uses the restored data.',
  };
}

/** What to do after a restore that failed before its switch-over, by the agent's error code. */
const RESTORE_NEXT_STEP = {
  dependency_down:
    'GEM’s database did not answer: once it runs again (the agent restarts an embedded database on its own within a minute), restore again.',
  no_space: 'Free disk space on the controller as the message says, then restore again.',
  permission_denied: 'Correct the permissions the message names, then restore again.',
};

/**
 * The words for a restore that failed or was cancelled. Before the switch-over the agent changed
 * nothing (agent/restore/restore.ts: any failure before the swap leaves the live system as it was), and
 * the dialog says so. Once the switch-over began, the agent's own words say whether it could put
 * everything back: the page claims nothing and asks for a reload.
 */
function restoreFailedText(job, switching) {
  const message = job.error?.message ?? 'unknown error';
  if (switching || SWITCH_PHASES.has(job.phase)) {
    const head = job.state === 'cancelled' ? 'Cancelled while switching over' : 'Failed while switching over';
    return `${head}: ${sentence(message)} Reload the page to see which data GEM has now.`;
  }
  const unchanged = 'Nothing was changed: GEM still has its current data.';
  if (job.state === 'cancelled') return `Cancelled. ${unchanged}`;
  const next = RESTORE_NEXT_STEP[job.error?.code] ?? 'Correct what the message says, then restore again.';
  return `Failed: ${sentence(message)} ${unchanged} ${next}`;
}

/**
 * The installation that made a backup or an offsite copy as the lists show it ("72d26…"), when it is
 * known to be another than the one whose keys are active (another controller's, or after a keys import
 * this controller's own from before it); '' otherwise.
 */
export function otherInstallation(item) {
  return item.installation && item.ofThisInstallation === false ? `${item.installation.slice(0, 5)}…` : '';
}

/** The lists' mark of a backup of another installation (`other`, see otherInstallation); null for none. */
export function otherInstallationTag(other) {
  return other
    ? el(
        'span',
        { className: 'tag tag-other', title: 'Not made by the installation whose keys are active' },
        `another installation (${other})`,
      )
    : null;
}

/**
 * Restores a local backup; one of another installation (`other`, see otherInstallation) only after the
 * confirmation says so, and with `otherInstallation: true`, without which the agent refuses it.
 */
function restore(name, other) {
  return restoreWithProgress(
    `/backups/${encodeURIComponent(name)}/restore`,
    name,
    'a local backup',
    other
      ? `This backup was made by another installation (${other}), not the one whose keys are active: after a keys import, this controller’s own backups from before it are such backups. Restore it only if that is the data you want. It does not end the hold on Cloud DR pushes after a keys import: only a backup of the installation whose keys are active does.`
      : undefined,
    other ? { otherInstallation: true } : {},
  );
}

async function togglePin(name, pin) {
  try {
    await api(`/backups/${encodeURIComponent(name)}/pin`, { method: pin ? 'POST' : 'DELETE' });
  } catch (error) {
    report(error);
  }
  await loadBackups().catch(report);
}

async function remove(name) {
  const ok = await confirmAction({
    title: 'Delete this backup?',
    body: [
      el(
        'p',
        {},
        el('strong', {}, name),
        ' will be deleted from this controller. Offsite copies are not affected.',
      ),
      'This cannot be undone.',
    ],
    confirmLabel: 'Delete',
  });
  if (!ok) return;
  try {
    await api(`/backups/${encodeURIComponent(name)}`, { method: 'DELETE' });
  } catch (error) {
    report(error);
  }
  await loadBackups().catch(report);
}

const BACKUP_NAME = /^gem-backup-\d{4}-\d{2}-\d{2}-\d{6}\.tar\.gz$/;

/**
 * The backup name a chosen file is stored under: a browser saving a second copy names it
 * "gem-backup-… (1).tar.gz", which is still that backup. Undefined for any other name.
 */
export function backupNameOf(fileName) {
  const name = String(fileName).replace(/ \(\d+\)(?=\.tar\.gz$)/, '');
  return BACKUP_NAME.test(name) ? name : undefined;
}

/** What to do with a file whose name the agent refuses ("invalid backup name" says too little). */
const renameAdvice = (fileName) =>
  `${fileName} is not named like a backup. Rename the file to gem-backup-YYYY-MM-DD-HHMMSS.tar.gz and upload it again.`;

async function upload(event) {
  event.preventDefault();
  const input = $('upload-file');
  const message = $('upload-error');
  message.textContent = '';
  message.className = 'field-error';
  input.removeAttribute('aria-invalid');
  const file = input.files?.[0];
  if (!file) {
    message.textContent = 'Choose a backup file (gem-backup-….tar.gz) first.';
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  const name = backupNameOf(file.name);
  if (!name) {
    // The agent would refuse it ("invalid backup name"); the owner needs to know what to do instead.
    message.textContent = renameAdvice(file.name);
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  const button = event.submitter ?? $('upload-form').querySelector('button');
  button.disabled = true;
  message.className = 'result';
  try {
    await uploadFile(`/backups/upload?filename=${encodeURIComponent(name)}`, file, (done, total) => {
      message.textContent = total
        ? `Uploading… ${Math.round((done / total) * 100)}% (${bytes(done)} of ${bytes(total)})`
        : `Uploading… ${bytes(done)}`;
    });
    message.className = 'result ok';
    message.textContent = name === file.name ? `Uploaded ${name}.` : `Uploaded ${file.name} as ${name}.`;
    input.value = '';
  } catch (error) {
    message.className = 'field-error';
    message.textContent = error.code === 'invalid_name' ? renameAdvice(file.name) : error.message;
    input.setAttribute('aria-invalid', 'true');
  } finally {
    button.disabled = false;
  }
  await loadBackups().catch(report);
}

/**
 * Wires the backups card; `onError` shows a failure at the top of the page, `onReloadData` reloads
 * everything the page shows (after a restore the agent settled on its own).
 */
export function setupBackups(onError, onReloadData) {
  report = onError;
  reloadData = async () => {
    try {
      await onReloadData?.();
    } catch (error) {
      report(error);
    }
  };
  $('create-backup').addEventListener('click', create);
  $('upload-form').addEventListener('submit', upload);
}
