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

/** Replaces the value of every field whose name looks secret, at any depth, and a query's values in any text. */
function redact(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return withoutQueryParams(value);
  if (depth > 6 || value === null || typeof value !== 'object') return value;
  if (value instanceof Error)
    return {
      name: value.name,
      message: withoutQueryParams(value.message),
      code: (value as { code?: unknown }).code,
    };
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value))
    out[k] = SECRET_KEY.test(k) ? '[redacted]' : redact(v, depth + 1);
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
        ...(redact({ ...base, ...fields }) as LogFields),
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
}
