// S3 listings that would never end: a hostile (or broken) server that repeats its continuation token,
// or pages on with ever new tokens and names, is refused with a clear error after a bounded number of
// requests, with no memory growing meanwhile; a list whose caller goes stops asking. A real S3 server
// (s3rver) still lists as before.
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Provider } from '../../agent/providers/s3';
import { ListBound, type ListLimits, MAX_LIST_PAGES, MAX_LISTED_NAMES } from '../../agent/providers/smb';
import { isStorageError, StorageError } from '../../shared/storage/index';
import { type S3Service, startS3 } from '../services/s3';

/** How the hostile server pages its ListObjectsV2 (and ListMultipartUploads) answers. */
type Mode = 'same-token' | 'new-names' | 'empty-pages' | 'slow' | 'same-upload-marker';

interface Hostile {
  endpoint: string;
  /** Requests by kind: 'list', 'uploads', 'head', 'other'. */
  counts: Record<string, number>;
  mode: Mode;
  close(): Promise<void>;
}

const xml = (body: string) => `<?xml version="1.0" encoding="UTF-8"?>${body}`;

function backupNames(page: number, count: number): string[] {
  // Valid backup names, all different: a day per page, a second per name.
  const day = new Date(Date.UTC(2026, 0, 1) + page * 86_400_000).toISOString().slice(0, 10);
  return Array.from({ length: count }, (_, i) => {
    const h = String(Math.floor(i / 3600)).padStart(2, '0');
    const m = String(Math.floor(i / 60) % 60).padStart(2, '0');
    const s = String(i % 60).padStart(2, '0');
    return `gem-backup-${day}-${h}${m}${s}.tar.gz`;
  });
}

function listPage(keys: string[], token: string | undefined): string {
  const contents = keys
    .map(
      (key) =>
        `<Contents><Key>gem/${key}</Key><Size>1000</Size><LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>`,
    )
    .join('');
  return xml(
    `<ListBucketResult><Name>b</Name><KeyCount>${keys.length}</KeyCount><IsTruncated>${token !== undefined}</IsTruncated>${
      token ? `<NextContinuationToken>${token}</NextContinuationToken>` : ''
    }${contents}</ListBucketResult>`,
  );
}

async function startHostile(): Promise<Hostile> {
  const counts: Record<string, number> = { list: 0, uploads: 0, head: 0, other: 0 };
  const hostile = { endpoint: '', counts, mode: 'same-token' as Mode, close: async () => {} };
  const answer = (req: IncomingMessage): { status: number; body: string } => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (req.method === 'HEAD') {
      counts['head']! += 1;
      return { status: 200, body: '' };
    }
    if (req.method === 'GET' && url.searchParams.get('list-type') === '2') {
      counts['list']! += 1;
      const n = counts['list']!;
      // Test Connection probes (a sweep looks for them first): none.
      if (url.searchParams.get('prefix')?.includes('gem-connection-test-'))
        return { status: 200, body: listPage([], undefined) };
      switch (hostile.mode) {
        case 'same-token':
          return { status: 200, body: listPage(backupNames(0, 4), 'same') };
        case 'new-names':
          return { status: 200, body: listPage(backupNames(n, 1000), `t${n}`) };
        case 'empty-pages':
        case 'slow':
          return { status: 200, body: listPage([], `t${n}`) };
        default:
          return { status: 200, body: listPage([], undefined) };
      }
    }
    if (req.method === 'GET' && url.searchParams.has('uploads')) {
      counts['uploads']! += 1;
      return {
        status: 200,
        body: xml(
          '<ListMultipartUploadsResult><Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><NextKeyMarker>same</NextKeyMarker><NextUploadIdMarker>same</NextUploadIdMarker><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>',
        ),
      };
    }
    counts['other']! += 1;
    return { status: 200, body: xml('<ok/>') };
  };
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const { status, body } = answer(req);
      const send = () => {
        res.writeHead(status, { 'content-type': 'application/xml' });
        res.end(body);
      };
      if (hostile.mode === 'slow') setTimeout(send, 100);
      else send();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  hostile.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  hostile.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return hostile;
}

let hostile: Hostile;
let s3: S3Service;

beforeAll(async () => {
  [hostile, s3] = await Promise.all([startHostile(), startS3()]);
}, 60_000);

afterAll(async () => {
  await Promise.all([hostile?.close(), s3?.stop()]);
});

/** Smaller limits than the defaults for the hostile server (the defaults are tested on ListBound below). */
const SMALL = { pages: 50, names: 2000 };

function provider(endpoint = hostile.endpoint, bucket = 'b', listLimits?: ListLimits): S3Provider {
  return new S3Provider({
    ...(listLimits ? { listLimits } : {}),
    endpoint,
    region: 'us-east-1',
    bucket,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    forcePathStyle: true,
    prefix: 'gem',
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

function reset(mode: Mode): void {
  hostile.mode = mode;
  for (const kind of Object.keys(hostile.counts)) hostile.counts[kind] = 0;
}

describe('an S3 listing that would never end', () => {
  it('is refused when the server gives the same continuation token twice', async () => {
    reset('same-token');
    const error = await refusal(provider().list());
    expect(error.code).toBe('io');
    expect(error.permanent).toBe(true);
    expect(error.message).toBe(
      `the listing of bucket b (prefix gem/) at ${hostile.endpoint} does not end: the server gave the same continuation token twice. The server is not working correctly: check it (or its S3 compatibility)`,
    );
    expect(hostile.counts['list']).toBe(2);
    expect(hostile.counts['head']).toBe(0);
  });

  it('is refused past its limit of backup names, before a stat of any', async () => {
    reset('new-names');
    const error = await refusal(provider(hostile.endpoint, 'b', SMALL).list());
    expect(error.code).toBe('io');
    expect(error.permanent).toBe(true);
    expect(error.message).toBe(
      `the listing of bucket b (prefix gem/) at ${hostile.endpoint} holds more than 2,000 backups, far more than a destination of GEM holds (a few hundred); it was not read further: check the server, or give GEM a folder of its own`,
    );
    expect(hostile.counts['list']).toBe(SMALL.names / 1000 + 1);
    expect(hostile.counts['head']).toBe(0);
  });

  it('is refused after its limit of pages that name nothing', async () => {
    reset('empty-pages');
    const error = await refusal(provider(hostile.endpoint, 'b', SMALL).list());
    expect(error.permanent).toBe(true);
    expect(error.message).toBe(
      `the listing of bucket b (prefix gem/) at ${hostile.endpoint} did not end after 50 pages, far more than a backup folder takes: check the server, or give GEM a folder of its own`,
    );
    expect(hostile.counts['list']).toBe(SMALL.pages);
  });

  it(`has by default the limits ${MAX_LIST_PAGES} pages and ${MAX_LISTED_NAMES} names (ListBound, every provider's)`, () => {
    const pages = new ListBound('here');
    for (let n = 1; n < MAX_LIST_PAGES; n++) pages.page(true);
    expect(() => pages.page(true)).toThrow(/did not end after 10,000 pages/);
    const names = new ListBound('here');
    for (let n = 0; n < MAX_LISTED_NAMES; n++) names.name();
    expect(() => names.name()).toThrow(/holds more than 100,000 backups/);
  });

  it('stops asking once its caller goes', async () => {
    reset('slow');
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 450);
    const error = await refusal(provider().list({ signal: controller.signal }));
    expect(error.code).toBe('aborted');
    const asked = hostile.counts['list']!;
    expect(asked).toBeLessThanOrEqual(6);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(hostile.counts['list']).toBe(asked);
  });

  it('of incomplete uploads (a sweep) is refused when the server repeats its markers', async () => {
    reset('same-upload-marker');
    const error = await refusal(provider().sweepTemp());
    expect(error.permanent).toBe(true);
    expect(error.message).toBe(
      `the listing of the incomplete uploads of bucket b (prefix gem/) at ${hostile.endpoint} does not end: the server gave the same continuation token twice. The server is not working correctly: check it (or its S3 compatibility)`,
    );
    expect(hostile.counts['uploads']).toBe(2);
  });
});

describe('a real S3 server', () => {
  it('still lists its backups', async () => {
    const real = provider(s3.endpoint, s3.bucket);
    const names = backupNames(0, 3);
    for (const name of names) {
      const bytes = Buffer.from(`backup ${name}`);
      await real.put(name, {
        size: bytes.length,
        open: () => Readable.toWeb(Readable.from([bytes])) as ReadableStream<Uint8Array>,
      });
    }
    const listed = await real.list();
    expect(listed.map((o) => o.name).sort()).toEqual(names.sort());
    expect(isStorageError(await refusal(real.list({ signal: AbortSignal.abort() })), 'aborted')).toBe(true);
    await real.close();
  });
});
