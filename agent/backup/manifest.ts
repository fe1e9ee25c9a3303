/** manifest.json: the first member of every backup, describing every other member. */
import { z } from 'zod';

export const MANIFEST_NAME = 'manifest.json';
export const DUMP_NAME = 'database.dump';
/** A manifest larger than this is refused before parsing: it cannot be ours. */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);

export const manifestSchema = z.object({
  format: z.literal('gem-backup-manifest'),
  version: z.literal(1),
  createdAt: z.string(),
  installationId: z.string().regex(/^[0-9a-f]{32}$/),
  agentVersion: z.string(),
  gemVersion: z.string().optional(),
  kind: z.string(),
  label: z.string().optional(),
  postgres: z.object({
    serverVersion: z.string(),
    serverVersionNum: z.number().int(),
    dumpVersion: z.string(),
    database: z.string(),
    /**
     * Bytes the database took on its server when the backup was made (pg_database_size): what a
     * restore's staging copy of it will need. Absent in backups made before 2026-11-30 (a restore
     * then estimates from the live database).
     */
    databaseBytes: z.number().int().nonnegative().optional(),
  }),
  /** Exact row counts per table ("schema.table"), taken in the dump's own snapshot. */
  rowCounts: z.record(z.string(), z.number().int().nonnegative()),
  /**
   * Every other member. A `symlink` member (backups made since 2026-11-30; older agents refuse such a
   * manifest) is a symbolic link, kept as a link: `target` is its text as read (relative or absolute,
   * dangling or not), size 0, no sha256 and no mode.
   */
  members: z.array(
    z
      .object({
        path: z.string(),
        type: z.enum(['file', 'directory', 'symlink']),
        size: z.number().int().nonnegative(),
        sha256: sha256Hex.optional(),
        mode: z.number().int().optional(),
        target: z.string().min(1).max(4096).optional(),
      })
      .refine((m) => (m.type === 'symlink') === (m.target !== undefined), {
        message: 'a symlink member needs its target, and only a symlink member has one',
      }),
  ),
});
export type Manifest = z.infer<typeof manifestSchema>;
export type ManifestMember = Manifest['members'][number];
