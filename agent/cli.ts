/** gem-backup: the command line, for when the page is not reachable. Exit 0 on success, one clear line otherwise. */
import type { CliContext } from './cli/context';
import { PromptCancelled } from './cli/passphrase';
import { describeError } from './errors';

type Command = (cli: CliContext) => Promise<void>;

/**
 * Every command, by name: each loads its module (and through it the agent) only when it runs, so
 * `--help`, a usage error or the offline decrypt do not wait for the whole agent to load.
 */
const COMMANDS: Record<string, () => Promise<Command>> = {
  create: async () => (await import('./cli/backups')).createCommand,
  list: async () => (await import('./cli/list')).listCommand,
  verify: async () => (await import('./cli/backups')).verifyCommand,
  decrypt: async () => (await import('./cli/backups')).decryptCommand,
  keys: async () => (await import('./cli/keys')).keysCommand,
  dr: async () => (await import('./cli/dr')).drCommand,
  restore: async () => (await import('./cli/restore')).restoreCommand,
  pin: async () => (await import('./cli/retention')).pinCommand,
  unpin: async () => (await import('./cli/retention')).unpinCommand,
  retention: async () => (await import('./cli/retention')).retentionCommand,
};

/** Each command's lines of the usage, in the order `gem-backup help` lists them. */
const USAGES: Record<string, string[]> = {
  create: ['create [--label L]                          take a backup now'],
  list: [
    'list [--json]                               list local backups, newest first (a header on a terminal;',
    '                                            --json: one JSON array as GET /api/v1/backups, sizes in bytes)',
    'list --from sftp|s3|smb [--json]            list the copies on an offsite destination (set up on the page)',
  ],
  pin: [
    'pin NAME                                    pin a backup: retention never deletes it, here or offsite',
  ],
  unpin: ['unpin NAME                                  unpin it: retention may delete it again'],
  retention: [
    'retention [--json]                          what retention keeps and deletes at the next backup, and whether',
    '                                            pruning is paused (--json: as GET /api/v1/retention/preview)',
    'retention resume [--yes]                    end a pause of pruning once the pins are checked (the backup',
    '                                            records were damaged); without --yes, only say what it deletes',
  ],
  verify: [
    'verify FILE                                 decrypt and check every chunk and member (a name or a path)',
  ],
  restore: [
    'restore FILE --yes                          restore a backup (replaces all current data)',
    'restore NAME --from sftp|s3|smb --yes       restore a copy on an offsite destination',
    "restore ... --other-installation            restore a backup another installation made than the active keys'",
    "                                            (one marked 'another installation': refused without it)",
  ],
  decrypt: [
    'decrypt FILE --keys KEYS.json [-o OUT]      offline: decrypt to a .tar.gz (no agent or database needed;',
    "                                            KEYS.json: a keys export, or a copy of the data dir's keyring.json;",
    '                                            an existing OUT is replaced only with --force)',
  ],
  keys: [
    'keys export [-o FILE] [--force]             export the encryption keys (--force replaces FILE)',
    'keys import FILE                            import keys from another installation',
    'keys check FILE                             try a keys file on the newest backup of its installation',
    '                                            (here, else offsite);',
    '                                            nothing imported; exit 0 only if it opens it',
  ],
  dr: [
    'dr status [--json]                          the Cloud DR state: enrolled, last push, the cloud copy, what',
    '                                            holds pushes back and what to do, the next push (the installation',
    '                                            id by its first 8 characters; --json: for scripts, as the API)',
    'dr status --show-installation-id            the same with the whole installation id: the DR recovery',
    '                                            credential, to keep off this box with the keys file',
    'dr push                                     push a backup to the disaster-recovery cloud now (says which',
    '                                            backup and how old it is; warns when older than a day)',
    'dr push --data-is-current                   push although the keys were imported with no restore since',
    "                                            (the data here is the installation's: only the data dir was lost)",
    'dr recover --installation-id ID [--yes]     recover this installation from the cloud; on a box that is not',
    '                                            a fresh install (its own backups, enrolled) it replaces its data,',
    '                                            keys and identity: --yes confirms it',
    "dr recover --abandon                        give up an unfinished recovery: back to this box's own identity",
  ],
};

const PASSPHRASE_NOTE = `A keys passphrase (keys export/import/check, decrypt) comes from --passphrase-file PATH, GEM_KEYS_PASSPHRASE,
or a prompt on a terminal; never from the command line itself.`;

const USAGE = `usage: gem-backup <command>
${Object.values(USAGES)
  .flat()
  .map((line) => `  ${line}`)
  .join('\n')}
${PASSPHRASE_NOTE}`;

/** One command's usage (`gem-backup keys --help`). */
function commandUsage(name: string): string {
  const rows = (USAGES[name] ?? []).map((line) => line.split(/ {2,}/));
  const width = Math.max(...rows.map(([form = '']) => form.length));
  // A line that only goes on with the one above (an empty form) is indented under its words.
  const lines = rows.map(
    ([form = '', what = '']) => `${form ? 'gem-backup ' : '           '}${form.padEnd(width)}  ${what}`,
  );
  const note = ['keys', 'decrypt'].includes(name) ? `\n${PASSPHRASE_NOTE}` : '';
  return `usage: ${lines.join('\n       ')}${note}`;
}

/**
 * The commands that set up a new box may make a new installation in the data dir: `dr recover`
 * and `keys import`. Every other one acts on an existing installation, never on a new empty one.
 */
function setsUpInstallation(name: string, args: string[]): boolean {
  return (
    (name === 'dr' && args[0] === 'recover' && !args.includes('--abandon')) ||
    (name === 'keys' && args[0] === 'import')
  );
}

// `gem-backup list | head -1`: a reader that stops early (EPIPE) is not an error; the rest goes nowhere.
// A terminal hung up (EIO: the SSH session was lost, SIGHUP stops the job) takes no more output
// either. In both the command goes on to its clean end and exits as it ended: leaving at the write
// would leave a job half done (`dr push | true` stopped at its "pushing" line, exit 0).
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EIO' && error.code !== 'EPIPE') throw error;
});
process.stderr.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EIO' && error.code !== 'EPIPE') throw error;
});

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  // One clear line on stderr (API.md); the usage is one `gem-backup help` away.
  if (!name) {
    process.stderr.write('gem-backup: no command given; run "gem-backup help" for the list\n');
    return 2;
  }
  const load = COMMANDS[name];
  if (!load) {
    process.stderr.write(`gem-backup: unknown command "${name}"; run "gem-backup help" for the list\n`);
    return 2;
  }
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${commandUsage(name)}\n`);
    return 0;
  }
  const [command, { createCliContext }] = await Promise.all([load(), import('./cli/context')]);
  // The command and its first word (keys/dr's subcommand, the backup restored or verified).
  const first = args[0] !== undefined && !args[0].startsWith('-') ? ` ${args[0]}` : '';
  const cli = createCliContext(args, {
    mayCreate: setsUpInstallation(name, args),
    command: `${name}${first}`,
  });
  try {
    await command(cli);
  } catch (error) {
    cli.endProgress();
    if (error instanceof PromptCancelled) {
      process.stderr.write(`gem-backup: ${error.message}\n`);
      return 130;
    }
    // Stopped by Ctrl-C, SIGTERM or SIGHUP: the line says what happened to the job, not "the job was cancelled".
    if (!cli.interruption()) {
      process.stderr.write(`gem-backup: ${describeError(error).message}\n`);
      return 1;
    }
  }
  const interrupted = cli.interruption();
  if (!interrupted) return 0;
  cli.endProgress();
  process.stderr.write(`gem-backup: ${interrupted}\n`);
  return 130;
}

const code = await main(process.argv.slice(2));
// After a signal, work the command left behind (a file still being read) must not keep it alive.
if (code === 130) process.exit(code);
process.exitCode = code;
