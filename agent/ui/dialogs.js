// The two dialogs: a confirmation for destructive actions, and a job's progress fed by its events.
import { api, followJob } from './api.js';
import { el, phase, progressAmount } from './format.js';

const $ = (id) => document.getElementById(id);

/** Asks before a destructive action. `body` is text or nodes. Resolves true only on the confirm button. */
export function confirmAction({ title, body, confirmLabel, danger = true }) {
  const dialog = $('confirm-dialog');
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

/**
 * Shows a job's progress until it ends. `describe(job)` gives the success text (or a promise of it);
 * `problems(job)` lists what went wrong in a job that still succeeded (shown under it, marked as a
 * problem); `onNotice(name, data, { text, title })` sees notices and may reword the dialog;
 * `afterSuccess(job)` runs on success (e.g. reload); `afterInterrupted(job)` runs when an agent restart
 * cut the job short (e.g. reload the page's data). Resolves to the final job.
 */
export async function showJobProgress(
  jobId,
  { title, describe, problems, onNotice, afterSuccess, afterInterrupted, cancellable = true },
) {
  const dialog = $('progress-dialog');
  const text = $('progress-text');
  const bar = $('progress-bar');
  const amount = $('progress-bytes');
  const state = $('progress-state');
  const cancel = $('progress-cancel');
  const close = $('progress-close');
  const problemList = $('progress-problems');
  const opener = document.activeElement;
  problemList.replaceChildren();
  problemList.hidden = true;
  $('progress-title').textContent = title;
  state.dataset.state = 'running';
  $('progress-icon').textContent = '';
  text.textContent = 'Starting…';
  bar.removeAttribute('value');
  amount.textContent = '';
  cancel.hidden = !cancellable;
  cancel.disabled = false;
  close.hidden = true;
  dialog.showModal();
  (cancellable ? cancel : dialog).focus();

  const closed = new Promise((resolve) => {
    close.onclick = () => dialog.close();
    dialog.addEventListener('close', resolve, { once: true });
  });
  // Escape must not hide a running job: the dialog only closes once the job is over.
  const blockEscape = (event) => event.preventDefault();
  dialog.addEventListener('cancel', blockEscape);
  // Once the job is over the dialog says how it ended; a late answer to Cancel must not replace that.
  let over = false;
  cancel.onclick = async () => {
    cancel.disabled = true;
    text.textContent = 'Cancelling…';
    try {
      await api(`/jobs/${encodeURIComponent(jobId)}/cancel`, { method: 'POST' });
    } catch (error) {
      // 409: the job ended before the cancel reached it; its own end is shown, not this answer.
      if (over || error.status === 409) return;
      text.textContent = error.message;
      cancel.disabled = false;
    }
  };

  const show = (job) => {
    if (over || job.endedAt) return;
    const total = job.bytesTotal || 0;
    text.textContent = `${phase(job.phase) || 'Working'}…`;
    if (total > 0) {
      bar.max = total;
      bar.value = Math.min(job.bytesDone || 0, total);
    } else {
      bar.removeAttribute('value');
    }
    amount.textContent = progressAmount(job);
  };

  let job;
  try {
    job = await followJob(jobId, {
      onJob: show,
      onNotice: (name, data) => onNotice?.(name, data, { text, title: $('progress-title') }),
    });
  } catch (error) {
    job = { state: 'failed', error: { message: error.message } };
  }
  over = true;
  dialog.removeEventListener('cancel', blockEscape);
  cancel.hidden = true;
  state.dataset.state = job.state;
  bar.max = 1;
  bar.value = job.state === 'succeeded' ? 1 : 0;
  amount.textContent = '';
  if (job.state === 'succeeded') {
    const issues = problems?.(job) ?? [];
    $('progress-icon').textContent = issues.length ? '!' : '✓';
    // `describe` may ask the agent for more (e.g. the keep limit): the dialog waits for its words.
    text.textContent = (await describe?.(job)) ?? DONE_TEXT.succeeded;
    if (issues.length) {
      // Done, but not all of it: the dialog says so instead of a plain success.
      state.dataset.state = 'problems';
      problemList.replaceChildren(...issues.map((issue) => el('li', {}, issue)));
      problemList.hidden = false;
    }
  } else if (job.state === 'interrupted') {
    $('progress-icon').textContent = '!';
    text.textContent = interruptedText(job);
  } else {
    $('progress-icon').textContent = job.state === 'cancelled' ? '■' : '✕';
    text.textContent = job.error?.message
      ? `${DONE_TEXT[job.state] ?? 'Failed'}: ${job.error.message}`
      : (DONE_TEXT[job.state] ?? 'Failed');
  }
  if (job.state === 'succeeded' && afterSuccess) {
    await afterSuccess(job, { text });
    return job;
  }
  close.hidden = false;
  close.focus();
  if (job.state === 'interrupted') await afterInterrupted?.(job);
  await closed;
  opener?.focus?.();
  return job;
}
