#!/usr/bin/env -S node --max-semi-space-size=2
// The package's `bin`: runs the compiled CLI (dist/, `npm run build`) when it is at least as new as
// the sources, else the TypeScript CLI through tsx's loader (a checkout that was not built, or edited since).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const COMPILED = join(ROOT, 'dist', 'agent', 'cli.js');

/** Newest modification time of the .ts files under `dir` (0 if there is no such folder). */
function newestSource(dir) {
  let newest = 0;
  for (const entry of existsSync(dir) ? readdirSync(dir, { withFileTypes: true }) : []) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(path));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

const fresh =
  existsSync(COMPILED) &&
  statSync(COMPILED).mtimeMs >=
    Math.max(newestSource(join(ROOT, 'agent')), newestSource(join(ROOT, 'shared')));
if (fresh) {
  await import(pathToFileURL(COMPILED).href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../agent/cli.ts');
}
