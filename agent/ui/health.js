// The status panel at the top of the page: the agent's health (GET /health) in words, kept fresh.
import { api } from './api.js';
import { dateTime, el } from './format.js';

const $ = (id) => document.getElementById(id);

/** How often the status is asked for again while the page is visible. */
export const HEALTH_REFRESH_MS = 60_000;

/** The areas of GET /health in the product's words, in the order the panel lists them. */
const AREA_NAMES = {
  backups: 'Backups',
  offsite: 'Offsite copies',
  dr: 'Cloud Disaster Recovery',
  verification: 'Verification',
  disk: 'Disk space',
  keys: 'Encryption keys',
  jobs: 'Jobs',
  alerts: 'Alerts',
};

/** The overall state in words: colour repeats it, never replaces it. */
const HEADLINES = {
  ok: 'All protected',
  warning: 'Needs attention',
  failing: 'Not protected: something is failing',
};
const AREA_WORDS = { warning: 'Warning', failing: 'Failing' };
const ICONS = { ok: '✓', warning: '!', failing: '✕', unknown: '?' };
const OFFSITE_TITLES = { sftp: 'SFTP server', s3: 'S3 storage', smb: 'Windows share (SMB)' };

/** "last backup 28 Nov 2026, 02:00, offsite SFTP server 28 Nov 2026, 02:01": the calm all-ok line. */
function allProtectedLine(report) {
  const last = report.areas?.backups?.lastBackup;
  const parts = [last ? `last backup ${dateTime(last.createdAt)}` : 'no backup yet'];
  const destinations = Object.entries(report.areas?.offsite?.destinations ?? {});
  if (!destinations.length) parts.push('no offsite copy turned on');
  for (const [kind, destination] of destinations) {
    const upload = destination?.lastSuccessfulUpload;
    parts.push(
      `offsite ${OFFSITE_TITLES[kind] ?? kind} ${upload ? dateTime(upload.at) : 'nothing uploaded yet'}`,
    );
  }
  return `${HEADLINES.ok}: ${parts.join(', ')}`;
}

/** The areas that are not ok, failing first, each with the agent's own reason. */
function troubledAreas(report) {
  const rank = { failing: 0, warning: 1 };
  return Object.entries(report.areas ?? {})
    .filter(([, area]) => area && area.status !== 'ok')
    .sort(([, a], [, b]) => (rank[a.status] ?? 2) - (rank[b.status] ?? 2))
    .map(([name, area]) => ({
      name: AREA_NAMES[name] ?? name,
      status: area.status,
      reason: area.reason,
    }));
}

/** What the panel shows for a report (or for an error when the agent could not say). */
function viewOf(report, error) {
  if (error) {
    return {
      status: 'unknown',
      headline: 'Protection status unknown',
      summary: `The agent could not report its status: ${error.message}`,
      areas: [],
    };
  }
  const areas = troubledAreas(report);
  if (report.status === 'ok' || !areas.length) {
    return { status: 'ok', headline: allProtectedLine(report), summary: '', areas: [] };
  }
  return { status: report.status, headline: HEADLINES[report.status] ?? report.status, summary: '', areas };
}

/** The last view drawn: the live region is only touched when what it says changes (no re-announcing). */
let drawnKey = '';

function draw(view, checkedAt) {
  const panel = $('status-panel');
  panel.dataset.status = view.status;
  panel.hidden = false;
  $('status-checked').textContent = checkedAt ? `Checked ${dateTime(checkedAt)}` : '';
  const key = JSON.stringify(view);
  if (key === drawnKey) return;
  drawnKey = key;
  $('status-icon').textContent = ICONS[view.status] ?? ICONS.unknown;
  $('status-headline').textContent = view.headline;
  const summary = $('status-summary');
  summary.textContent = view.summary;
  summary.hidden = !view.summary;
  const list = $('status-areas');
  list.replaceChildren(
    ...view.areas.map((area) =>
      el(
        'li',
        { 'data-status': area.status },
        el('span', { className: 'status-tag' }, AREA_WORDS[area.status] ?? area.status),
        ' ',
        el('strong', {}, `${area.name}:`),
        ' ',
        area.reason,
      ),
    ),
  );
  list.hidden = view.areas.length === 0;
}

// One question at a time: a refresh asked for meanwhile runs once the current one has answered, so
// the panel never shows an older answer after a newer one.
let running;
let again = false;

/** Asks the agent for its health now and redraws the panel. Never throws: an error is shown in it. */
export async function loadHealth() {
  if (running) {
    again = true;
    return running;
  }
  running = (async () => {
    do {
      again = false;
      try {
        const report = await api('/health');
        draw(viewOf(report), report.checkedAt);
      } catch (error) {
        // A 401 already sent the page back to sign-in; there is nothing to show then.
        if (error.status !== 401) draw(viewOf(undefined, error));
      }
    } while (again);
  })();
  try {
    await running;
  } finally {
    running = undefined;
  }
}

/** True while the signed-in page is on screen: only then is the agent asked. */
function watching() {
  return document.visibilityState === 'visible' && !$('app').hidden;
}

let lastAsked = 0;
function refreshIfWatching(minAgeMs = 0) {
  if (!watching() || Date.now() - lastAsked < minAgeMs) return;
  lastAsked = Date.now();
  loadHealth();
}

/**
 * Keeps the panel fresh: every HEALTH_REFRESH_MS while visible, on coming back into view if it is
 * older than that, whenever a job shown in the progress dialog or the job panel ends (every job the
 * page follows goes through one of them, whoever started it), and after the keys are
 * downloaded or the settings saved.
 */
export function setupHealth() {
  setInterval(() => refreshIfWatching(), HEALTH_REFRESH_MS);
  document.addEventListener('visibilitychange', () => refreshIfWatching(HEALTH_REFRESH_MS));
  // dialogs.js says when a job it showed (in the progress dialog or the job panel) ended.
  document.addEventListener('gem-job-ended', () => refreshIfWatching());
  // Downloading the keys and saving the settings change areas too (keys; backups off, a destination
  // on): the page shows both, so the panel follows rather than contradict them for up to a minute.
  const keysTitle = $('keys-banner-title');
  let keysShown; // the first drawing of the banner is the page loading, which asks already
  new MutationObserver(() => {
    if (keysShown !== undefined && keysTitle.textContent !== keysShown) refreshIfWatching();
    keysShown = keysTitle.textContent;
  }).observe(keysTitle, { childList: true });
  const saved = $('settings-status');
  new MutationObserver(() => saved.classList.contains('ok') && refreshIfWatching()).observe(saved, {
    childList: true,
  });
}

/** Forgets what was drawn (sign-out): the next sign-in draws the panel afresh. */
export function clearHealth() {
  drawnKey = '';
  $('status-panel').hidden = true;
}
