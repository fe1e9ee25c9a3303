/** Structured logs: one JSON object per line on stderr, with secrets redacted by key name; the process's fatal-error exit. */

type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'fatal';
export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** The process cannot go on (installFatalHandlers): always written, whatever the level. */
  fatal(msg: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
}

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, fatal: 50 };
const SECRET_KEY = /pass(word|phrase)?|secret|token|private|authorization|^key$|masterkey|filekey/i;

/**
 * A query builder's error (drizzle: "Failed query: <sql>\nparams: <values>") carries the query's values
 * in its message and stack, and they may be a settings document with secrets in it (a webhook URL is the
 * credential). The values are cut out of any text logged; the query itself stays (it names no value).
 */
export function withoutQueryParams(text: string): string {
  const at = text.indexOf('\nparams: ');
  if (at < 0) return text;
  const stack = text.indexOf('\n    at ', at);
  return `${text.slice(0, at)}\nparams: [not logged]${stack < 0 ? '' : text.slice(stack)}`;
}

/**
 * How far a logged value is walked. Past these limits a mark is written instead of the value, never the
 * value itself: left as it is, it would be written unredacted, and a cyclic one (a socket, an SSH client)
 * makes the line fail. The budget of values bounds the time and size of each field whatever is logged (a
 * graph of a few objects each pointing at the others is exponential in the depth, and a list may hold
 * millions of items): past it, the rest of a list or object is left out.
 */
const MAX_DEPTH = 6;
const MAX_VALUES = 1000;
const TOO_LARGE = '[not logged: too large]';

/** One field of a log line, its secret-looking fields replaced at any depth and a query's values cut from any text. */
function redactField(value: unknown): unknown {
  let values = 0;
  const ancestors = new WeakSet<object>();
  const walk = (v: unknown, depth: number): unknown => {
    if (typeof v === 'string') return withoutQueryParams(v);
    if (v === null || typeof v !== 'object') return v;
    if (v instanceof Error)
      return { name: v.name, message: withoutQueryParams(v.message), code: (v as { code?: unknown }).code };
    if (v instanceof Date) return v;
    if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) return `[${v.byteLength} bytes]`;
    // Only plain data is walked: a class instance (a stream, a socket, a client) is named, not written.
    const proto = Object.getPrototypeOf(v);
    if (!Array.isArray(v) && proto !== Object.prototype && proto !== null)
      return `[${proto?.constructor?.name || 'object'}]`;
    if (ancestors.has(v)) return '[cycle]';
    if (depth > MAX_DEPTH) return TOO_LARGE;
    ancestors.add(v);
    try {
      const keys = Array.isArray(v) ? v.keys() : Object.keys(v);
      const out = (Array.isArray(v) ? [] : {}) as Record<string | number, unknown>;
      for (const k of keys) {
        if (++values > MAX_VALUES) {
          // The rest of this list or object is left out, with a mark where it was cut.
          out[Array.isArray(v) ? k : '…'] = TOO_LARGE;
          break;
        }
        const item = (v as Record<string | number, unknown>)[k];
        out[k] = typeof k === 'string' && SECRET_KEY.test(k) ? '[redacted]' : walk(item, depth + 1);
      }
      return out;
    } finally {
      ancestors.delete(v);
    }
  };
  return walk(value, 0);
}

/** The fields of a log line, redacted; each one has its own budget, so a huge one cannot push the others out. */
function redact(fields: LogFields): LogFields {
  const out: LogFields = {};
  for (const [k, v] of Object.entries(fields)) out[k] = SECRET_KEY.test(k) ? '[redacted]' : redactField(v);
  return out;
}

/** A logger writing JSON lines to `write` (stderr by default), dropping levels below `level`. */
export function createLogger(
  options: { level?: LogLevel; base?: LogFields; write?: (line: string) => void } = {},
): Logger {
  const min = ORDER[options.level ?? 'info'];
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const base = options.base ?? {};
  const emit = (level: LogLevel, msg: string, fields?: LogFields) => {
    if (ORDER[level] < min) return;
    write(
      JSON.stringify({
        time: new Date().toISOString(),
        level,
        msg,
        ...redact({ ...base, ...fields }),
      }),
    );
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    fatal: (m, f) => emit('fatal', m, f),
    child: (fields) => createLogger({ ...options, base: { ...base, ...fields } }),
  };
}

/** A logger that drops everything (tests that do not care about logs). */
export const silentLogger: Logger = createLogger({ write: () => {} });

/** How long a fatal exit waits for the best-effort close before exiting anyway. */
const FATAL_CLOSE_MS = 10_000;

/** The exit code of a fatal error (the supervisor, systemd or docker, restarts the agent). */
export const FATAL_EXIT_CODE = 1;

/**
 * Makes an unhandled rejection or uncaught exception end the process as a backup daemon should: one
 * `fatal` JSON line (the error's name, message and stack; never the value of a non-Error reason, which
 * may hold anything), then `close` (stop timers, cancel jobs and their child processes, end the pool)
 * for at most `closeTimeoutMs`, then exit FATAL_EXIT_CODE so the supervisor restarts a clean process.
 * Nothing more is attempted: the process's state is unknown, and an interrupted restore is recovered
 * from its journal at the next start. A second error while closing is not logged again.
 */
export function installFatalHandlers(
  log: Logger,
  options: { close?: () => Promise<unknown>; closeTimeoutMs?: number } = {},
): void {
  let dying = false;
  const die = (origin: 'unhandledRejection' | 'uncaughtException', reason: unknown) => {
    if (dying) return;
    dying = true;
    process.exitCode = FATAL_EXIT_CODE;
    const error =
      reason instanceof Error
        ? {
            name: reason.name,
            message: withoutQueryParams(reason.message),
            stack: reason.stack && withoutQueryParams(reason.stack),
          }
        : { message: `a non-Error value (${reason === null ? 'null' : typeof reason})` };
    log.fatal('unexpected error: the agent exits and its supervisor restarts it', { origin, error });
    const exit = () => process.exit(FATAL_EXIT_CODE);
    // Not unref'd: the exit must happen even if closing hangs with nothing else keeping the loop alive.
    setTimeout(exit, options.closeTimeoutMs ?? FATAL_CLOSE_MS);
    Promise.resolve()
      .then(() => options.close?.())
      .catch(() => {})
      .finally(exit);
  };
  process.on('unhandledRejection', (reason) => die('unhandledRejection', reason));
  process.on('uncaughtException', (error) => die('uncaughtException', error));
  // A log that can no longer be written (the terminal `npm start` ran in was lost: EIO; a pipe whose
  // reader went away: EPIPE) is no reason to stop taking backups: its lines go nowhere.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE' && error.code !== 'EIO') die('uncaughtException', error);
    });
  }
}
