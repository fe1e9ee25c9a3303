// How sizes, dates and job phases read on the page.

/** 1536 -> "1.5 KB". */
export function bytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value >= 10 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

/**
 * A running job's amount under its progress bar: "1.5 MB of 3 MB", "1.5 MB so far", or for a step
 * counted in items (a restore's loading) "3 of 11 steps", in rows (the history purge) "55,000 rows so
 * far"; empty when nothing is counted yet.
 */
export function progressAmount(job) {
  const total = job.bytesTotal || 0;
  const done = Math.min(job.bytesDone || 0, total || Number.POSITIVE_INFINITY);
  if (job.unit === 'rows')
    return done > 0 ? `${done.toLocaleString()} ${done === 1 ? 'row' : 'rows'} so far` : '';
  if (job.unit === 'items') {
    if (total > 0) return `${done} of ${total} ${total === 1 ? 'step' : 'steps'}`;
    return done > 0 ? `${done} ${done === 1 ? 'step' : 'steps'} done` : '';
  }
  if (total > 0) return `${bytes(done)} of ${bytes(total)}`;
  return done > 0 ? `${bytes(done)} so far` : '';
}

// How long a step has left, from the progress it reports: for the current step only (a job's steps go
// at different speeds), and only in bytes of a known total (rows have no total; a restore's items
// differ in size by far, so their count says nothing of the time).
/** The pace is measured over this much recent progress (ms): a slow start no longer counts after it. */
const PACE_WINDOW_MS = 30_000;
/**
 * The pace is measured from this long (ms) after the step began (or was first seen): at its start the
 * buffers on the way fill at once, and the megabytes that takes would make a slow link look fast.
 */
const SETTLE_MS = 2_000;
/** Nothing is said before the progress measured spans this long (ms) and this share of the step is done. */
const ESTIMATE_AFTER_MS = 5_000;
const ESTIMATE_AFTER_SHARE = 0.02;
/** No progress for this long (ms), or three times the usual gap between reports if longer: stalled, nothing is said. */
const STALL_MS = 10_000;
/** The estimate shown counts down, and is replaced only when a new one differs from it by more than this share. */
const STEADY_SHARE = 0.2;

/** 42_000 -> "about 40 s left", 200_000 -> "about 3 min left", 4_900_000 -> "about 1 h 20 min left". */
function leftWords(ms) {
  const seconds = ms / 1000;
  if (seconds < 57.5) return `about ${Math.max(5, Math.round(seconds / 5) * 5)} s left`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `about ${minutes} min left`;
  const tens = Math.round(minutes / 10) * 10;
  return `about ${Math.floor(tens / 60)} h${tens % 60 ? ` ${tens % 60} min` : ''} left`;
}

/**
 * An estimator of a running job's time left in its current step: feed it every state of the job (its
 * `phase`, `bytesDone`, `bytesTotal`, `unit`) and the time (ms), also now and then with no news, and it
 * answers "about 40 s left", or '' when it cannot say honestly: no total, not in bytes, the step just
 * began, or no progress for a while. A new step (or a count that went back) starts it afresh.
 */
export function timeLeftEstimator() {
  let step = '';
  /** When the step began, or was first seen. */
  let began = 0;
  /** When the count moved, and to what, within the pace window: { at, done }. */
  let moves = [];
  /** When the estimate shown says the step ends. */
  let shownEnd;
  return (job, now) => {
    const total = job.bytesTotal || 0;
    const done = job.bytesDone || 0;
    const unit = job.unit ?? 'bytes';
    const key = `${job.phase}\n${job.step ?? ''}\n${unit}\n${total}`;
    const last = moves.at(-1);
    if (key !== step || (last && done < last.done)) {
      step = key;
      began = now;
      moves = [];
      shownEnd = undefined;
    }
    if (unit !== 'bytes' || total <= 0 || done >= total) return '';
    if (now - began >= SETTLE_MS && done !== moves.at(-1)?.done) moves.push({ at: now, done });
    moves = moves.filter((move) => move.at >= now - PACE_WINDOW_MS);
    const first = moves[0];
    const latest = moves.at(-1);
    const span = latest ? latest.at - first.at : 0;
    const usualGap = moves.length > 1 ? span / (moves.length - 1) : 0;
    const stalled = !latest || now - latest.at > Math.max(STALL_MS, 3 * usualGap);
    if (stalled || span < ESTIMATE_AFTER_MS || done < ESTIMATE_AFTER_SHARE * total) {
      shownEnd = undefined;
      return '';
    }
    const left = ((total - latest.done) * span) / (latest.done - first.done) - (now - latest.at);
    if (shownEnd === undefined || Math.abs(shownEnd - now - left) > STEADY_SHARE * left)
      shownEnd = now + left;
    return leftWords(shownEnd - now);
  };
}

/** How dates read: the reader's locale and time zone, the zone named (the controller may be in another). */
export const DATE_TIME_FORMAT = {
  year: 'numeric',
  month: 'short',
  day: 'numeric',
  hour: 'numeric',
  minute: '2-digit',
  timeZoneName: 'short',
};

/** An ISO time in the reader's locale and time zone, with the zone, e.g. "Nov 28, 2026, 11:14 PM EST". */
export function dateTime(iso) {
  if (!iso) return '–';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(undefined, DATE_TIME_FORMAT);
}

// The agent names a job's steps for its logs ("dump", "stage"); the owner reads what each one does.
// Every name passed to ctx.phase() in agent/ has its words here (test/browser/job-dialogs.test.ts
// checks that by reading the sources).
const PHASE_WORDS = {
  // Any job (agent/jobs/runner.ts)
  starting: 'Starting',
  cancelling: 'Cancelling',
  done: 'Finishing',
  // Backup and verify (agent/backup/create.ts, retention.ts)
  dump: 'Exporting the database',
  folders: 'Copying the scripts and configuration folders',
  pack: 'Encrypting and packing the backup',
  verify: 'Checking the backup: every file is decrypted and compared with its checksum',
  'pruning old backups': 'Removing old backups beyond the keep limit',
  // Restore (agent/restore/restore.ts); `check` is also Cloud DR recovery's check of the download
  check: 'Checking the backup file',
  safety: 'Taking a safety backup of the current data',
  stage: 'Loading the backup (current data untouched)',
  swap: 'Switching over',
  restart: 'Restarting GEM, if a restart command is set up',
  // Offsite sync (agent/offsite/service.ts)
  listing: 'Comparing the backups here and at the destination',
  pruning: 'Removing old copies beyond the keep limit',
  // Cloud DR push and recovery (agent/dr/push.ts, recover.ts)
  connect: 'Connecting to Cloud Disaster Recovery',
  hash: 'Computing the backup’s checksum',
  upload: 'Uploading to Cloud Disaster Recovery',
  download: 'Downloading from Cloud Disaster Recovery',
  keys: 'Installing the recovered encryption keys',
  store: 'Adding the backup to the local backups',
  // Database maintenance (agent/maintenance/run.ts)
  'purging history': 'Deleting old history',
};

/** The agent's destination names (verify and auto-upload name them): [name, how a copy is there]. */
const PLACES = {
  cloud: ['Cloud Disaster Recovery', 'in'],
  sftp: ['the SFTP server', 'on'],
  s3: ['S3-compatible storage', 'in'],
  smb: ['the Windows share (SMB)', 'on'],
};
const placeName = (kind) => PLACES[kind.trim()]?.[0] ?? kind.trim();
const onPlace = (kind) => (PLACES[kind] ? `${PLACES[kind][1]} ${PLACES[kind][0]}` : `on ${kind}`);

/** Step names that carry a value (a destination, a backup's name), most specific first. */
const PHASE_PATTERNS = [
  [/^verify local$/, () => 'Checking the newest local backup'],
  [/^verify (\w+)$/, (kind) => `Checking the newest copy ${onPlace(kind)}`],
  [/^uploading to (.+)$/, (kinds) => `Uploading to ${kinds.split(',').map(placeName).join(' and ')}`],
  [/^uploading (.+)$/, (name) => `Uploading ${name}`],
  [/^downloading (.+)$/, (name) => `Downloading ${name}`],
];

/** A job step in the owner's words ("dump" -> "Exporting the database"); undefined for a step it does not know. */
export function phaseWords(name) {
  if (!name) return undefined;
  const text = String(name);
  if (Object.hasOwn(PHASE_WORDS, text)) return PHASE_WORDS[text];
  for (const [pattern, words] of PHASE_PATTERNS) {
    const match = pattern.exec(text);
    if (match) return words(match[1]);
  }
  return undefined;
}

/**
 * The steps a phase runs within itself (a job's `step`: the safety backup a restore takes goes through
 * a backup's steps), in the words that follow the phase's: "Taking a safety backup…: verifying".
 */
const STEP_WORDS = {
  dump: 'exporting the database',
  folders: 'copying the scripts and configuration folders',
  pack: 'encrypting and packing',
  verify: 'verifying',
};

/**
 * A job step as the progress dialog shows it: its words, or for a step of a newer agent "some-step" ->
 * "Some step"; with the phase's own step if it has one ("Taking a safety backup of the current data:
 * verifying"), so that each count shown goes with the words of what it counts.
 */
export function phase(name, step) {
  if (!name) return '';
  const text = phaseWords(name) ?? String(name).replace(/[-_]+/g, ' ');
  const words = text.charAt(0).toUpperCase() + text.slice(1);
  if (!step) return words;
  const stepText = Object.hasOwn(STEP_WORDS, step) ? STEP_WORDS[step] : String(step).replace(/[-_]+/g, ' ');
  return `${words}: ${stepText}`;
}

/** Creates an element with attributes and children (strings become text, never HTML). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'className') node.className = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Shows a result line: kind 'ok' or 'bad' adds the ✓ / ✕ mark (drawn by CSS, so no emoji font is needed). */
export function tell(node, text, kind = '') {
  node.className = kind ? `result ${kind}` : 'result';
  node.textContent = text;
}
