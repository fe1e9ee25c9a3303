// SFTP listings that would never end: a hostile (or broken) SFTP server (ssh2's Server, in this file) whose
// folder goes on and on, with backup names or with nothing, is refused with a clear error after a bounded
// number of READDIR answers instead of filling the agent's memory; a list whose caller goes stops asking.
// (The real server's listing: test/providers/sftp.test.ts.)
import { constants } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { Server, utils } from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SftpProvider } from '../../agent/providers/sftp';
import { type ListLimits, MAX_LIST_PAGES } from '../../agent/providers/smb';
import { StorageError } from '../../shared/storage/index';

/** What the server's READDIR answers hold; each mode ends (EOF) after `limit` answers. */
type Mode =
  | { kind: 'names'; limit: number }
  | { kind: 'empty'; limit: number }
  | { kind: 'slow'; limit: number };

let mode: Mode = { kind: 'names', limit: 0 };
let answers = 0;
let server: Server;
let port: number;

const STATUS_OK = 0;
const STATUS_EOF = 1;

function names(answer: number, count: number) {
  const day = new Date(Date.UTC(2026, 0, 1) + answer * 86_400_000).toISOString().slice(0, 10);
  return Array.from({ length: count }, (_, i) => {
    const time = `${String(Math.floor(i / 3600)).padStart(2, '0')}${String(Math.floor(i / 60) % 60).padStart(2, '0')}${String(i % 60).padStart(2, '0')}`;
    const filename = `gem-backup-${day}-${time}.tar.gz`;
    return {
      filename,
      longname: `-rw------- 1 gem gem 1000 Jan  1 00:00 ${filename}`,
      attrs: { mode: constants.S_IFREG | 0o600, size: 1000, uid: 0, gid: 0, atime: 0, mtime: 1_767_225_600 },
    };
  });
}

beforeAll(async () => {
  const hostKey = utils.generateKeyPairSync('ed25519');
  server = new Server({ hostKeys: [hostKey.private] }, (client) => {
    client.on('authentication', (ctx) => ctx.accept());
    client.on('error', () => {});
    client.on('ready', () => {
      client.on('session', (acceptSession) => {
        const session = acceptSession();
        session.on('sftp', (acceptSftp) => {
          const sftp = acceptSftp();
          const dirAttrs = { mode: constants.S_IFDIR | 0o700, size: 0, uid: 0, gid: 0, atime: 0, mtime: 0 };
          sftp.on('REALPATH', (id) => sftp.name(id, [{ filename: '/', longname: '/', attrs: dirAttrs }]));
          sftp.on('STAT', (id) => sftp.attrs(id, dirAttrs));
          sftp.on('LSTAT', (id) => sftp.attrs(id, dirAttrs));
          sftp.on('OPENDIR', (id) => sftp.handle(id, Buffer.from('dir')));
          sftp.on('CLOSE', (id) => sftp.status(id, STATUS_OK));
          sftp.on('READDIR', (id) => {
            if (answers >= mode.limit) return sftp.status(id, STATUS_EOF);
            answers += 1;
            if (mode.kind === 'names') return sftp.name(id, names(answers, 500));
            if (mode.kind === 'empty') return sftp.name(id, []);
            setTimeout(() => sftp.name(id, names(answers, 1)), 100);
          });
        });
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  await new Promise<void>((resolve) => server?.close(() => resolve()));
});

/** A smaller names limit than the default for the first test (the defaults are tested on ListBound in s3-list-bounds). */
function provider(listLimits?: ListLimits): SftpProvider {
  return new SftpProvider({
    ...(listLimits ? { listLimits } : {}),
    host: '127.0.0.1',
    port,
    username: 'gem',
    password: 'any',
    remotePath: '/gem',
    timeoutMs: 5000,
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

function serve(next: Mode): void {
  mode = next;
  answers = 0;
}

describe('an SFTP folder that goes on and on', () => {
  it('is refused past its limit of backup names', async () => {
    serve({ kind: 'names', limit: 300 }); // 150 000 names, then the end
    const error = await refusal(provider({ pages: MAX_LIST_PAGES, names: 5000 }).list());
    expect(error.code).toBe('io');
    expect(error.permanent).toBe(true);
    expect(error.message).toBe(
      `the listing of folder /gem on 127.0.0.1:${port} holds more than 5,000 backups, far more than a destination of GEM holds (a few hundred); it was not read further: check the server, or give GEM a folder of its own`,
    );
    expect(answers).toBe(11);
  });

  it(`is refused after ${MAX_LIST_PAGES} answers that name nothing`, async () => {
    serve({ kind: 'empty', limit: MAX_LIST_PAGES + 2000 });
    const error = await refusal(provider().list());
    expect(error.permanent).toBe(true);
    expect(error.message).toBe(
      `the listing of folder /gem on 127.0.0.1:${port} did not end after 10,000 pages, far more than a backup folder takes: check the server, or give GEM a folder of its own`,
    );
    expect(answers).toBe(MAX_LIST_PAGES);
  });

  it('stops asking once its caller goes', async () => {
    serve({ kind: 'slow', limit: 100 });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 450);
    const error = await refusal(provider().list({ signal: controller.signal }));
    expect(error.code).toBe('aborted');
    const asked = answers;
    expect(asked).toBeLessThan(10);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(answers).toBe(asked);
  });

  it('of leftovers (a sweep) is refused the same way', async () => {
    serve({ kind: 'empty', limit: MAX_LIST_PAGES + 2000 });
    const error = await refusal(provider().sweepTemp());
    expect(error.message).toMatch(/did not end after 10,000 pages/);
    expect(answers).toBe(MAX_LIST_PAGES);
  });
});
