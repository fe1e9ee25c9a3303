// A damaged state file is an error that names the file without quoting it, and an update leaves it as it was.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JsonStateFile } from '../../agent/system/json-state';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-json-state-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const INSTALLATION_ID = '9f2c4e1ab7d3450c8e6f1a2b3c4d5e6f';

describe('a state file', () => {
  it.each([
    ['cut short', `{"enrollment":{"installationId":"${INSTALLATION_ID}`],
    ['a fault next to a secret', `{"enrollment":{"installationId":${INSTALLATION_ID}}}`],
    ['not an object', `["${INSTALLATION_ID}"]`],
  ])('that is damaged (%s) is refused without being quoted, and left as it was', async (_case, text) => {
    const path = join(dir, `dr-state-${_case.replaceAll(' ', '-')}.json`);
    await writeFile(path, text);
    const state = new JsonStateFile<{ enrollment?: { installationId: string }; n?: number }>(
      path,
      () => ({}),
    );
    const failure = await state.get().then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    expect(failure?.message).toBe(`${path} is damaged (not a JSON object): move it aside to start it afresh`);
    expect(failure?.message).not.toContain(INSTALLATION_ID.slice(0, 8));
    await expect(
      state.update((s) => {
        s.n = 1;
      }),
    ).rejects.toThrow('is damaged');
    expect(await readFile(path, 'utf8')).toBe(text);
  });

  it('that is missing reads as the initial state, and an update writes it', async () => {
    const path = join(dir, 'fresh.json');
    const state = new JsonStateFile<{ n: number }>(path, () => ({ n: 0 }));
    expect(await state.get()).toEqual({ n: 0 });
    await state.update((s) => {
      s.n = 2;
    });
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({ n: 2 });
  });
});
