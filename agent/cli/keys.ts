import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { AppError, describeError } from '../errors';
import { KeyStateStore } from '../keys/key-state';
import { buildKeysExport, exportFileName, Keyring, shortInstallationId } from '../keys/keyring';
import { createLogger } from '../log';
import { createSmallFileExclusive, writeSmallFileAtomic } from '../system/atomic-file';
import type { CliContext } from './context';
import { checkOutputPath, outputExists } from './output';
import {
  PASSPHRASE_ENV,
  PASSPHRASE_FILE_OPTION,
  passphraseToOpen,
  passphraseToProtect,
  readKeysFile,
  refusePassphraseArgument,
} from './passphrase';

const USAGE =
  'usage: gem-backup keys export [-o FILE] [--passphrase-file PATH] | keys import FILE [--passphrase-file PATH] | keys check FILE [--passphrase-file PATH]';

export async function keysCommand(cli: CliContext): Promise<void> {
  const [sub, ...rest] = cli.args;
  refusePassphraseArgument(rest);
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' },
      force: { type: 'boolean' },
      ...PASSPHRASE_FILE_OPTION,
    },
  });
  if (sub === 'export') {
    // `keys export PATH` would otherwise write to the default name and say where: the file goes to -o only.
    if (positionals.length > 0) throw new AppError('bad_request', USAGE);
    // Before a passphrase is asked for: a data dir without an installation has no keys to export.
    cli.requireInstallation();
    const given = await passphraseToProtect(values['passphrase-file']);
    // The API's minimum for an export passphrase (exportBody), not a copy of it.
    const [{ exportBody }, { validationError }] = await Promise.all([
      import('../http/routes/keys'),
      import('../http/errors'),
    ]);
    const body = exportBody.safeParse(given === undefined ? {} : { passphrase: given });
    if (!body.success) throw validationError(body.error);
    const { passphrase } = body.data;
    const now = new Date();
    const path = resolve(values.output ?? exportFileName(now));
    await checkOutputPath(path, { force: values.force });
    // The keyring file and the key state only, no agent: the keys can be saved while GEM's database or
    // the embedded cluster is down, when a person is most likely to need them.
    const unrecorded = await cli.withDataDir(async (paths) => {
      const keyring = await Keyring.load(paths.keyring);
      const exported = await buildKeysExport(keyring.toFile(), passphrase, now);
      // Without --force only a name still free is taken: a file made there meanwhile stays.
      if (values.force) await writeSmallFileAtomic(path, exported, 0o600);
      else if (!(await createSmallFileExclusive(path, exported, 0o600))) throw outputExists(path);
      // The keys are saved; a data dir that cannot take the record (full, read-only) only keeps the
      // page and health asking for the download.
      return new KeyStateStore(paths.state, createLogger({ level: 'warn' }))
        .merge({ lastDownloadedAt: now.toISOString() })
        .then(
          () => undefined,
          (error: unknown) => describeError(error).message,
        );
    });
    cli.out(`keys exported to ${path}${passphrase ? ' (passphrase protected)' : ''}`);
    if (unrecorded) {
      cli.err(
        `warning: the download could not be recorded (${unrecorded}): the page and health still ask for the keys to be downloaded`,
      );
    }
    // Chosen by the lack of a passphrase source, not by the person: say so where a script's log shows it.
    if (!passphrase) {
      cli.err(
        `warning: ${path} is NOT passphrase protected: anyone who reads it can decrypt every backup; keep it offline (${PASSPHRASE_ENV} or --passphrase-file PATH protects the next export)`,
      );
    }
    return;
  }
  /** The keys file named on the command line, and its passphrase when it has one (import, check). */
  const givenKeysFile = async () => {
    // One file: a second would be ignored, and the person told it was checked or imported.
    const [file, ...extra] = positionals;
    if (!file || extra.length > 0) throw new AppError('bad_request', USAGE);
    const text = await readKeysFile(file);
    return { text, passphrase: await passphraseToOpen(text, values['passphrase-file']) };
  };
  if (sub === 'import') {
    const { text, passphrase } = await givenKeysFile();
    const result = await cli.withAgent(
      async (agent, stopIfInterrupted) => {
        const { importKeysFile } = await import('../http/routes/keys');
        return importKeysFile(agent, text, passphrase, stopIfInterrupted);
      },
      { finishes: 'keys import' },
    );
    // The whole id is the installation's DR recovery credential: its first 8 characters tell it apart.
    cli.out(
      `keys imported: installation ${shortInstallationId(result.installationId)} (the whole id: gem-backup dr status --show-installation-id), active key ${result.activeKeyId}`,
    );
    return;
  }
  if (sub === 'check') {
    const { text, passphrase } = await givenKeysFile();
    // Nothing is imported: the file is tried on the newest backup (here, else on an offsite destination).
    const result = await cli.withAgent(async (agent) => {
      const { checkKeysFile } = await import('../verification/key-check');
      return checkKeysFile(agent, text, passphrase);
    });
    if (!result.canOpen) throw new AppError(result.backup === null ? 'not_found' : 'no_key', result.reason);
    cli.out(result.reason);
    return;
  }
  throw new AppError('bad_request', USAGE);
}
