/** Where the CLI gets a keys passphrase: a file, GEM_KEYS_PASSPHRASE, or a prompt without echo; never the command line. */
import { readFile } from 'node:fs/promises';
import { AppError } from '../errors';

/** The environment variable that holds the keys passphrase for scripts. */
export const PASSPHRASE_ENV = 'GEM_KEYS_PASSPHRASE';

/** The parseArgs option every command that takes a passphrase declares. */
export const PASSPHRASE_FILE_OPTION = { 'passphrase-file': { type: 'string' } } as const;

const ALTERNATIVES = `set ${PASSPHRASE_ENV}, pass --passphrase-file PATH, or run on a terminal to be prompted`;

/**
 * Refuses `--passphrase VALUE` before the arguments are parsed: a value on the command line is
 * visible to every user in `ps` and stays in the shell history.
 */
export function refusePassphraseArgument(args: string[]): void {
  if (args.some((a) => a === '--passphrase' || a.startsWith('--passphrase='))) {
    throw new AppError(
      'bad_request',
      `--passphrase is not accepted (a passphrase on the command line shows in ps and shell history): ${ALTERNATIVES}`,
    );
  }
}

/**
 * The passphrase from `--passphrase-file` (its first line) or GEM_KEYS_PASSPHRASE, in that order;
 * undefined when neither is given.
 */
async function passphraseFromOptions(file: string | undefined): Promise<string | undefined> {
  if (file !== undefined) {
    const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      throw new AppError(
        'bad_request',
        `cannot read the passphrase file ${file}: ${error.code ?? error.message}`,
      );
    });
    const line = text.split(/\r?\n/)[0] ?? '';
    if (!line) throw new AppError('bad_request', `the passphrase file ${file} is empty`);
    return line;
  }
  return process.env[PASSPHRASE_ENV] || undefined;
}

/**
 * Ctrl-C at a passphrase prompt: asked before the command changes anything, so nothing was changed, and
 * the CLI exits 130 as after any other Ctrl-C (raw mode turns it into a key press, not a signal).
 */
export class PromptCancelled extends AppError {
  constructor() {
    super('cancelled', 'cancelled: nothing was changed');
  }
}

/** True when a person is at the terminal to answer a prompt. */
function canPrompt(): boolean {
  return Boolean(process.stdin.isTTY && process.stderr.isTTY);
}

/** Asks on the terminal without echoing what is typed; Ctrl-C cancels. */
function promptHidden(question: string): Promise<string> {
  const stdin = process.stdin;
  return new Promise((resolve, reject) => {
    let answer = '';
    process.stderr.write(question);
    stdin.setRawMode(true);
    stdin.resume();
    stdin.setEncoding('utf8');
    const done = (error?: Error) => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      if (error) reject(error);
      else resolve(answer);
    };
    const onData = (chunk: string) => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n' || ch === '\u0004') return done();
        if (ch === '\u0003') return done(new PromptCancelled());
        if (ch === '\u007f' || ch === '\b') answer = answer.slice(0, -1);
        else answer += ch;
      }
    };
    stdin.on('data', onData);
  });
}

/**
 * The passphrase to open a keys file: from the file option or the environment; else, when `text` is
 * protected and a person is at the terminal, asked for. Undefined for an unprotected file.
 */
export async function passphraseToOpen(text: string, file: string | undefined): Promise<string | undefined> {
  const given = await passphraseFromOptions(file);
  if (given !== undefined || !isProtectedExport(text)) return given;
  // No terminal (a script, ssh without -t, </dev/null): nothing could be typed at a prompt.
  if (!canPrompt()) {
    throw new AppError(
      'wrong_passphrase',
      `this keys file is protected by a passphrase and there is no terminal to ask on: set ${PASSPHRASE_ENV} or pass --passphrase-file PATH`,
    );
  }
  return (await promptHidden('Passphrase of the keys file: ')) || undefined;
}

/**
 * The text of the keys file at `path`, without a UTF-8 byte order mark (Notepad, PowerShell); a missing
 * or unreadable one is one line naming it.
 */
export async function readKeysFile(path: string): Promise<string> {
  const text = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') throw new AppError('not_found', `no such keys file: ${path}`);
    if (error.code === 'EISDIR') throw new AppError('bad_request', `${path} is a folder, not a keys file`);
    throw new AppError('bad_request', `cannot read the keys file ${path}: ${error.code ?? error.message}`);
  });
  return text.replace(/^\uFEFF/, '');
}

/**
 * The passphrase to protect an export: from the file option or the environment; else, on a
 * terminal, asked for twice (empty: no passphrase). Undefined means an unprotected export.
 */
export async function passphraseToProtect(file: string | undefined): Promise<string | undefined> {
  const given = await passphraseFromOptions(file);
  if (given !== undefined || !canPrompt()) return given;
  const first = await promptHidden('Passphrase to protect the keys file (empty: none): ');
  if (!first) return undefined;
  if ((await promptHidden('The same passphrase again: ')) !== first)
    throw new AppError('bad_request', 'the two passphrases differ; nothing was exported');
  return first;
}

function isProtectedExport(text: string): boolean {
  try {
    const json = JSON.parse(text) as { protected?: unknown };
    return Boolean(json && typeof json === 'object' && json.protected);
  } catch {
    return false;
  }
}
