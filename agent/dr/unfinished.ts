/**
 * An unfinished DR recovery (dr-recovery.json in the data dir, 0600): recorded before the recovered keys
 * are installed, cleared once the recovered backup is restored. While the box carries the recovered
 * identity with data that is not (yet) the recovered data, every push is refused: it would replace the
 * only good cloud copy. Read from disk at each question, so the agent sees what a CLI recovery wrote.
 */
import { readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import { AppError } from '../errors';
import { type Keyring, shortInstallationId } from '../keys/keyring';
import { fsyncDir, writeSmallFileAtomic } from '../system/atomic-file';

const hex32 = z.string().regex(/^[0-9a-f]{32}$/);

const recordSchema = z.object({
  /** The installation being recovered (the DR recovery credential: never logged). */
  installationId: hex32,
  startedAt: z.string(),
  /** This box's own identity before the first attempt: where `dr recover --abandon` goes back to. */
  previousInstallationId: hex32,
  previousActiveKeyId: z.string(),
  /** The recovered backup once stored here, and its sha256: a retry with the same download reuses it. */
  backup: z.string().optional(),
  sha256: z.string().optional(),
});
export type UnfinishedRecoveryRecord = z.infer<typeof recordSchema>;

/** What `dr status` shows (and the health area can use) while a recovery is unfinished. */
export interface UnfinishedRecovery {
  /** Null when the record is damaged (pushes stay refused until a recovery is run again). */
  installationId: string | null;
  startedAt: string;
  /** The sentence for the owner, with the id to type (CLI, API answers, dr status). */
  message: string;
  /** The same without the id: for logs, health and alerts, which leave the page's reach. */
  reason: string;
}

/** Lower case, no spaces or dashes between groups: the 32 hex characters, or undefined if that is not what remains. */
export function normalizeInstallationId(raw: string): string | undefined {
  const id = raw
    .trim()
    .toLowerCase()
    .replace(/[\s-]+/g, '');
  return /^[0-9a-f]{32}$/.test(id) ? id : undefined;
}

/** An installation id as an owner types it (upper case, grouped with spaces or dashes), normalized. */
export const RecoveryInstallationId = z.string().transform((raw, ctx) => {
  const id = normalizeInstallationId(raw);
  if (id === undefined) {
    ctx.addIssue({ code: 'custom', message: INSTALLATION_ID_RULE });
    return z.NEVER;
  }
  return id;
});

export const INSTALLATION_ID_RULE =
  'installationId must be 32 hex characters (upper case and spaces or dashes between groups are fine)';

/**
 * The owner's sentence for an unfinished recovery (a refused push, dr status). The installation by its
 * first 8 characters: the whole id is the DR recovery credential, and this sentence ends up in job
 * records, API answers and terminals; `wholeId` (dr status --show-installation-id) names it in the
 * command to run.
 */
export function unfinishedMessage(installationId: string, options: { wholeId?: boolean } = {}): string {
  if (options.wholeId)
    return `a recovery from the DR cloud of installation ${installationId} did not finish: run \`gem-backup dr recover --installation-id ${installationId}\` again (or \`gem-backup dr recover --abandon\` to go back to this box's own identity)`;
  return `a recovery from the DR cloud of installation ${shortInstallationId(installationId)} did not finish: run \`gem-backup dr recover --installation-id ID\` again with the whole id (\`gem-backup dr status --show-installation-id\`), or \`gem-backup dr recover --abandon\` to go back to this box's own identity`;
}

const UNFINISHED_REASON =
  "a recovery from the DR cloud did not finish: run `gem-backup dr recover --installation-id ID` again with the id `gem-backup dr status --show-installation-id` shows (or `gem-backup dr recover --abandon` to go back to this box's own identity); no Cloud DR push runs meanwhile";

export class UnfinishedRecoveryFile {
  constructor(readonly path: string) {}

  /** The record on disk, or null; a damaged file is an error (pushes stay refused) naming the file. */
  async read(): Promise<UnfinishedRecoveryRecord | null> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw error;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    const parsed = recordSchema.safeParse(json);
    if (!parsed.success) {
      throw new AppError(
        'unprocessable',
        `${this.path} is damaged: run \`gem-backup dr recover --installation-id ID\` again to finish the recovery it records`,
      );
    }
    return parsed.data;
  }

  /**
   * The unfinished recovery that holds this box now: recorded, and the box carries its identity. A
   * record whose identity is not the active one (the keys were never installed, or another keyring was
   * imported since) holds nothing back: pushes go to this box's own slot.
   */
  async current(keyring: Keyring): Promise<UnfinishedRecovery | null> {
    let record: UnfinishedRecoveryRecord | null;
    try {
      record = await this.read();
    } catch (error) {
      if (!(error instanceof AppError)) throw error;
      return { installationId: null, startedAt: '', message: error.message, reason: error.message };
    }
    if (!record || record.installationId !== keyring.installationId) return null;
    return {
      installationId: record.installationId,
      startedAt: record.startedAt,
      message: unfinishedMessage(record.installationId),
      reason: UNFINISHED_REASON,
    };
  }

  write(record: UnfinishedRecoveryRecord): Promise<void> {
    return writeSmallFileAtomic(this.path, `${JSON.stringify(recordSchema.parse(record), null, 2)}\n`, 0o600);
  }

  async clear(): Promise<void> {
    await rm(this.path, { force: true });
    await fsyncDir(dirname(this.path));
  }
}
