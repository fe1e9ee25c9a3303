/** Routes of the settings (GET/PUT, secrets masked), the retention preview and the retention hold. */
import { type Context, Hono } from 'hono';
import { z } from 'zod';
import { MAX_BACKUPS_RANGE, SettingsUpdate } from '../../../shared/api/settings';
import type { Agent } from '../../agent';
import type { RouteModule } from '../../app';
import { planLocalPrune, planNextBackupPrune } from '../../backup/retention';
import type { RetentionHoldInfo } from '../../backup/retention-hold';
import { SettingsChangedError } from '../../settings/service';
import { jsonBody } from '../body';
import { errorBody, validationError } from '../errors';

/** The revision as an HTTP entity tag (strong, quoted). */
const etag = (revision: string) => `"${revision}"`;

/**
 * The revisions an `If-Match` header accepts: undefined when absent, empty or `*` (no condition: the
 * settings always exist). Each listed tag counts with or without its quotes (a script may send the body's
 * `revision` as is); a weak tag (`W/"…"`) never matches, as RFC 9110's strong comparison says.
 */
export function ifMatchRevisions(header: string | undefined): string[] | undefined {
  const value = header?.trim();
  if (!value || value === '*') return undefined;
  return value
    .split(',')
    .map((tag) => tag.trim())
    .filter((tag) => tag && !tag.startsWith('W/'))
    .map((tag) => (tag.length >= 2 && tag.startsWith('"') && tag.endsWith('"') ? tag.slice(1, -1) : tag));
}

/** Answers with the saved settings' view and their revision as the ETag. */
async function settingsAnswer(c: Context, agent: Agent, extra: Record<string, unknown> = {}) {
  const view = await agent.settings.view();
  c.header('ETag', etag(view.revision));
  c.header('Cache-Control', 'no-store');
  return c.json({ ...view, ...extra });
}

export function settingsRoutes(agent: Agent): Hono {
  const app = new Hono();

  app.get('/', (c) => settingsAnswer(c, agent));

  /**
   * Sections given replace the stored ones; secrets left out are kept; answers the saved view + warnings
   * and the new ETag. With `If-Match` naming a revision that is no longer the saved one (someone saved
   * since it was read): 412 `settings_changed`, nothing saved. Without it the save is unconditional.
   */
  app.put('/', async (c) => {
    const body = await jsonBody(c, SettingsUpdate);
    const ifRevision = ifMatchRevisions(c.req.header('if-match'));
    try {
      const { warnings } = await agent.settings.update(body, ifRevision ? { ifRevision } : {});
      return await settingsAnswer(c, agent, { warnings });
    } catch (error) {
      if (!(error instanceof SettingsChangedError)) throw error;
      c.header('ETag', etag(error.revision));
      return c.json(errorBody(error.code, error.message), error.status as 412);
    }
  });

  return app;
}

/** `?maxBackups=N`: plan with N (the number the page is about to save) instead of the saved one. */
const PreviewQuery = z.object({
  maxBackups: z.coerce.number().int().min(MAX_BACKUPS_RANGE.min).max(MAX_BACKUPS_RANGE.max).optional(),
});

export function retentionRoutes(agent: Agent): Hono {
  const app = new Hono();
  /**
   * What the prune would delete locally under the saved maxBackups, or `?maxBackups=N` (1-100, else 422
   * naming the field): `delete` if it ran now, `nextBackup.delete` at the next backup (whose prune counts
   * the new backup too). Nothing is deleted here. While pruning is held (`held`: the backup records were
   * damaged and set aside) both lists are empty: no prune deletes anything until POST /resume; then
   * `ifResumed` holds what they would be once resumed.
   */
  app.get('/preview', async (c) => {
    const parsed = PreviewQuery.safeParse({ maxBackups: c.req.query('maxBackups') });
    if (!parsed.success) throw validationError(parsed.error);
    return c.json(await retentionPreview(agent, parsed.data.maxBackups));
  });

  /** The retention hold in force (`held`: null when pruning runs as configured). */
  app.get('/hold', async (c) => {
    const hold = await agent.catalog.hold.get();
    return c.json({ held: hold ? holdView(hold) : null });
  });

  /**
   * Ends the retention hold: the owner checked the pins (the page, or the backups list) and the next
   * prune runs as configured again. Answers the hold that ended (`resumed`: null when none was in force).
   */
  app.post('/resume', async (c) => {
    const was = await resumePruning(agent);
    return c.json({ resumed: was ? holdView(was) : null, held: null });
  });
  return app;
}

/**
 * What GET /retention/preview answers, and `gem-backup retention` prints: what the prune would delete
 * locally under the saved maxBackups (or `maxBackups` given) now and at the next backup; while pruning is
 * held, `held`, both lists empty, and `ifResumed`.
 */
export async function retentionPreview(
  agent: Agent,
  maxBackups = agent.settings.get().autoBackup.maxBackups,
) {
  const plan = await planLocalPrune(agent, [], maxBackups);
  const names = (list: typeof plan.keep) =>
    list.map((b) => ({
      filename: b.filename,
      createdAt: b.createdAt,
      kind: b.kind,
      pinned: b.pinned ?? false,
    }));
  const next = await planNextBackupPrune(agent, maxBackups);
  // Asked after the plans: listing the backups is what finds a damaged records file and holds pruning.
  const hold = await agent.catalog.hold.get();
  if (hold) {
    // Held: nothing would be deleted, now or at the next backup, until the owner resumes pruning.
    // `ifResumed`: what the same plans delete once the owner resumes (the page asks before resuming).
    return {
      maxBackups,
      held: holdView(hold),
      delete: [],
      keep: names([...plan.keep, ...plan.delete]),
      nextBackup: { delete: [] },
      ifResumed: { delete: names(plan.delete), nextBackup: { delete: names(next) } },
    };
  }
  return {
    maxBackups,
    held: null,
    delete: names(plan.delete),
    keep: names(plan.keep),
    nextBackup: { delete: names(next) },
  };
}

/**
 * Ends the retention hold (POST /retention/resume, `gem-backup retention resume`); the hold that ended,
 * if any. `beforeChange`: called just before the hold is removed (the CLI's check for a Ctrl-C).
 */
export async function resumePruning(
  agent: Agent,
  beforeChange?: () => void,
): Promise<RetentionHoldInfo | undefined> {
  const was = await agent.catalog.hold.resume(beforeChange);
  if (was) agent.log.info('pruning resumed by the owner', { setAside: was.setAside });
  return was;
}

/** A hold as the API tells it: when, which damaged records files were set aside, and the sentence to show. */
function holdView(hold: RetentionHoldInfo) {
  return { since: hold.since ?? null, setAside: hold.setAside, message: hold.message };
}

export const settingsModule: RouteModule = { path: '/settings', routes: settingsRoutes, audited: true };
export const retentionModule: RouteModule = { path: '/retention', routes: retentionRoutes, audited: true };
