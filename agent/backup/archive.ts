/** Rules for what may stand inside a backup archive: names and entry types, checked on every read. */
import { AppError } from '../errors';
import { DUMP_NAME, MANIFEST_NAME, MAX_RAW_PATH } from './manifest';

/** Top-level folders a backup may hold besides the manifest and the dump. */
export const FOLDER_ROOTS = ['scripts', 'config'] as const;
export type FolderRoot = (typeof FOLDER_ROOTS)[number];

const MAX_PATH = MAX_RAW_PATH;

/**
 * Normalises and checks an archive entry name: relative, no `..`, no empty or `.` segments, no
 * backslashes or control characters, and under one of the known roots. Throws otherwise. A name
 * that is not clean UTF-8 stands in the archive as its stand-in (manifest.ts standInName, `%XX`
 * escapes: up to three characters a byte), its bytes in the manifest's `rawPath`.
 */
export function checkEntryName(raw: string): string {
  const name = raw.endsWith('/') ? raw.slice(0, -1) : raw;
  const reject = (why: string) => {
    throw new AppError('corrupt_backup', `unsafe archive entry ${JSON.stringify(raw.slice(0, 200))}: ${why}`);
  };
  const limit = raw.includes('%') ? 3 * MAX_PATH + 16 : MAX_PATH;
  if (name.length === 0 || raw.length > limit) reject('empty or too long');
  if (name.startsWith('/')) reject('absolute path');
  if (/[\u0000-\u001f\u007f\\]/.test(name)) reject('control character or backslash');
  const segments = name.split('/');
  if (segments.some((s) => s === '..')) reject('".." segment');
  if (segments.some((s) => s === '' || s === '.')) reject('empty or "." segment');
  if (name === MANIFEST_NAME || name === DUMP_NAME) return name;
  if (!(FOLDER_ROOTS as readonly string[]).includes(segments[0]!)) reject('outside scripts/ and config/');
  return name;
}

/**
 * Only regular files, folders and symbolic links are ever accepted: no hard links, devices, FIFOs. A
 * symbolic link is only ever restored as a link (never followed; see linkedAncestor and extract.ts).
 */
export function checkEntryType(
  type: string | null | undefined,
  name: string,
): 'file' | 'directory' | 'symlink' {
  if (type === 'file' || type === 'directory' || type === 'symlink') return type;
  throw new AppError(
    'corrupt_backup',
    `unsafe archive entry ${JSON.stringify(name.slice(0, 200))}: type ${type} is not allowed`,
  );
}

/**
 * The first member of `links` that is a folder above `name` (`scripts/x` for `scripts/x/passwd`), if
 * any. Nothing may lie under a link in a backup: a hostile archive could otherwise write through it
 * (a link `x -> /etc` and a file `x/passwd`). A backup never holds such a path, as the walk does not
 * follow links.
 */
export function linkedAncestor(name: string, links: ReadonlySet<string>): string | undefined {
  for (let i = name.indexOf('/'); i !== -1; i = name.indexOf('/', i + 1)) {
    const parent = name.slice(0, i);
    if (links.has(parent)) return parent;
  }
  return undefined;
}

/**
 * Refuses a link target no link could hold (empty, too long, a NUL byte). Its text is otherwise kept
 * as it is (a target that is not valid UTF-8: its stand-in, the bytes in the manifest's `rawTarget`).
 */
export function checkLinkTarget(target: string | null | undefined, name: string): string {
  if (
    typeof target !== 'string' ||
    target.length === 0 ||
    target.length > (target.includes('%') ? 3 * MAX_PATH : MAX_PATH) ||
    target.includes('\0')
  ) {
    throw new AppError(
      'corrupt_backup',
      `unsafe archive entry ${JSON.stringify(name.slice(0, 200))}: not a valid link target`,
    );
  }
  return target;
}
