/**
 * When the live data was last replaced by a restore (last-restore.json in the data dir, 0600): written
 * just before a restore's swap, so a swap a crash rolls forward is recorded too (an undone one costs
 * nothing but a fresh backup at the next DR push). A backup made before it, other than the one it
 * restored, holds data that no longer runs, however young it is: the DR push never reuses one (a backup
 * made on a rebuilt box after its keys import or during its DR recovery carries the recovered identity
 * but the box's own sample data).
 */
import type { Logger } from '../log';
import { JsonStateFile } from '../system/json-state';

export interface LastRestore {
  /** ISO time the swap was entered (or the owner confirmed the data as the installation's). */
  at?: string;
  /** The backup restored: its file name and its created-at (the data that runs since). */
  from?: string;
  createdAt?: string;
  /**
   * The installation that made the backup restored (its header's), or whose data the owner confirmed
   * the data here is. Absent in records written before it was kept: such a restore is judged as then.
   */
  installationId?: string;
  /**
   * When the keys of another installation were imported (the box took its identity). Until a restore
   * (or the owner's confirmation) after it, the data here is the box's own: no DR push goes, since it
   * would replace that installation's only cloud copy with it.
   */
  identityChangedAt?: string;
  /**
   * The installation whose keys that import brought. Recorded before the keyring is written: while the
   * keyring holds another (the import failed, or a crash stopped it first), no import happened. Absent
   * in records written before it was kept.
   */
  identityChangedTo?: string;
  /**
   * The identity change recorded before this one, when the keyring took it: kept while the import above
   * has not happened (the keyring holds another installation than identityChangedTo), so that an
   * import stopped half-way does not lift the hold of the one before it.
   */
  earlierIdentityChange?: { at: string; to?: string };
}

type IdentityChange = Pick<LastRestore, 'identityChangedAt' | 'identityChangedTo' | 'earlierIdentityChange'>;

/** The sentence of a DR push refused after a keys import with no restore since (no installation id in it). */
export const AWAITING_RESTORE_REASON =
  "the keys of another installation were imported and none of its backups has been restored here since (a backup another installation made, such as this box's own from before the import, does not count), so the data here is still this box's own: a push would replace that installation's only cloud copy with it. Restore one of its backups first (the page's Offsite list, or `gem-backup restore NAME --from sftp --yes`); if the data here already is that installation's (only the agent's data dir was lost), push once with `gem-backup dr push --data-is-current`";

export class LastRestoreStore extends JsonStateFile<LastRestore> {
  /** Damaged, it is set aside (told to `log`) and read as "no restore": what it guards is the DR push's reuse only. */
  constructor(path: string, log: Logger) {
    super(path, () => ({}), { setAsideDamaged: { log } });
  }

  /** A restore's swap of the backup `from`, made at `createdAt` by installation `installationId`. */
  record(at: Date, from: string, createdAt: string, installationId: string): Promise<LastRestore> {
    return this.update((state) =>
      Object.assign(state, { at: at.toISOString(), from, createdAt, installationId }),
    );
  }

  /**
   * A keys import about to make installation `to` this box's identity, the keyring holding installation
   * `current`. The change recorded before is kept as the earlier one if the keyring took it (or it was
   * written before identityChangedTo was kept); if it did not (an import stopped half-way), the earlier
   * one it kept stays.
   */
  recordIdentityChange(at: Date, to: string, current: string): Promise<LastRestore> {
    return this.update((state) => {
      const { identityChangedAt, identityChangedTo } = state;
      if (
        identityChangedAt !== undefined &&
        (identityChangedTo === undefined || identityChangedTo === current)
      )
        state.earlierIdentityChange = { at: identityChangedAt, to: identityChangedTo };
      return Object.assign(state, { identityChangedAt: at.toISOString(), identityChangedTo: to });
    });
  }

  /**
   * Puts the record of an identity change back as it was before recordIdentityChange (`previous`): the
   * keys import it was made for failed, and the box kept its identity.
   */
  undoIdentityChange(previous: IdentityChange): Promise<LastRestore> {
    return this.update((state) => {
      delete state.identityChangedAt;
      delete state.identityChangedTo;
      delete state.earlierIdentityChange;
      if (previous.identityChangedAt !== undefined) state.identityChangedAt = previous.identityChangedAt;
      if (previous.identityChangedTo !== undefined) state.identityChangedTo = previous.identityChangedTo;
      if (previous.earlierIdentityChange !== undefined)
        state.earlierIdentityChange = previous.earlierIdentityChange;
      return state;
    });
  }

  /**
   * The owner says the data here is installation `installationId`'s (the keyring's): as if one of its
   * backups were restored now (older backups are not reused).
   */
  confirmCurrent(at: Date, installationId: string): Promise<LastRestore> {
    return this.update((state) => {
      delete state.createdAt;
      return Object.assign(state, { at: at.toISOString(), from: 'confirmed by the owner', installationId });
    });
  }

  /**
   * True after a keys import of another installation with no restore (or confirmation) since of a
   * backup made by `installationId`, the installation now in the keyring: a restore of another
   * installation's backup (this box's own from before the import, the newest on its destinations)
   * leaves data here that is not that installation's. Never while the keyring holds another installation
   * than the import recorded: that import did not happen (it failed, or a crash stopped it first), and
   * the change recorded before it, which the keyring did take, is judged instead.
   */
  async awaitingRestore(installationId: string): Promise<boolean> {
    const last = await this.get();
    const took = (change: { to?: string }) => change.to === undefined || change.to === installationId;
    const latest = { at: last.identityChangedAt, to: last.identityChangedTo };
    const change = took(latest) ? latest : last.earlierIdentityChange;
    if (change?.at === undefined || !took(change)) return false;
    if (last.at === undefined || Date.parse(last.at) < Date.parse(change.at)) return true;
    return last.installationId !== undefined && last.installationId !== installationId;
  }

  /**
   * Whether `backup` holds data that may still run: made after the last restore's swap, or the very
   * backup that restore restored. True when there was no restore.
   */
  async current(backup: { filename: string; createdAt: string }): Promise<boolean> {
    const last = await this.get();
    if (last.at === undefined) return true;
    if (backup.filename === last.from && backup.createdAt === last.createdAt) return true;
    return Date.parse(backup.createdAt) > Date.parse(last.at);
  }
}
