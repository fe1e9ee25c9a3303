// The page's only way to talk to the agent: token handling, JSON calls, job events over a fetch stream.

const TOKEN_KEY = 'gem-backup-token';

/** The admin token of this browser tab (sessionStorage: gone when the tab closes). */
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** An error answer of the API: status, code, the message to show, and details (e.g. the bad field). */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Called on any 401: the page goes back to sign-in. Set by app.js. */
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/**
 * The current sign-in: signing out (or a 401 that sends the page back to sign-in) ends it, and with it
 * everything the signed-in page started (the look for running jobs, the event streams and polls of the
 * jobs it follows); the next sign-in is a new one.
 */
let signIn = new AbortController();
/** Aborted once the current sign-in ends. */
export const signInSignal = () => signIn.signal;
/** Ends the current sign-in; what follows a job for it rejects with an ApiError `signed_out`. */
export function endSignIn() {
  signIn.abort();
  signIn = new AbortController();
}
/** True for the error of a follow that the end of its sign-in stopped: nothing to tell. */
export const signedOut = (error) => error?.code === 'signed_out';

/** This page's requests that change something (a POST may start a job) and are not answered yet. */
let changesUnanswered = 0;
/** True while one is: a job found running may be the one it started, whose id the page does not know yet. */
export const changeUnanswered = () => changesUnanswered > 0;

function authHeaders(extra = {}) {
  return { authorization: `Bearer ${token.get() ?? ''}`, ...extra };
}

/**
 * The error of an answer that is not ok. A 401 sends the page back to sign-in, once: only if the sign-in the
 * request was made in (`madeIn`, its signInSignal) is still the current one. A request of a sign-in that a
 * first 401 already ended (the page's other calls on their way with the same token) says nothing more, so
 * the words of that first 401 stay on the sign-in form.
 */
async function failure(response, madeIn) {
  let body;
  try {
    body = await response.json();
  } catch {
    body = undefined;
  }
  const error = body?.error;
  const apiError = new ApiError(
    response.status,
    error?.code ?? 'http_error',
    error?.message ?? `the agent answered ${response.status} ${response.statusText}`,
    error?.details,
  );
  if (response.status === 401 && !madeIn.aborted) onUnauthorized(apiError);
  return apiError;
}

/**
 * Calls the API; `json` becomes the body. Resolves to the parsed answer (`raw`: the Response), rejects with an ApiError.
 * `timeoutMs`: an agent that accepts the request and then does not answer (stopped, hung) is given up on after
 * that long, with an ApiError of code `no_answer` (what the request did is then unknown).
 */
export async function api(
  path,
  { method = 'GET', json, body, headers, signal, raw = false, timeoutMs } = {},
) {
  const timer = timeoutMs ? new AbortController() : undefined;
  const timeout = timer ? setTimeout(() => timer.abort(), timeoutMs) : undefined;
  const noAnswer = () =>
    new ApiError(0, 'no_answer', `The agent did not answer within ${Math.round(timeoutMs / 1000)} s.`);
  const both = timer ? (signal ? AbortSignal.any([signal, timer.signal]) : timer.signal) : signal;
  const changing = method !== 'GET';
  const madeIn = signIn.signal;
  if (changing) changesUnanswered++;
  try {
    let response;
    try {
      response = await fetch(`/api/v1${path}`, {
        method,
        signal: both,
        headers: authHeaders(
          json === undefined ? headers : { 'content-type': 'application/json', ...headers },
        ),
        body: json === undefined ? body : JSON.stringify(json),
      });
    } catch (error) {
      if (timer?.signal.aborted && !signal?.aborted) throw noAnswer();
      if (error.name === 'AbortError') throw error;
      throw new ApiError(0, 'unreachable', 'The agent cannot be reached. Is it running?');
    }
    if (!response.ok) throw await failure(response, madeIn);
    if (raw) return response;
    if (response.status === 204) return undefined;
    const type = response.headers.get('content-type') ?? '';
    if (!type.includes('application/json')) return response;
    try {
      return await response.json();
    } catch (error) {
      if (timer?.signal.aborted && !signal?.aborted) throw noAnswer();
      throw error;
    }
  } finally {
    clearTimeout(timeout);
    if (changing) changesUnanswered--;
  }
}

/** Uploads a file as the raw body with progress (fetch has no upload progress, XHR does). */
export function uploadFile(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const madeIn = signIn.signal;
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api/v1${path}`);
    xhr.setRequestHeader('authorization', `Bearer ${token.get() ?? ''}`);
    xhr.setRequestHeader('content-type', 'application/octet-stream');
    xhr.upload.onprogress = (event) => onProgress?.(event.loaded, event.lengthComputable ? event.total : 0);
    xhr.onerror = () =>
      reject(new ApiError(0, 'unreachable', 'The upload was interrupted: the agent cannot be reached.'));
    xhr.onload = () => {
      let body;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = undefined;
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const error = body?.error;
      const apiError = new ApiError(
        xhr.status,
        error?.code ?? 'http_error',
        error?.message ?? `upload failed (${xhr.status})`,
        error?.details,
      );
      if (xhr.status === 401 && !madeIn.aborted) onUnauthorized(apiError);
      reject(apiError);
    };
    xhr.send(file);
  });
}

/** Parses a server-sent-events byte stream into {event, data} records. */
async function* sseRecords(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end = buffer.indexOf('\n\n');
    while (end !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) yield { event, data: data.join('\n') };
      end = buffer.indexOf('\n\n');
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follows a job until it ends: its events stream (fetched with the token, since EventSource cannot send
 * one), falling back to polling if the stream breaks (e.g. the agent restarts after a restore).
 * `onJob(job)` gets every state; `onNotice(name, data)` gets notices such as `restore-swap`.
 * Resolves to the final job; its state is 'interrupted' if the agent restarted meanwhile (its error then says
 * what the agent found at start-up, or, from an agent that forgot the job, only that it restarted).
 */
/** A job the agent found cut short by its own stop when it started again (code `interrupted`) ends as 'interrupted'. */
function settled(job) {
  return job.error?.code === 'interrupted' ? { ...job, state: 'interrupted' } : job;
}

/** Failed polls in a row before the page says it lost contact with the agent (about 2 s): one is a blip. */
const LOST_AFTER = 2;

export async function followJob(jobId, { onJob, onNotice, onContact, signal: given } = {}) {
  // The follow belongs to the sign-in it started in: signing out ends its stream (or its polls).
  const ended = signIn.signal;
  const signal = given ? AbortSignal.any([given, ended]) : ended;
  const stopped = (error) =>
    ended.aborted ? new ApiError(0, 'signed_out', 'Signed out: the page no longer follows this job.') : error;
  let last;
  try {
    const response = await fetch(`/api/v1/jobs/${encodeURIComponent(jobId)}/events`, {
      headers: authHeaders({ accept: 'text/event-stream' }),
      signal,
    });
    if (!response.ok) throw await failure(response, ended);
    for await (const record of sseRecords(response.body)) {
      if (record.event === 'ping') continue;
      const data = JSON.parse(record.data);
      if (record.event === 'job') {
        last = data;
        onJob?.(data);
        if (data.endedAt) return settled(data);
      } else {
        onNotice?.(record.event, data?.data ?? null, data?.job);
      }
    }
  } catch (error) {
    if (signal.aborted) throw stopped(error);
    if (error instanceof ApiError && error.status !== 0 && error.status < 500) throw error;
  }
  // The stream ended early or broke: poll until the job is over or the agent is back. `onContact(false,
  // since)` once LOST_AFTER polls in a row failed (`since`: when the first did), `onContact(true, since)`
  // at the first answer after that.
  let lostSince;
  let toldLost = false;
  for (let failures = 0; ; ) {
    if (signal.aborted) throw stopped(new DOMException('aborted', 'AbortError'));
    try {
      const job = await api(`/jobs/${encodeURIComponent(jobId)}`, { signal });
      failures = 0;
      if (toldLost) onContact?.(true, lostSince);
      toldLost = false;
      if (!last || JSON.stringify(job) !== JSON.stringify(last)) onJob?.(job);
      last = job;
      if (job.endedAt) return settled(job);
    } catch (error) {
      // Signed out, or a 401 (this poll's or another call's) ended the sign-in: the follow ends with it.
      if (error.name === 'AbortError' || signal.aborted) throw stopped(error);
      // A job the agent no longer knows was cut short by a restart (jobs live in its memory): say so,
      // rather than guess how it ended. Anything else but "unreachable" is a real answer.
      if (error.status === 404 && last) {
        if (toldLost) onContact?.(true, lostSince);
        return {
          ...last,
          state: 'interrupted',
          endedAt: new Date().toISOString(),
          error: { code: 'agent_restarted', message: 'the agent restarted while this job was running' },
        };
      }
      if (error.status !== 0 && error.status < 500) throw error;
      if (failures === 0) lostSince = Date.now();
      if (++failures === LOST_AFTER) {
        toldLost = true;
        onContact?.(false, lostSince);
      }
      if (failures > 150) throw error;
    }
    await sleep(1000);
  }
}
