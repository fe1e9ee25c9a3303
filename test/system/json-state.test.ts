// A damaged state file is an error that names the file without quoting it, and an update leaves it as it was;
// a file another process replaced is read again.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../agent/log';
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

  it('that is damaged, for state the agent can rebuild, is set aside once and starts afresh', async () => {
    const sub = await mkdtemp(join(dir, 'aside-'));
    const path = join(sub, 'alerts-state.json');
    const text = `{"backups":{"status":"error","installationId":"${INSTALLATION_ID}`;
    await writeFile(path, text);
    const lines: string[] = [];
    const log = createLogger({ write: (line) => lines.push(line) });
    const state = new JsonStateFile<{ n: number }>(path, () => ({ n: 0 }), { setAsideDamaged: { log } });
    expect(await state.get()).toEqual({ n: 0 });
    // The damaged file is kept beside, as it was, for a look; nothing is under the name until an update.
    const [aside, ...others] = (await readdir(sub)).filter((name) =>
      name.startsWith('alerts-state.json.damaged-'),
    );
    expect(others).toEqual([]);
    expect(await readFile(join(sub, aside!), 'utf8')).toBe(text);
    expect(existsSync(path)).toBe(false);
    await state.update((s) => {
      s.n = 3;
    });
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({ n: 3 });
    // Told once, naming both files, never quoting the content.
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({
      level: 'warn',
      msg: 'a damaged state file was set aside; that state starts afresh',
      file: path,
      setAside: join(sub, aside!),
    });
    expect(lines[0]).not.toContain(INSTALLATION_ID.slice(0, 8));
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

describe('a state file that cannot be read', () => {
  it('is an error, never the initial state an update would then write over it', async () => {
    // A folder where the file should be (EISDIR): as root, a mode that forbids reading would not.
    const path = join(dir, 'state-unreadable.json');
    await mkdir(path);
    const state = new JsonStateFile<{ n?: number }>(path, () => ({}));
    await expect(state.get()).rejects.toThrow(`${path} cannot be read (EISDIR)`);
    await expect(
      state.update((s) => {
        s.n = 1;
      }),
    ).rejects.toThrow('cannot be read');
    expect((await stat(path)).isDirectory()).toBe(true);
  });
});

describe('a state file two processes write (the service and a CLI command)', () => {
  it('is read again once the other has replaced it, so an update keeps what the other wrote', async () => {
    const path = join(dir, 'dr-state-shared.json');
    // Two stores on one file, as the service and `gem-backup dr push` each hold one.
    const service = new JsonStateFile<{ lastPush?: string; enrollment?: string }>(path, () => ({}));
    const cli = new JsonStateFile<{ lastPush?: string; enrollment?: string }>(path, () => ({}));
    expect(await service.get()).toEqual({});
    await cli.update((s) => {
      s.enrollment = 'enrolled by the CLI';
    });
    expect(await service.get()).toEqual({ enrollment: 'enrolled by the CLI' });
    await service.update((s) => {
      s.lastPush = 'pushed by the service';
    });
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({
      enrollment: 'enrolled by the CLI',
      lastPush: 'pushed by the service',
    });
    expect(await cli.get()).toEqual({ enrollment: 'enrolled by the CLI', lastPush: 'pushed by the service' });
    // Removed by hand: both read the initial state again.
    await rm(path);
    expect(await service.get()).toEqual({});
  });
});
