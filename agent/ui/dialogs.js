// The two dialogs: a confirmation for destructive actions, and a job's progress fed by its events.
import { api, followJob, signedOut } from './api.js';
import { dateTime, el, phase, progressAmount, timeLeftEstimator } from './format.js';

const $ = (id) => document.getElementById(id);

/**
 * Asks before a destructive action. `body` is text or nodes; `cancelLabel` names the way out (default
 * "Cancel"). Resolves true only on the confirm button. One question at a time: one asked while another
 * is on screen (a second row's button clicked while the first waited for the agent) resolves false at
 * once, so that one answer never confirms two actions, nor one the dialog does not name.
 */
export function confirmAction({ title, body, confirmLabel, cancelLabel = 'Cancel', danger = true }) {
  const dialog = $('confirm-dialog');
  if (dialog.open) return Promise.resolve(false);
  $('confirm-title').textContent = title;
  const content = $('confirm-body');
  content.replaceChildren(
    ...(Array.isArray(body) ? body : [body]).map((part) =>
      typeof part === 'string' ? Object.assign(document.createElement('p'), { textContent: part }) : part,
    ),
  );
  const ok = $('confirm-ok');
  ok.textContent = confirmLabel;
  ok.className = danger ? 'btn btn-danger' : 'btn btn-primary';
  $('confirm-cancel').textContent = cancelLabel;
  const opener = document.activeElement;
  dialog.returnValue = '';
  dialog.showModal();
  // Safer default: focus lands on Cancel, so Enter never confirms by accident.
  $('confirm-cancel').focus();
  return new Promise((resolve) => {
    dialog.addEventListener(
      'close',
      () => {
        opener?.focus?.();
        resolve(dialog.returnValue === 'ok');
      },
      { once: true },
    );
  });
}

const DONE_TEXT = { succeeded: 'Done', failed: 'Failed', cancelled: 'Cancelled' };

/** What a job cut short by an agent restart means, and what to do next. */
function interruptedText(job) {
  // The agent's own words when it knows what its start-up did (a restore rolled back or completed).
  const found = job.error?.code === 'interrupted' ? job.error.message : undefined;
  if (job.kind === 'restore')
    return found
      ? `${found} This page is reloaded to show what is live now.`
      : 'The agent restarted while this restore was running, so the page could not follow it to the end: the agent finished or undid the restore when it started again; this page is reloaded to show what is live now.';
  return (
    found ??
    'The agent restarted while this job was running, so it did not finish. Check the list of backups and start it again.'
  );
}

/** "12 s", "3 min 5 s": how long the agent did not answer. */
function duration(ms) {
  const seconds = Math.max(1, Math.round(ms / 1000));
  return seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

/** The jobs this tab started (ids): found running after a reload, they are shown as their starter did. */
const OWN_JOBS_KEY = 'gem-backup-own-jobs';
/** How many of them are remembered: the newest only, a tab starts few jobs. */
const OWN_JOBS_KEPT = 20;

function ownJobs() {
  try {
    const ids = JSON.parse(sessionStorage.getItem(OWN_JOBS_KEY) ?? '[]');
    return Array.isArray(ids) ? ids : [];
  } catch {
    return [];
  }
}

/** True if this tab started the job (before a reload too). */
export const startedHere = (jobId) => ownJobs().includes(jobId);

function rememberOwnJob(jobId) {
  const ids = [...ownJobs().filter((id) => id !== jobId), jobId].slice(-OWN_JOBS_KEPT);
  try {
    sessionStorage.setItem(OWN_JOBS_KEY, JSON.stringify(ids));
  } catch {
    // Storage refused: after a reload the job shows in the panel instead of the dialog.
  }
}

/** Signing out ends what this tab remembers: the next one signed in here did not start those jobs. */
export function forgetOwnJobs() {
  sessionStorage.removeItem(OWN_JOBS_KEY);
}

/**
 * The panel for a job the page did not start (the schedule, the CLI, another tab): the progress dialog's
 * parts under ids of their own (`job-panel-…`), shown without a backdrop in a corner of the page, which
 * stays usable meanwhile. Made from the dialog on first use.
 */
function jobPanel() {
  const existing = $('job-panel');
  if (existing) return existing;
  const panel = $('progress-dialog').cloneNode(true);
  panel.id = 'job-panel';
  panel.className = 'job-panel';
  panel.removeAttribute('tabindex');
  for (const node of panel.querySelectorAll('[id]')) node.id = node.id.replace(/^progress-/, 'job-panel-');
  panel.setAttribute('aria-labelledby', 'job-panel-title');
  $('progress-dialog').after(panel);
  return panel;
}

/** What Cancel asks before it stops a job: a title, and what stopping it means. */
const CANCEL_QUESTION = {
  title: 'Cancel the running job?',
  body: 'The job stops where it is. Whatever it finished stays as it is.',
};

/**
 * Shows a job's progress until it ends. `describe(job, ui)` gives the success text (or a promise of it);
 * `problems(job)` lists what went wrong in a job that still succeeded (shown under it, marked as a
 * problem); `onJob(job, ui)` sees each state of the running job and `onNotice(name, data, ui)` its
 * notices, and may reword the dialog (`ui`: `{ text, title, endCancel(reason) }`; `endCancel` takes
 * Cancel away once the job can no longer be cancelled, and says `reason` if Cancel was pressed);
 * `failed(job)` gives the words for a job that failed or was cancelled (default: its error);
 * `afterSuccess(job, { text, untilClosed })` runs on success (e.g. reload; `untilClosed()` shows Close and
 * resolves once the dialog is closed); `afterInterrupted(job)` runs when an agent restart cut the job
 * short (e.g. reload the page's data). `cancelQuestion` ({title, body}): what Cancel asks before it
 * stops the job. `modal: false` (a job the page did not start) shows it in the job panel instead,
 * which leaves the page usable and resolves once the job ended, without waiting for Close. Resolves to
 * the final job; `lostContact: true` on one the page stopped following because the agent did not answer.
 * Signing out meanwhile stops following it: rejects with the `signed_out` error (api.js signedOut), which
 * its starter tells no one.
 */
export async function showJobProgress(
  jobId,
  {
    title,
    describe,
    problems,
    onJob,
    onNotice,
    failed,
    afterSuccess,
    afterInterrupted,
    cancellable = true,
    cancelQuestion = CANCEL_QUESTION,
    modal = true,
  },
) {
  const dialog = modal ? $('progress-dialog') : jobPanel();
  const part = (name) => $(`${modal ? 'progress' : 'job-panel'}-${name}`);
  const text = part('text');
  const bar = part('bar');
  const amount = part('bytes');
  const elapsed = part('elapsed');
  const state = part('state');
  const cancel = part('cancel');
  const close = part('close');
  const problemList = part('problems');
  const contact = part('contact');
  const opener = document.activeElement;
  if (modal) rememberOwnJob(jobId);
  problemList.replaceChildren();
  problemList.hidden = true;
  contact.textContent = '';
  contact.hidden = true;
  part('title').textContent = title;
  state.dataset.state = 'running';
  part('icon').textContent = '';
  text.textContent = 'Starting…';
  bar.removeAttribute('value');
  amount.textContent = '';
  elapsed.textContent = '';
  cancel.hidden = !cancellable;
  cancel.disabled = false;
  close.hidden = true;
  if (modal) {
    dialog.showModal();
    // Never on Cancel: an Enter meant for something else must not stop the job.
    dialog.focus();
  } else {
    // show() puts the focus on the panel's first button (Cancel): it goes back to where the user was.
    dialog.show();
    if (opener && !dialog.contains(opener)) opener.focus?.();
    // The page's body (the sign-in form just went) takes no focus: then none has it.
    if (dialog.contains(document.activeElement)) document.activeElement.blur();
  }

  const closed = new Promise((resolve) => {
    close.onclick = () => dialog.close();
    dialog.addEventListener('close', resolve, { once: true });
  });
  // Escape must not hide a running job: the dialog only closes once the job is over.
  const blockEscape = (event) => event.preventDefault();
  dialog.addEventListener('cancel', blockEscape);
  // Once the job is over the dialog says how it ended; a late answer to Cancel must not replace that.
  let over = false;
  // Cancel pressed; and once the job is past the point where a cancel can stop it, why it goes on.
  let cancelAsked = false;
  let tooLate = '';
  // Set while the agent does not answer: the dialog says so instead of its last figure.
  let lostSince;
  cancel.onclick = async () => {
    // The question's answer gives the focus back to where it was: not to Cancel, where an Enter stops the job.
    if (document.activeElement === cancel) {
      if (modal) dialog.focus();
      else cancel.blur();
    }
    cancel.disabled = true;
    const sure = await confirmAction({
      ...cancelQuestion,
      confirmLabel: 'Yes, Cancel It',
      cancelLabel: 'Keep It Running',
    });
    if (!sure || over || cancel.hidden) {
      cancel.disabled = false;
      return;
    }
    cancelAsked = true;
    text.textContent = 'Cancelling…';
    try {
      await api(`/jobs/${encodeURIComponent(jobId)}/cancel`, { method: 'POST' });
    } catch (error) {
      // 409: the job ended before the cancel reached it; its own end is shown, not this answer.
      if (over || error.status === 409 || cancel.hidden) return;
      cancelAsked = false;
      text.textContent = error.message;
      cancel.disabled = false;
    }
  };
  const ui = {
    text,
    title: part('title'),
    endCancel: (reason) => {
      if (!cancel.hidden) {
        if (document.activeElement === cancel) dialog.focus();
        cancel.hidden = true;
      }
      if (cancelAsked && reason) {
        tooLate = reason;
        // "Cancelling…" gives way to the step the job goes on with, and why.
        const shown = text.textContent === 'Cancelling…' ? `${step || 'Working'}…` : text.textContent;
        if (!shown.endsWith(reason)) text.textContent = `${shown} ${reason}`;
      }
    },
  };

  let current;
  let step = '';
  // The amount and, for a step in bytes going at a steady pace, about how long it has left; redrawn
  // every second too, so the estimate counts down, and goes once the step stalls.
  const timeLeft = timeLeftEstimator();
  const showAmount = (job) => {
    amount.textContent = [progressAmount(job), timeLeft(job, Date.now())].filter(Boolean).join(' · ');
    const since = Date.parse(job.startedAt);
    elapsed.textContent = Number.isFinite(since)
      ? `Running for ${duration(Date.now() - since)} (started ${dateTime(job.startedAt)}).`
      : '';
  };
  const ticking = setInterval(() => {
    if (current && !lostSince) showAmount(current);
  }, 1000);
  const show = (job) => {
    if (over || job.endedAt) return;
    current = job;
    // A cancel that came too late to stop the job does not make it read "Cancelling…": its step stays.
    if (!(tooLate && job.phase === 'cancelling')) step = phase(job.phase, job.step);
    const total = job.bytesTotal || 0;
    // Cancel pressed: the dialog says so until the job takes it or it comes too late, whatever the job reports meanwhile.
    text.textContent =
      cancelAsked && !tooLate ? 'Cancelling…' : `${step || 'Working'}…${tooLate ? ` ${tooLate}` : ''}`;
    if (total > 0) {
      bar.max = total;
      bar.value = Math.min(job.bytesDone || 0, total);
    } else {
      bar.removeAttribute('value');
    }
    showAmount(job);
    onJob?.(job, ui);
  };

  /** While polls fail: "Lost contact…" instead of a figure that no longer moves; once back, for how long. */
  const onContact = (back, since) => {
    if (over) return;
    if (!back) {
      lostSince = since;
      text.textContent = 'Lost contact with the agent; retrying…';
      bar.removeAttribute('value');
      amount.textContent = '';
      contact.hidden = true;
      return;
    }
    lostSince = undefined;
    contact.textContent = `The agent answers again, after ${duration(Date.now() - since)} without contact.`;
    contact.hidden = false;
    if (current) show(current);
  };

  let job;
  try {
    job = await followJob(jobId, {
      onJob: show,
      onNotice: (name, data) => onNotice?.(name, data, ui),
      onContact,
    });
  } catch (error) {
    if (signedOut(error)) {
      // Signed out meanwhile: the sign-in form closed the dialog; the job goes on, no longer followed.
      clearInterval(ticking);
      dialog.removeEventListener('cancel', blockEscape);
      if (dialog.open) dialog.close();
      throw error;
    }
    job = {
      state: 'failed',
      lostContact: true,
      error: { code: error.code ?? 'unreachable', message: error.message },
    };
  }
  over = true;
  clearInterval(ticking);
  dialog.removeEventListener('cancel', blockEscape);
  cancel.hidden = true;
  state.dataset.state = job.state;
  document.dispatchEvent(new Event('gem-job-ended'));
  bar.max = 1;
  bar.value = job.state === 'succeeded' ? 1 : 0;
  amount.textContent = '';
  elapsed.textContent = '';
  const icon = part('icon');
  if (job.state === 'succeeded') {
    const issues = problems?.(job) ?? [];
    icon.textContent = issues.length ? '!' : '✓';
    // `describe` may ask the agent for more (e.g. the keep limit): the dialog waits for its words.
    text.textContent = (await describe?.(job, ui)) ?? DONE_TEXT.succeeded;
    if (issues.length) {
      // Done, but not all of it: the dialog says so instead of a plain success.
      state.dataset.state = 'problems';
      problemList.replaceChildren(...issues.map((issue) => el('li', {}, issue)));
      problemList.hidden = false;
    }
  } else if (job.state === 'interrupted') {
    icon.textContent = '!';
    text.textContent = interruptedText(job);
  } else if (job.lostContact) {
    // The page stopped asking: how the job ended is not known here, and nothing is claimed about it.
    icon.textContent = '?';
    state.dataset.state = 'unknown';
    text.textContent = `Lost contact with the agent${lostSince ? ` for ${duration(Date.now() - lostSince)}` : ''} (${job.error.message}): this page cannot tell how the job ended. Reload the page once the agent runs again to see.`;
  } else {
    icon.textContent = job.state === 'cancelled' ? '■' : '✕';
    text.textContent =
      failed?.(job) ??
      (job.error?.message
        ? `${DONE_TEXT[job.state] ?? 'Failed'}: ${job.error.message}`
        : (DONE_TEXT[job.state] ?? 'Failed'));
  }
  if (job.state === 'succeeded' && afterSuccess) {
    const untilClosed = async () => {
      close.hidden = false;
      if (modal) close.focus();
      await closed;
    };
    await afterSuccess(job, { text, untilClosed });
    return job;
  }
  close.hidden = false;
  if (modal) close.focus();
  if (job.state === 'interrupted') await afterInterrupted?.(job);
  // The panel says how the job ended until it is closed; the page need not wait for that.
  if (!modal) return job;
  await closed;
  opener?.focus?.();
  return job;
}
