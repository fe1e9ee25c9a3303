/** manifest.json: the first member of every backup, describing every other member. */
import { z } from 'zod';

export const MANIFEST_NAME = 'manifest.json';
export const DUMP_NAME = 'database.dump';
/** A manifest larger than this is refused before parsing: it cannot be ours. */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);

/** The longest path (in bytes, relative to its folder root) or link target a member may have. */
export const MAX_RAW_PATH = 4096;

/**
 * How many bytes starting at `i` form one valid UTF-8 character (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF), or 0 if the byte at `i` starts none.
 */
function utf8Length(bytes: Uint8Array, i: number): number {
  const c = bytes[i]!;
  if (c < 0x80) return 1;
  const n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
  if (n === 0 || i + n > bytes.length) return 0;
  for (let k = 1; k < n; k++) if ((bytes[i + k]! & 0xc0) !== 0x80) return 0;
  const c1 = bytes[i + 1]!;
  if ((c === 0xe0 && c1 < 0xa0) || (c === 0xed && c1 > 0x9f)) return 0;
  if ((c === 0xf0 && c1 < 0x90) || (c === 0xf4 && c1 > 0x8f)) return 0;
  return n;
}

/**
 * The stand-in of a name's bytes in a tar entry and in `path`: the bytes as UTF-8 text, except that
 * a byte not part of a valid UTF-8 character, a control character (0x00-0x1f, 0x7f), a backslash and
 * `%` itself are written `%XX` (upper-case hex). `/` stays, so each path segment stands in for one.
 * One-to-one: the stand-in of a clean name is the name itself.
 */
export function standInName(bytes: Uint8Array): string {
  let out = '';
  let clean = 0; // start of the current run of bytes kept as they are
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < bytes.length; ) {
    const c = bytes[i]!;
    const n = utf8Length(bytes, i);
    if (n === 0 || c < 0x20 || c === 0x7f || c === 0x5c || c === 0x25) {
      out += buffer.toString('utf8', clean, i) + `%${c.toString(16).toUpperCase().padStart(2, '0')}`;
      i += 1;
      clean = i;
    } else i += n;
  }
  return out + buffer.toString('utf8', clean);
}

/**
 * Whether a name (or link target) needs its bytes carried apart: it is not valid UTF-8, or holds a
 * control character, a backslash or `%` (its stand-in differs from it).
 */
export function needsRawName(bytes: Uint8Array): boolean {
  return (
    standInName(bytes) !== Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8')
  );
}

/** Bytes of a base64url field, or undefined if it is not exactly the base64url (no padding) of some bytes. */
function base64urlBytes(text: string): Buffer | undefined {
  const bytes = Buffer.from(text, 'base64url');
  return bytes.toString('base64url') === text ? bytes : undefined;
}

/**
 * Where a member lies: its folder root (`scripts`) and the bytes of its path below it (empty for the
 * root itself): `rawPath`'s if it has one, else its `path`'s. Only for members that passed
 * manifestSchema (a `rawPath` there is well formed); the manifest and the dump have no root.
 */
export function memberBytes(member: { path: string; rawPath?: string | undefined }): {
  root: string;
  rel: Buffer;
} {
  const slash = member.path.indexOf('/');
  const root = slash === -1 ? member.path : member.path.slice(0, slash);
  if (member.rawPath !== undefined) return { root, rel: Buffer.from(member.rawPath, 'base64url') };
  return { root, rel: Buffer.from(slash === -1 ? '' : member.path.slice(slash + 1), 'utf8') };
}

/** A link member's target as bytes: `rawTarget`'s if it has one, else its `target`'s. */
export function targetBytes(member: { target?: string | undefined; rawTarget?: string | undefined }): Buffer {
  if (member.rawTarget !== undefined) return Buffer.from(member.rawTarget, 'base64url');
  return Buffer.from(member.target ?? '', 'utf8');
}

/**
 * Why a member's `rawPath` is unsafe or does not match its `path`, or undefined if it is fine: the
 * bytes must be a relative path of at most MAX_RAW_PATH bytes, no NUL, no empty, `.` or `..` segment,
 * and `path` must be `<root>/` and their stand-in, which must differ from the bytes read as UTF-8 (a
 * writer gives a clean name no rawPath).
 */
function rawPathProblem(path: string, rawPath: string): string | undefined {
  const bytes = base64urlBytes(rawPath);
  if (bytes === undefined) return 'its raw path is not base64url';
  if (bytes.length === 0 || bytes.length > MAX_RAW_PATH) return 'its raw path is empty or too long';
  if (bytes.includes(0)) return 'its raw path holds a NUL byte';
  const segments = bytes.toString('latin1').split('/');
  if (segments.some((s) => s === '' || s === '.' || s === '..'))
    return 'its raw path has an empty, "." or ".." segment';
  if (!needsRawName(bytes)) return 'its raw path is a clean name (it needs none)';
  const slash = path.indexOf('/');
  if (slash <= 0 || path.slice(slash + 1) !== standInName(bytes))
    return 'its path is not the stand-in of its raw path';
  return undefined;
}

/** Why a link's `rawTarget` is unusable or does not match its `target`, or undefined if it is fine. */
function rawTargetProblem(target: string | undefined, rawTarget: string): string | undefined {
  const bytes = base64urlBytes(rawTarget);
  if (bytes === undefined) return 'its raw link target is not base64url';
  if (bytes.length === 0 || bytes.length > MAX_RAW_PATH || bytes.includes(0))
    return 'not a valid link target';
  if (!needsRawName(bytes)) return 'its raw link target is clean text (it needs none)';
  if (target !== standInName(bytes)) return 'its link target is not the stand-in of its raw target';
  return undefined;
}

const unsafe = (path: string, why: string) =>
  `unsafe archive entry ${JSON.stringify(path.slice(0, 200))}: ${why}`;

const memberSchema = z
  .object({
    path: z.string(),
    /** base64url (no padding) of the path's bytes below its folder root; only for a name not clean UTF-8. */
    rawPath: z.string().optional(),
    type: z.enum(['file', 'directory', 'symlink']),
    size: z.number().int().nonnegative(),
    sha256: sha256Hex.optional(),
    mode: z.number().int().optional(),
    /** A link's target text (its stand-in, when rawTarget holds its bytes). */
    target: z
      .string()
      .min(1)
      .max(3 * MAX_RAW_PATH)
      .optional(),
    /** base64url of a link target's bytes that are not valid UTF-8 text. */
    rawTarget: z.string().optional(),
  })
  .superRefine((m, ctx) => {
    if ((m.type === 'symlink') !== (m.target !== undefined))
      ctx.addIssue({
        code: 'custom',
        message: 'a symlink member needs its target, and only a symlink member has one',
      });
    const pathProblem = m.rawPath === undefined ? undefined : rawPathProblem(m.path, m.rawPath);
    if (pathProblem) ctx.addIssue({ code: 'custom', message: unsafe(m.path, pathProblem) });
    if (m.rawTarget !== undefined) {
      const why = m.type !== 'symlink' ? 'only a link has a target' : rawTargetProblem(m.target, m.rawTarget);
      if (why) ctx.addIssue({ code: 'custom', message: unsafe(m.path, why) });
    } else if (m.target !== undefined && m.target.length > MAX_RAW_PATH)
      ctx.addIssue({ code: 'custom', message: unsafe(m.path, 'not a valid link target') });
  });

/**
 * Refuses two members that land in the same place, or one under a link, by the bytes of where they
 * land (a stand-in `scripts/50%25` and an older backup's `scripts/50%` name one file): `path` alone
 * cannot tell, and the reader's own checks compare paths.
 */
function checkDestinations(members: Array<z.infer<typeof memberSchema>>, ctx: z.RefinementCtx): void {
  const key = (m: (typeof members)[number]) => {
    const { root, rel } = memberBytes(m);
    return rel.length === 0 ? root : `${root}/${rel.toString('latin1')}`;
  };
  const seen = new Set<string>();
  const links = new Map<string, string>();
  for (const m of members) {
    const k = key(m);
    if (seen.has(k)) {
      ctx.addIssue({ code: 'custom', message: unsafe(m.path, 'listed twice') });
      return;
    }
    seen.add(k);
    if (m.type === 'symlink') links.set(k, m.path);
  }
  if (links.size === 0) return;
  for (const m of members) {
    const k = key(m);
    for (let i = k.indexOf('/'); i !== -1; i = k.indexOf('/', i + 1)) {
      const link = links.get(k.slice(0, i));
      if (link !== undefined) {
        ctx.addIssue({ code: 'custom', message: unsafe(m.path, `it lies under the link ${link}`) });
        return;
      }
    }
  }
}

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
    /**
     * The database's own settings (ALTER DATABASE ... SET, and ALTER ROLE ... IN DATABASE ... SET with
     * `role`), as the server stored them: a restore gives them to the restored database over the live
     * one's of the same name, and keeps the live one's others. Absent in backups made before 2026-12-01
     * (a restore then keeps the live database's settings only).
     */
    settings: z
      .array(
        z.object({
          role: z.string().min(1).max(1000).optional(),
          // Not checked further: a name an older server let through must not make the backup unreadable
          // (the restore quotes it, and says it left out one the server refuses).
          name: z.string().min(1).max(1000),
          value: z.string(),
        }),
      )
      .optional(),
  }),
  /**
   * The roles the database's objects name (owners, ACL grantees and grantors, policy roles, default
   * privileges), with their non-secret attributes (never a password): a restore creates those missing
   * on its server (without login) so that owners and privileges come back as they were. Absent in
   * backups made before 2026-12-01 (a restore then makes the live database's owner own everything).
   */
  roles: z
    .array(
      z.object({
        name: z.string().min(1).max(1000),
        login: z.boolean(),
        inherit: z.boolean(),
        superuser: z.boolean(),
        createdb: z.boolean(),
        createrole: z.boolean(),
        replication: z.boolean(),
        bypassrls: z.boolean(),
      }),
    )
    .optional(),
  /**
   * The memberships among `roles` (GRANT role TO member): with admin option, the grantor (absent when
   * it no longer exists) and, from PostgreSQL 16 on, the inherit and set options. A restore grants
   * those its server lacks (roles are the server's: it never takes one away). Absent in backups made
   * before 2026-12-01.
   */
  memberships: z
    .array(
      z.object({
        role: z.string().min(1).max(1000),
        member: z.string().min(1).max(1000),
        admin: z.boolean(),
        grantor: z.string().min(1).max(1000).optional(),
        inherit: z.boolean().optional(),
        set: z.boolean().optional(),
      }),
    )
    .optional(),
  /** Exact row counts per table ("schema.table"), taken in the dump's own snapshot. */
  rowCounts: z.record(z.string(), z.number().int().nonnegative()),
  /**
   * Every other member. A `symlink` member (backups made since 2026-11-30; older agents refuse such a
   * manifest) is a symbolic link, kept as a link: `target` is its text as read (relative or absolute,
   * dangling or not), size 0, no sha256 and no mode. A member whose name is not clean UTF-8 (see
   * needsRawName) carries its bytes in `rawPath` and a stand-in in `path` (shared/envelope/FORMAT.md,
   * "Raw names"); a link whose target is not valid UTF-8, the target's bytes in `rawTarget`.
   */
  members: z.array(memberSchema).superRefine(checkDestinations),
});
export type Manifest = z.infer<typeof manifestSchema>;
export type ManifestMember = Manifest['members'][number];
/** A role the backup's objects name, with its non-secret attributes (`roles`). */
export type ManifestRole = NonNullable<Manifest['roles']>[number];
/** A membership among the backup's roles (`memberships`). */
export type ManifestMembership = NonNullable<Manifest['memberships']>[number];
/** A setting of the backed-up database, for all roles or for one (`postgres.settings`). */
export type DatabaseSetting = NonNullable<Manifest['postgres']['settings']>[number];
