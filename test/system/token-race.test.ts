// The admin token made by a start that raced another: its first read finds no file, and the other
// start's file lands before it writes. It must take that token, never write its own over it. The race
// is timing (two agents opening at once failed CI once); here the file system call is wrapped so that
// the other start's file appears exactly between the read and the write, every run.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

const race = vi.hoisted(() => ({ path: '', theirs: '', beforeAnswer: async () => {} }));

vi.mock('node:fs/promises', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs/promises')>();
  const wrapped = (async (...args: Parameters<typeof fs.readFile>) => {
    if (args[0] !== race.path) return fs.readFile(...args);
    // This start reads first and misses the file; the other start's file lands before it answers.
    race.path = '';
    const answer = fs.readFile(...args);
    await answer.catch(() => {});
    await race.beforeAnswer();
    return answer;
  }) as typeof fs.readFile;
  return { ...fs, default: { ...fs, readFile: wrapped }, readFile: wrapped };
});

const { loadOrCreateToken } = await import('../../agent/agent');
const { createSmallFileExclusive } = await import('../../agent/system/atomic-file');

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-token-race-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the admin token of two starts at once', () => {
  it("takes the other start's token when its file lands between this start's read and its write", async () => {
    const path = join(dir, 'agent-token');
    race.path = path;
    race.theirs = 'the-other-start-made-this-token-first';
    race.beforeAnswer = async () => {
      expect(await createSmallFileExclusive(path, `${race.theirs}\n`, 0o600)).toBe(true);
    };
    expect(await loadOrCreateToken(path)).toBe(race.theirs);
    expect((await readFile(path, 'utf8')).trim()).toBe(race.theirs);
  });
});
