/** SettingsService: the settings in gem_backup.settings (secrets sealed), validated updates, change hooks. */
import { createHash } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { drizzle, type PostgresJsDatabase } from 'drizzle-orm/postgres-js';
import type { Sql } from 'postgres';
import {
  isTimeZone,
  type Settings,
  SettingsUpdate,
  type SettingsView,
  type SettingsWarning,
  type TaskStatus,
} from '../../shared/api/settings';
import { settings as settingsTable } from '../db/schema';
import { AppError, describeError } from '../errors';
import { validationError } from '../http/errors';
import { nextRuns, type TaskSchedule } from '../jobs/scheduler';
import type { Keyring } from '../keys/keyring';
import { openSecret, sealSecret } from '../keys/secrets';
import type { Logger } from '../log';
import { LEGACY_SETTINGS_FILE, LegacyB2Settings, migrateLegacyB2 } from './legacy';
import { applySettingsUpdate, mapSecrets, maskSettings, settingsWarnings, withDefaults } from './model';
import { type ScheduledTask, ScheduleStateStore } from './state';

/**
 * A conditional update found the settings changed since the caller read them (another tab, person,
 * script or the agent itself saved meanwhile): nothing was saved. The API answers 412 `settings_changed`.
 */
export class SettingsChangedError extends AppError {
  constructor(readonly revision: string) {
    super(
      'settings_changed',
      'the settings were changed elsewhere since you loaded them: reload, check, and save again (nothing was saved)',
    );
    this.name = 'SettingsChangedError';
  }
}

/**
 * The revision of the stored settings row: a hash of its document as the database gives it back (secrets
 * sealed, so it reveals nothing of them) and of its save time. It is a function of the stored row alone,
 * so it survives an agent restart and a restore (which copies the live row into the restored database
 * unchanged), and every save gives a new one (a new save time, and secrets sealed afresh).
 */
function revisionOf(doc: unknown, updatedAt: Date): string {
  return createHash('sha256')
    .update(JSON.stringify(doc ?? null))
    .update('\n')
    .update(updatedAt.toISOString())
    .digest('base64url')
    .slice(0, 22);
}

/** The revision of settings never saved (no stored row yet: the defaults). */
const UNSAVED_REVISION = revisionOf(null, new Date(0));

/** Options of a PUT's update. */
interface UpdateOptions {
  /**
   * Save only if the stored revision is one of these (the revisions an `If-Match` names); checked in
   * turn with every other save, so no save can slip in between the check and this one.
   */
  ifRevision?: readonly string[];
}

/** Called after a change is saved, with both versions (plaintext secrets: do not log them). */
type SettingsListener = (previous: Settings, next: Settings) => void | Promise<void>;

interface SettingsDeps {
  sql: Sql;
  keyring: Keyring;
  log: Logger;
  /** Where a legacy `settings.json` may be found (the agent's data dir). */
  dataDir?: string;
}

export class SettingsService {
  /** Subscribers to every saved change (scheduler re-arm, Cloud DR opt-out, offsite re-check). */
  readonly onSettingsChanged: SettingsListener[] = [];
  readonly state: ScheduleStateStore;
  private readonly db: PostgresJsDatabase;
  private current: Settings;
  private currentRevision = UNSAVED_REVISION;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly deps: SettingsDeps,
    initial: Settings,
  ) {
    this.db = drizzle(deps.sql);
    // Its writes wait like settings changes while a restore holds them (see hold).
    this.state = new ScheduleStateStore(this.db, (write) => this.hold(write));
    this.current = initial;
  }

  /** Loads the stored settings (defaults if none) and imports a legacy B2 configuration if one is found. */
  static async open(deps: SettingsDeps): Promise<SettingsService> {
    const service = new SettingsService(deps, withDefaults(undefined));
    const loaded = await service.load();
    service.current = loaded.settings;
    service.currentRevision = loaded.revision;
    if (deps.dataDir) await service.importLegacy(join(deps.dataDir, LEGACY_SETTINGS_FILE));
    return service;
  }

  /** The current settings, secrets in plain text, for the agent's own use (a copy). */
  get(): Settings {
    return structuredClone(this.current);
  }

  /** The revision of the saved settings (what `GET /api/v1/settings` names in its ETag); each save changes it. */
  get revision(): string {
    return this.currentRevision;
  }

  /** Adds a listener; returns the function that removes it. */
  subscribe(listener: SettingsListener): () => void {
    this.onSettingsChanged.push(listener);
    return () => {
      const i = this.onSettingsChanged.indexOf(listener);
      if (i >= 0) this.onSettingsChanged.splice(i, 1);
    };
  }

  /** What `GET /api/v1/settings` returns: secrets masked, last and next runs, the revision they are. */
  async view(now = new Date()): Promise<SettingsView> {
    // Taken together: the revision always names the settings shown with it.
    const s = this.current;
    const revision = this.currentRevision;
    const status = {
      autoBackup: await this.taskStatus(
        'autoBackup',
        s.autoBackup.enabled ? s.autoBackup.schedule : undefined,
        s.autoBackup.timezone,
        now,
      ),
      maintenance: await this.taskStatus(
        'maintenance',
        s.maintenance.enabled ? 'maintenance' : undefined,
        s.autoBackup.timezone,
        now,
      ),
    };
    return { ...maskSettings(s, status), revision };
  }

  /**
   * Validates and saves a PUT body (unknown: parsed here, 422 naming the field, nothing saved on any
   * failure), then tells the listeners. Returns the saved settings and the warnings of the change.
   * With `ifRevision`, saves only if the stored revision is one of them: SettingsChangedError otherwise,
   * nothing saved and no listener told.
   */
  update(
    body: unknown,
    options: UpdateOptions = {},
  ): Promise<{ previous: Settings; settings: Settings; warnings: SettingsWarning[] }> {
    return this.hold(async () => {
      await this.adoptStored();
      if (options.ifRevision && !options.ifRevision.includes(this.currentRevision))
        throw new SettingsChangedError(this.currentRevision);
      const parsed = SettingsUpdate.safeParse(body);
      if (!parsed.success) throw validationError(parsed.error);
      const previous = this.current;
      const next = applySettingsUpdate(previous, parsed.data);
      this.currentRevision = await this.save(next);
      this.current = next;
      await this.notify(previous, next);
      return {
        previous: structuredClone(previous),
        settings: this.get(),
        warnings: settingsWarnings(previous, next),
      };
    });
  }

  /**
   * A change the agent makes itself (not a PUT): `fn` gets the CURRENT settings (a copy) inside the
   * settings queue, so a PUT queued before it is seen, not overwritten; it returns the new settings,
   * or undefined to change nothing. Saved and told to the listeners like an update; returns what was
   * saved, or undefined when nothing changed.
   */
  change(fn: (current: Settings) => Settings | undefined): Promise<Settings | undefined> {
    return this.hold(async () => {
      await this.adoptStored();
      const previous = this.current;
      const next = fn(structuredClone(previous));
      if (!next) return undefined;
      this.currentRevision = await this.save(next);
      this.current = next;
      await this.notify(previous, next);
      return this.get();
    });
  }

  /**
   * Runs `fn` with settings changes held back until it settles: changes run one at a time through
   * here. A restore holds them from copying the settings into the restored database to its swap.
   * Every write to the agent's own tables (settings, schedule_state) runs through here, so none lands
   * in the database a restore is replacing; `fn` must not itself wait for such a write (it would wait
   * for its own end).
   */
  hold<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private async taskStatus(
    task: ScheduledTask,
    schedule: TaskSchedule | undefined,
    tz: string | undefined,
    now: Date,
  ): Promise<TaskStatus> {
    const state = await this.state.get(task);
    return {
      lastRunAt: state?.lastRunAt?.toISOString() ?? null,
      lastResult: state?.lastResult ?? null,
      nextRunAt: schedule ? (nextRuns(schedule, tz, now, 1)[0]?.toISOString() ?? null) : null,
    };
  }

  private async notify(previous: Settings, next: Settings): Promise<void> {
    for (const listener of [...this.onSettingsChanged]) {
      try {
        await listener(structuredClone(previous), structuredClone(next));
      } catch (error) {
        // The change is saved; a listener's failure is its own (it logs and retries as it sees fit).
        this.deps.log.warn('a settings listener failed', { error: describeError(error) });
      }
    }
  }

  /**
   * Takes the stored settings as the current ones if another process saved them since this one last
   * read or wrote them (a CLI command pinning an SFTP host key beside the service), and tells the
   * listeners. Runs inside the queue before every save, so a save changes the stored settings, never
   * an older copy of them: what the other process saved is kept, and an If-Match is checked against it.
   */
  private async adoptStored(): Promise<void> {
    const row = await this.storedRow();
    if (this.revisionOfRow(row) === this.currentRevision) return;
    const previous = this.current;
    ({ settings: this.current, revision: this.currentRevision } = this.settingsOfRow(row));
    this.deps.log.info('the settings were changed by another process; using the saved ones');
    await this.notify(previous, this.current);
  }

  private async storedRow(): Promise<{ doc: unknown; updatedAt: Date } | undefined> {
    const rows = await this.db.select().from(settingsTable);
    return rows[0]?.doc ? rows[0] : undefined;
  }

  private revisionOfRow(row: { doc: unknown; updatedAt: Date } | undefined): string {
    return row ? revisionOf(row.doc, row.updatedAt) : UNSAVED_REVISION;
  }

  private async load(): Promise<{ settings: Settings; revision: string }> {
    return this.settingsOfRow(await this.storedRow());
  }

  /** The settings a stored row holds (the defaults for none), secrets opened, and its revision. */
  private settingsOfRow(row: { doc: unknown; updatedAt: Date } | undefined): {
    settings: Settings;
    revision: string;
  } {
    if (!row) return { settings: withDefaults(undefined), revision: UNSAVED_REVISION };
    const settings = this.openSecrets(row.doc);
    const zone = settings.autoBackup.timezone;
    if (zone !== undefined && !isTimeZone(zone)) {
      // Saved where the runtime knew it (a newer Node's time zone data, a database restored from
      // another controller): every schedule would fail to arm, and the agent with them. The server's
      // time zone stands in, shown as such, until a known zone is saved.
      this.deps.log.warn(
        "the saved time zone is unknown to this machine's Node; schedules use the server's time zone until one is chosen again",
        { timezone: zone },
      );
      delete settings.autoBackup.timezone;
    }
    return { settings, revision: this.revisionOfRow(row) };
  }

  /** The stored document with its secrets opened (one that cannot be opened is left out, with a warning). */
  private openSecrets(doc: unknown): Settings {
    return mapSecrets(withDefaults(doc), (sealed, field) => {
      try {
        return openSecret(sealed, this.deps.keyring.masterKeys, 'settings');
      } catch (error) {
        // E.g. keys replaced by an import without the old ones: the secret must be entered again.
        this.deps.log.warn('a stored secret cannot be opened; it must be entered again', {
          field,
          error: describeError(error).code,
        });
        return undefined;
      }
    });
  }

  /** Stores `next` (secrets sealed); returns the stored row's new revision. */
  private async save(next: Settings): Promise<string> {
    const key = this.deps.keyring.activeKey;
    const doc = mapSecrets(next, (plain) => sealSecret(plain, key, 'settings'));
    const updatedAt = new Date();
    // The revision comes from the row as the database gives it back, exactly as `load` will read it.
    const [row] = await this.db
      .insert(settingsTable)
      .values({ id: 1, doc, updatedAt })
      .onConflictDoUpdate({ target: settingsTable.id, set: { doc, updatedAt } })
      .returning({ doc: settingsTable.doc, updatedAt: settingsTable.updatedAt });
    if (!row) throw new Error('the settings row was not written');
    return revisionOf(row.doc, row.updatedAt);
  }

  /**
   * Moves a legacy plaintext B2 configuration into the S3 destination, then removes the file. When an
   * S3 destination is already configured nothing is moved, and the file, the only copy of the B2 key,
   * is left where it is (a warning at each start says so), unless that destination holds the same key.
   */
  private async importLegacy(path: string): Promise<void> {
    const text = await readFile(path, 'utf8').catch(() => undefined);
    if (text === undefined) return;
    let legacy: LegacyB2Settings;
    try {
      // A byte order mark (the file edited in Notepad or written by PowerShell) is not part of the JSON.
      legacy = LegacyB2Settings.parse(JSON.parse(text.replace(/^\uFEFF/, '')));
    } catch {
      this.deps.log.warn('a legacy settings.json was found but is not a B2 configuration; left as is', {
        path,
      });
      return;
    }
    const s3 = this.current.offsite.s3;
    if (
      s3.provider === 'b2' &&
      s3.accessKeyId === legacy.b2.keyId &&
      s3.secretAccessKey === legacy.b2.applicationKey
    ) {
      // Moved by an earlier start that stopped before removing the file: its key is stored (sealed) already.
      this.deps.log.info('legacy B2 settings were already moved to the S3 destination; removing the file');
      await rm(path, { force: true });
      return;
    }
    if (s3.enabled || s3.accessKeyId) {
      this.deps.log.warn(
        'legacy B2 settings not migrated: an S3 destination is already configured. The file is left in ' +
          'place; it holds the B2 application key in plain text: enter what you need by hand, then delete it',
        { path },
      );
      return;
    }
    const next = structuredClone(this.current);
    next.offsite.s3 = migrateLegacyB2(legacy);
    this.currentRevision = await this.save(next);
    this.current = next;
    this.deps.log.info('legacy B2 settings moved to the S3 destination; endpoint and region need attention');
    // The file held the application key in plain text: it goes once its content is safely stored.
    await rm(path, { force: true });
  }
}
