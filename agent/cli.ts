/** gem-backup: the command line, for when the page is not reachable. Exit 0 on success, one clear line otherwise. */
import { createCommand, decryptCommand, listCommand, verifyCommand } from './cli/backups';
import { type CliContext, createCliContext } from './cli/context';
import { drCommand } from './cli/dr';
import { keysCommand } from './cli/keys';
import { restoreCommand } from './cli/restore';
import { describeError } from './errors';

type Command = (cli: CliContext) => Promise<void>;

/** Every command; other modules add theirs here (restore, dr). */
export const COMMANDS: Record<string, Command> = {
  create: createCommand,
  list: listCommand,
  verify: verifyCommand,
  decrypt: decryptCommand,
  keys: keysCommand,
  dr: drCommand,
  restore: restoreCommand,
};

const USAGE = `usage: gem-backup <command>
  create [--label L]                          take a backup now
  list                                        list local backups, newest first
  verify FILE                                 decrypt and check every chunk and member (a name or a path)
  restore FILE --yes                          restore a backup (replaces all current data)
  decrypt FILE --keys KEYS.json [-o OUT]      offline: decrypt to a .tar.gz (no agent or database needed)
  keys export [-o FILE]                       export the encryption keys
  keys import FILE                            import keys from another installation
  dr status                                   show the disaster-recovery state (JSON)
  dr push                                     push a backup to the disaster-recovery cloud now
  dr recover --installation-id ID             recover this installation from the cloud
A keys passphrase (keys export/import, decrypt) comes from --passphrase-file PATH, GEM_KEYS_PASSPHRASE,
or a prompt on a terminal; never from the command line itself.`;

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
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`gem-backup: unknown command "${name}"; run "gem-backup help" for the list\n`);
    return 2;
  }
  try {
    await command(createCliContext(args));
    return 0;
  } catch (error) {
    if (process.stderr.isTTY) process.stderr.write('\n');
    process.stderr.write(`gem-backup: ${describeError(error).message}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
