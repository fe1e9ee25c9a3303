// An SFTP server that signs in, opens its SFTP service and answers keepalives, but then leaves one kind of
// request unanswered (a sftp-server stuck on a dead network mount or a failing disk): ssh2's Server, in this
// file, over a small in-memory folder. Every operation gives up after the provider's request timeout with a
// clear 'unreachable' error and closes the connection, instead of waiting for ever.
// (The server that never opens its SFTP service: sftp-silent.test.ts; the real server: sftp.test.ts.)
import { constants } from 'node:fs';
import { utils } from 'ssh2';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SftpProvider } from '../../agent/providers/sftp';
import { type InProcessSshServer, startInProcessSshServer } from '../services/ssh-server';
import { until, within } from '../services/wait';

const STATUS_OK = 0;
const STATUS_EOF = 1;
const STATUS_NO_SUCH_FILE = 2;
const FOLDER = '/gem';
const NAME = 'gem-backup-2026-01-01-000000.tar.gz';

/** The requests the server leaves unanswered (by ssh2's event names). */
const unanswered = new Set<string>();
/** The kinds of request the server was sent (answered or not). */
const asked = new Set<string>();
/** The folder's files by full path. */
const files = new Map<string, Buffer>();
let server: InProcessSshServer;

const dirAttrs = { mode: constants.S_IFDIR | 0o700, size: 0, uid: 0, gid: 0, atime: 0, mtime: 0 };
const fileAttrs = (data: Buffer) => ({
  mode: constants.S_IFREG | 0o600,
  size: data.length,
  uid: 0,
  gid: 0,
  atime: 0,
  mtime: 1_767_225_600,
});

beforeAll(async () => {
  server = await startInProcessSshServer((acceptSftp) => {
    const sftp = acceptSftp();
    /** Answers a request with `answer` unless its kind is left unanswered. */
    const on = (request: string, answer: (id: number, ...args: never[]) => void) =>
      sftp.on(
        request as never,
        ((id: number, ...args: never[]) => {
          asked.add(request);
          if (!unanswered.has(request)) answer(id, ...args);
        }) as never,
      );
    const attrs = (id: number, path: string) => {
      const data = files.get(path);
      if (path === FOLDER) sftp.attrs(id, dirAttrs);
      else if (data) sftp.attrs(id, fileAttrs(data));
      else sftp.status(id, STATUS_NO_SUCH_FILE);
    };
    const listed = new Set<string>();
    on('REALPATH', (id) => sftp.name(id, [{ filename: '/', longname: '/', attrs: dirAttrs }]));
    on('STAT', (id, path: string) => attrs(id, path));
    on('LSTAT', (id, path: string) => attrs(id, path));
    on('OPENDIR', (id) => sftp.handle(id, Buffer.from('dir')));
    on('READDIR', (id, handle: Buffer) => {
      if (listed.has(handle.toString())) return sftp.status(id, STATUS_EOF);
      listed.add(handle.toString());
      sftp.name(
        id,
        [...files].map(([path, data]) => {
          const filename = path.slice(FOLDER.length + 1);
          return { filename, longname: `-rw------- 1 gem gem ${filename}`, attrs: fileAttrs(data) };
        }),
      );
    });
    on('OPEN', (id, path: string, flags: number) => {
      if (flags & utils.sftp.OPEN_MODE.WRITE) files.set(path, Buffer.alloc(0));
      if (!files.has(path)) return sftp.status(id, STATUS_NO_SUCH_FILE);
      sftp.handle(id, Buffer.from(path));
    });
    on('WRITE', (id, handle: Buffer, offset: number, data: Buffer) => {
      const path = handle.toString();
      const old = files.get(path) ?? Buffer.alloc(0);
      const grown = Buffer.alloc(Math.max(old.length, offset + data.length));
      old.copy(grown);
      data.copy(grown, offset);
      files.set(path, grown);
      sftp.status(id, STATUS_OK);
    });
    on('READ', (id, handle: Buffer, offset: number, length: number) => {
      const data = files.get(handle.toString()) ?? Buffer.alloc(0);
      if (offset >= data.length) return sftp.status(id, STATUS_EOF);
      sftp.data(id, data.subarray(offset, offset + length));
    });
    on('CLOSE', (id, handle: Buffer) => {
      listed.delete(handle.toString());
      sftp.status(id, STATUS_OK);
    });
    on('REMOVE', (id, path: string) => {
      sftp.status(id, files.delete(path) ? STATUS_OK : STATUS_NO_SUCH_FILE);
    });
    on('RENAME', (id, from: string, to: string) => {
      const data = files.get(from);
      if (!data) return sftp.status(id, STATUS_NO_SUCH_FILE);
      files.delete(from);
      files.set(to, data);
      sftp.status(id, STATUS_OK);
    });
  });
});

afterEach(() => {
  unanswered.clear();
  asked.clear();
  files.clear();
});

afterAll(async () => {
  await server?.close();
});

/** A provider for the test server, its request limit 1 s unless given (`'product default'`: none given). */
function provider(requestLimit: number | 'product default' = 1000): SftpProvider {
  return new SftpProvider({
    host: '127.0.0.1',
    port: server.port,
    username: 'gem',
    password: 'any',
    remotePath: FOLDER,
    timeoutMs: 5000,
    ...(requestLimit === 'product default' ? {} : { requestTimeoutMs: requestLimit }),
  });
}

const BACKUP = Buffer.alloc(100_000, 7);
const source = { size: BACKUP.length, open: () => new Blob([BACKUP]).stream() };

/** The operations, each with a request it cannot do without. */
const cases: [string, string, (p: SftpProvider) => Promise<unknown>][] = [
  ['a listing', 'LSTAT', (p) => p.list()],
  ['a listing', 'OPENDIR', (p) => p.list()],
  ['a listing', 'READDIR', (p) => p.list()],
  ['a sweep of temp files', 'READDIR', (p) => p.sweepTemp()],
  ['a stat', 'STAT', (p) => p.stat(NAME)],
  ['a delete', 'REMOVE', (p) => p.delete(NAME)],
  ['an upload', 'OPEN', (p) => p.put(NAME, source)],
  ['an upload', 'WRITE', (p) => p.put(NAME, source)],
  ['an upload', 'CLOSE', (p) => p.put(NAME, source)],
  ['an upload', 'RENAME', (p) => p.put(NAME, source)],
  ['an exclusive upload', 'RENAME', (p) => p.put(NAME, source, { exclusive: true })],
  ['a download', 'OPEN', (p) => p.get(NAME).then((stream) => new Response(stream).arrayBuffer())],
  ['a download', 'READ', (p) => p.get(NAME).then((stream) => new Response(stream).arrayBuffer())],
];

describe('an SFTP server that leaves a request unanswered', () => {
  it.each(cases)(
    'ends %s whose %s is never answered as unreachable, and closes the connection',
    async (what, request, run) => {
      files.set(`${FOLDER}/${NAME}`, BACKUP);
      // The operation works while the server answers everything.
      const first = provider();
      await within(run(first), 10_000, `${what} on a server that answers`);
      await first.close();
      if (!files.has(`${FOLDER}/${NAME}`)) files.set(`${FOLDER}/${NAME}`, BACKUP);

      unanswered.add(request);
      const second = provider();
      const failure = await within(
        run(second).then(
          () => new Error('it succeeded'),
          (error: unknown) => error,
        ),
        10_000,
        `${what} whose ${request} is never answered`,
      );
      expect(failure).toMatchObject({ code: 'unreachable' });
      expect((failure as Error).message).toMatch(
        /127\.0\.0\.1:\d+ did not answer an SFTP request within 1 s/,
      );
      await within(server.allClosed(), 5_000, 'the connection to close');
      await second.close();
    },
  );
});

/** Cancellable operations, each with a request it cannot do without. */
const cancellable: [string, string, (p: SftpProvider, signal: AbortSignal) => Promise<unknown>][] = [
  ['a stat', 'STAT', (p, signal) => p.stat(NAME, { signal })],
  ['a delete', 'REMOVE', (p, signal) => p.delete(NAME, { signal })],
  ['a listing', 'LSTAT', (p, signal) => p.list({ signal })],
  ['a listing', 'OPENDIR', (p, signal) => p.list({ signal })],
  ['a listing', 'READDIR', (p, signal) => p.list({ signal })],
  ['a sweep of temp files', 'READDIR', (p, signal) => p.sweepTemp({ signal })],
  ['an upload', 'LSTAT', (p, signal) => p.put(NAME, source, { signal })],
  ['an upload', 'OPEN', (p, signal) => p.put(NAME, source, { signal })],
  ['an upload', 'WRITE', (p, signal) => p.put(NAME, source, { signal })],
  ['a download', 'STAT', (p, signal) => p.get(NAME, { signal })],
  [
    'a download',
    'OPEN',
    (p, signal) => p.get(NAME, { signal }).then((stream) => new Response(stream).arrayBuffer()),
  ],
];

describe('an SFTP server that leaves a request unanswered, the job cancelled meanwhile', () => {
  it.each(cancellable)(
    'ends %s waiting for its %s at once as aborted, and closes the connection',
    async (what, request, run) => {
      files.set(`${FOLDER}/${NAME}`, BACKUP);
      unanswered.add(request);
      // The product's default request limit: the test shows the cancel does not wait for it.
      const sftp = provider('product default');
      const controller = new AbortController();
      const running = run(sftp, controller.signal).then(
        () => new Error('it succeeded'),
        (error: unknown) => error,
      );
      await until(async () => asked.has(request), `the ${request} to reach the server`);
      controller.abort();
      const failure = await within(running, 3_000, `${what} cancelled while its ${request} is unanswered`);
      expect(failure).toMatchObject({ code: 'aborted' });
      // Nothing changed: the backup is still there, and no temp file was left.
      expect([...files.keys()]).toEqual([`${FOLDER}/${NAME}`]);
      await within(server.allClosed(), 3_000, 'the connection to close');
      await sftp.close();
    },
  );
});

describe('an SFTP server that stops answering altogether', () => {
  it.each([
    ['a listing', (p: SftpProvider) => p.list()],
    ['a sweep of temp files', (p: SftpProvider) => p.sweepTemp()],
  ])('fails %s after one request limit, sending nothing more on the dead connection', async (what, run) => {
    files.set(`${FOLDER}/${NAME}`, BACKUP);
    // Stuck from the folder's first READDIR on: its CLOSE would wait as long again.
    unanswered.add('READDIR').add('CLOSE');
    const limitMs = 3_000;
    const sftp = provider(limitMs);
    const failure = await within(
      run(sftp).then(
        () => new Error('it succeeded'),
        (error: unknown) => error,
      ),
      limitMs * 1.7,
      `${what} on a server stuck from its READDIR`,
    );
    expect(failure).toMatchObject({ code: 'unreachable' });
    expect(asked.has('CLOSE')).toBe(false);
    await within(server.allClosed(), 5_000, 'the connection to close');
    await sftp.close();
  });
});
