// SMB listings that would never end: the provider reads smbclient's `ls` to the end, so a share that lists
// without end is what smbclient prints without end. A stand-in for smbclient (the provider's `command`
// option, which tests use to wrap smbclient) prints what such a share makes it print: more than 100 000
// backups, or a flood of other names, or a slow trickle. The listing is refused with a clear error (never
// an out-of-memory), and a list whose caller goes stops it. (The real share's listing: test/providers/smb.test.ts.)
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SmbProvider } from '../../agent/providers/smb';
import { StorageError } from '../../shared/storage/index';

let dir: string;
let fake: string;

/** Prints an `ls` as smbclient does, as FAKE_LS says: `names` (100 001 backups), `flood` (80 MiB), `slow`. */
const FAKE = `
const mode = process.env.FAKE_LS;
const line = (name) => '  ' + name + '      A     1000  Thu Jan  1 00:00:00 2026\\n';
const out = process.stdout;
function write(chunks, done) {
  const next = () => {
    for (;;) {
      const chunk = chunks();
      if (chunk === undefined) return done();
      if (!out.write(chunk)) return out.once('drain', next);
    }
  };
  next();
}
const end = () => out.write('\\n\\t\\t65535 blocks of size 1024. 1000 blocks available\\n', () => process.exit(0));
if (mode === 'names') {
  let i = 0;
  write(() => {
    if (i > 100000) return undefined;
    let text = '';
    for (let n = 0; n < 1000 && i <= 100000; n++, i++) {
      const day = String(1 + Math.floor(i / 86400)).padStart(2, '0');
      const s = i % 86400;
      const time = String(Math.floor(s / 3600)).padStart(2, '0') + String(Math.floor(s / 60) % 60).padStart(2, '0') + String(s % 60).padStart(2, '0');
      text += line('gem-backup-2026-01-' + day + '-' + time + '.tar.gz');
    }
    return text;
  }, end);
} else if (mode === 'flood') {
  const block = line('somebody-elses-file.txt').repeat(10000);
  let left = Math.ceil((80 * 1024 * 1024) / block.length);
  write(() => (left-- > 0 ? block : undefined), end);
} else {
  let left = 100;
  const tick = () => (left-- > 0 ? out.write(line('other.txt'), () => setTimeout(tick, 100)) : end());
  tick();
}
`;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-smb-list-bounds-'));
  fake = join(dir, 'fake-smbclient.cjs');
  await writeFile(fake, FAKE);
});

afterAll(async () => {
  delete process.env['FAKE_LS'];
  if (dir) await rm(dir, { recursive: true, force: true });
});

function provider(): SmbProvider {
  return new SmbProvider({
    host: '127.0.0.1',
    share: 'backups',
    username: 'gem',
    password: 'secret',
    remotePath: '/gem/',
    command: [process.execPath, fake],
  });
}

async function refusal(promise: Promise<unknown>): Promise<StorageError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  if (!(error instanceof StorageError)) throw new Error(`expected a StorageError, got ${String(error)}`);
  return error;
}

describe('an SMB share that lists without end', () => {
  it('is refused past 100 000 backup names', async () => {
    process.env['FAKE_LS'] = 'names';
    const error = await refusal(provider().list());
    expect(error.code).toBe('io');
    expect(error.permanent).toBe(true);
    expect(error.message).toBe(
      'the listing of folder /gem of //127.0.0.1/backups holds more than 100,000 backups, far more than a destination of GEM holds (a few hundred); it was not read further: check the server, or give GEM a folder of its own',
    );
  });

  it('is cut off past 64 MiB of output', async () => {
    process.env['FAKE_LS'] = 'flood';
    const error = await refusal(provider().list());
    expect(error.permanent).toBe(true);
    expect(error.message).toBe(
      'smbclient printed more than 64 MiB for ls in folder /gem of //127.0.0.1/backups, far more than a backup folder lists (a few hundred backups); it was stopped: check the server, or give GEM a folder of its own',
    );
  });

  it('stops once its caller goes', async () => {
    process.env['FAKE_LS'] = 'slow';
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 300);
    const started = Date.now();
    const error = await refusal(provider().list({ signal: controller.signal }));
    expect(error.code).toBe('aborted');
    expect(Date.now() - started).toBeLessThan(3000);
  });
});
