/** Rules for what may stand inside a backup archive: names and entry types, checked on every read. */
import { AppError } from '../errors';
import { DUMP_NAME, MANIFEST_NAME } from './manifest';

/** Top-level folders a backup may hold besides the manifest and the dump. */
export const FOLDER_ROOTS = ['scripts', 'config'] as const;
export type FolderRoot = (typeof FOLDER_ROOTS)[number];

const MAX_PATH = 4096;

/**
 * Normalises and checks an archive entry name: relative, no `..`, no empty or `.` segments, no
 * backslashes or control characters, and under one of the known roots. Throws otherwise.
 */
export function checkEntryName(raw: string): string {
  const name = raw.endsWith('/') ? raw.slice(0, -1) : raw;
  const reject = (why: string) => {
    throw new AppError('corrupt_backup', `unsafe archive entry ${JSON.stringify(raw.slice(0, 200))}: ${why}`);
  };
  if (name.length === 0 || raw.length > MAX_PATH) reject('empty or too long');
  if (name.startsWith('/')) reject('absolute path');
  if (/[\u0000-\u001f\u007f\\]/.test(name)) reject('control character or backslash');
  const segments = name.split('/');
  if (segments.some((s) => s === '..')) reject('".." segment');
  if (segments.some((s) => s === '' || s === '.')) reject('empty or "." segment');
  if (name === MANIFEST_NAME || name === DUMP_NAME) return name;
  if (!(FOLDER_ROOTS as readonly string[]).includes(segments[0]!)) reject('outside scripts/ and config/');
  return name;
}

/** Only regular files and folders are ever accepted: no links, devices, FIFOs. */
export function checkEntryType(type: string | null | undefined, name: string): 'file' | 'directory' {
  if (type === 'file' || type === 'directory') return type;
  throw new AppError(
    'corrupt_backup',
    `unsafe archive entry ${JSON.stringify(name.slice(0, 200))}: type ${type} is not allowed`,
  );
}
