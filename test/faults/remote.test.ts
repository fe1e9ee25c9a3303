/** Remote faults: the SFTP, SMB and S3 servers frozen at 10 %, 50 % and 99 % of an upload: no partial object under a final name; the next sync completes and leaves no temp file; nor does a sync whose upload is retried after a moment's freeze. */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { createLogger } from '../../agent/log';
import { offsiteServiceFor, s3Options, testConnection } from '../../agent/offsite/index';
import { withRetry } from '../../agent/providers/retry';
import { S3Provider } from '../../agent/providers/s3';
import { runProcess } from '../../agent/system/spawn';
import { backupNow, call, FAST, filenameOf, runJob } from '../offsite/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { type SmbdService, startSmbd } from '../services/smbd';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { faultReport } from './report';

const report = faultReport('remote', 'server freezes');

/**
 * The offsite helpers' fast options, shorter still: a frozen upload is given up after 1.5 s without a
 * byte moved (3 s there; 5 min by default) and the retry's sign-in after 1 s (SFTP) or 2 s (smbclient's
 * -t), so each freeze costs a few seconds of waiting instead of seven. The retry is kept (2 attempts).
 * An S3 upload frozen once all its bytes are sent waits for the answer instead (answerTimeoutMs, 10 min by
 * default): s3rver answers a part once it is stored, so a freeze late in an upload can land there. The S3
 * provider's own stall limit (1 s) is below the transfer's, so a freeze while bytes are still to be sent
 * ends at the provider's guard, with its message; its parts are 5 MiB, so the 30 MB backup has six, four
 * in flight at a time.
 */
const FREEZE: typeof FAST = {
  ...FAST,
  stallTimeoutMs: 1500,
  providerOverrides: {
    sftp: { timeoutMs: 1000 },
    smb: { timeoutSeconds: 2 },
    s3: { answerTimeoutMs: 3000, stallTimeoutMs: 1000, partSize: 5 * 1024 * 1024 },
  },
};

let pg: TestPostgres;
let sshd: SshdService;
let s3: S3Service;
let smbd: SmbdService;
type Kind = 'sftp' | 'smb' | 's3';
const KINDS: Kind[] = ['sftp', 'smb', 's3'];
/**
 * One agent (its own data dir, database and 30 MB backup) per destination, so that the three
 * destinations' freezes run side by side: a sync holds its agent's job lock, and each case spends most of
 * its time waiting out the frozen server's limits.
 */
let agents: Record<Kind, { t: TestAgent; name: string }>;
/**
 * The transfer retries each agent has logged. The job shows none (its phase and progress stay as the
 * frozen attempt left them), and the moment's freeze must end once its retry has started: frozen
 * longer than the retry's sign-in limit, the retry fails too.
 */
const retries: Record<Kind, number> = { sftp: 0, smb: 0, s3: 0 };
/** The S3 destination's agent, for the frozen-S3 tests after the freezes. */
let t: TestAgent;

/** Every file name under `dir`, recursively (the raw view of the server's storage). */
async function rawNames(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (entry.isDirectory()) out.push(...(await rawNames(join(dir, entry.name))));
    else out.push(entry.name);
  }
  return out;
}

/** The ids of the multipart uploads s3rver holds (a folder each, made when the upload is started). */
async function multipartUploads(): Promise<string[]> {
  return readdir(join(s3.root, s3.bucket, '._S3rver_uploads')).catch(() => [] as string[]);
}

/** Bytes of the SMB provider's temp files on the share (an upload in flight). */
async function smbTempBytes(): Promise<number> {
  const dir = join(smbd.root, 'faults');
  let bytes = 0;
  for (const entry of await readdir(dir).catch(() => [] as string[])) {
    if (entry.startsWith('.tmp-')) bytes += (await stat(join(dir, entry)).catch(() => undefined))?.size ?? 0;
  }
  return bytes;
}

let s3Pid: number | undefined;
/**
 * s3rver has no pause: SIGSTOP the process listening on its port, as a hung server. Looked up once, so
 * that a freeze is one signal (s3rver takes megabytes in the time `ss` takes to run).
 */
async function s3Signal(signal: 'SIGSTOP' | 'SIGCONT'): Promise<void> {
  if (s3Pid === undefined) {
    const port = new URL(s3.endpoint).port;
    const { stdout } = await runProcess('ss', ['-ltnpH', `sport = :${port}`]);
    const pid = Number(/pid=(\d+)/.exec(stdout)?.[1]);
    if (!pid)
      throw new Error(`no process listens on ${port} (ss from the iproute2 package is needed): ${stdout}`);
    s3Pid = pid;
  }
  process.kill(s3Pid, signal);
}

const destinations = {
  sftp: {
    settings: () => ({
      enabled: true,
      host: sshd.host,
      port: sshd.port,
      username: sshd.passwordUser.username,
      remotePath: 'faults',
      auth: { password: sshd.passwordUser.password },
    }),
    raw: () => rawNames(join(sshd.root, 'faults')),
    /** The bytes stored under `object` (undefined if there is none). */
    bytesOf: (object: string) => readFile(join(sshd.root, 'faults', object)).catch(() => undefined),
    /** Temp files the frozen attempts left; the next sync must have swept them. */
    leftovers: async () => (await rawNames(join(sshd.root, 'faults'))).filter((n) => n.startsWith('.tmp-')),
    freeze: async () => sshd.pause(),
    thaw: async () => sshd.resume(),
  },
  smb: {
    settings: () => ({
      enabled: true,
      host: smbd.host,
      port: smbd.port,
      share: smbd.share,
      username: smbd.username,
      password: smbd.password,
      remotePath: '/faults/',
    }),
    raw: () => rawNames(join(smbd.root, 'faults')),
    bytesOf: (object: string) => readFile(join(smbd.root, 'faults', object)).catch(() => undefined),
    leftovers: async () => (await rawNames(join(smbd.root, 'faults'))).filter((n) => n.startsWith('.tmp-')),
    freeze: async () => smbd.pause(),
    thaw: async () => smbd.resume(),
  },
  s3: {
    settings: () => ({
      enabled: true,
      provider: 'minio',
      endpoint: s3.endpoint,
      region: s3.region,
      bucket: s3.bucket,
      accessKeyId: s3.accessKeyId,
      secretAccessKey: s3.secretAccessKey,
    }),
    raw: () => rawNames(s3.root),
    // s3rver keeps objects in its own layout: the listing's size tells a whole object from a cut one.
    bytesOf: async (_object: string): Promise<Buffer | undefined> => undefined,
    // s3rver implements neither ListMultipartUploads nor AbortMultipartUpload, so the parts of the frozen
    // attempts stay in its store whatever we do; the sweep is checked against moto in test/offsite/sweep.test.ts.
    leftovers: async (): Promise<string[]> => [],
    freeze: () => s3Signal('SIGSTOP'),
    thaw: () => s3Signal('SIGCONT'),
  },
} as const;

beforeAll(async () => {
  ({ pg, sshd, s3, smbd } = await startAll({
    pg: startPostgres,
    sshd: startSshd,
    s3: startS3,
    smbd: startSmbd,
  }));
  const started = await Promise.all(
    KINDS.map(async (kind) => {
      const agent = await startTestAgent(pg, {
        modules: [offsiteModule],
        log: createLogger({
          level: 'warn',
          write: (line) => {
            if (line.includes('"a transfer failed and is retried"')) retries[kind]++;
          },
        }),
      });
      offsiteServiceFor(agent.agent, FREEZE);
      // About 30 MB that no compression shrinks, so the upload takes a while: 28 000 rows of 1 KiB of
      // random bytes, read by the server from /dev/urandom (gen_random_uuid() 64 times a row took 4.5 s).
      await withSql(agent.agent.databaseUrl, (sql) =>
        sql.unsafe(
          `create table noise as select g as id, pg_read_binary_file('/dev/urandom', 0, 1024) as data from generate_series(1, 28000) g`,
        ),
      );
      const name = filenameOf(await backupNow(agent));
      await agent.agent.settings.update({ offsite: { [kind]: destinations[kind].settings() } as never });
      return [kind, { t: agent, name }] as const;
    }),
  );
  agents = Object.fromEntries(started) as typeof agents;
  t = agents.s3.t;
});

afterAll(async () => {
  report.print();
  sshd?.resume();
  smbd?.resume();
  await s3Signal('SIGCONT').catch(() => {});
  await Promise.all(Object.values(agents ?? {}).map((a) => a.t.close()));
  await Promise.all([pg?.stop(), sshd?.stop(), s3?.stop(), smbd?.stop()]);
});

/** Each destination's tests in the order they are declared: a test waits for the one before it. */
const previous: Partial<Record<Kind, Promise<void>>> = {};
/** `test`, run once `kind`'s test declared before it has ended (each one freezes that server). */
function inTurn(kind: Kind, test: () => Promise<void>): () => Promise<void> {
  const before = previous[kind] ?? Promise.resolve();
  let finished: () => void = () => {};
  previous[kind] = new Promise<void>((resolve) => {
    finished = resolve;
  });
  return async () => {
    await before;
    try {
      await test();
    } finally {
      finished();
    }
  };
}

// The three destinations side by side (each on its own agent and server), a destination's three cases one
// after another; the frozen S3 server's own tests after S3's cases, beside the other two destinations'.
describe.concurrent('a destination that stops answering mid-upload', () => {
  for (const at of [0.1, 0.5, 0.99]) {
    for (const kind of KINDS) {
      it(
        kind === 's3' && at === S3_MID_SEND
          ? 's3 frozen as its upload starts, its parts still to send (progress counts answered parts: 99 % is never shown mid-upload): ended by the stall guard, no partial object, the next sync completes'
          : `${kind} frozen at ${at * 100} %: no partial object under the final name, the next sync completes`,
        inTurn(kind, () => freezeCase(kind, at)),
      );
    }
  }

  it(
    'sftp stops answering for a moment during a sync: the retry completes it, and the attempt given up leaves no temp file',
    inTurn('sftp', async () => {
      const { t, name } = agents.sftp;
      const d = destinations.sftp;
      const local = await readFile(t.agent.catalog.pathOf(name));
      // Whatever copy an earlier case left is removed, so that this sync uploads.
      await call(t, 'DELETE', `/offsite/sftp/backups/${name}`);
      const before = retries.sftp;
      // The attempt given up removes its own temp file, for as long as a sign-in may take (1 s): the
      // freeze must outlast that, yet end before the retry's sign-in gives up. So the retry waits 2-4 s
      // here (25-50 ms otherwise), and the server answers again 1.8 s after the retry is announced.
      offsiteServiceFor(t.agent, { ...FREEZE, retry: { attempts: 2, baseDelayMs: 4000, maxDelayMs: 4000 } });
      const job = await oneSync().finally(() => offsiteServiceFor(t.agent, FREEZE));
      expect(retries.sftp, 'no retry: the freeze missed the upload').toBeGreaterThan(before);
      expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
      expect((job.result as { uploaded: string[] }).uploaded).toEqual([name]);
      // Buffer.equals: toEqual walks a Buffer's entries one by one (out of memory on 30 MB).
      expect((await d.bytesOf(name))?.equals(local)).toBe(true);
      expect(await d.leftovers(), 'the temp file of the attempt given up').toEqual([]);
      expect((await call(t, 'DELETE', `/offsite/sftp/backups/${name}`)).status).toBeLessThan(300);

      async function oneSync() {
        const res = await call(t, 'POST', '/offsite/sftp/sync');
        expect(res.status).toBe(202);
        const id = res.body.jobId as string;
        const ended = () => t.agent.jobs.get(id)!.endedAt !== undefined;
        const until = async (done: () => boolean) => {
          while (!ended() && !done()) await new Promise((r) => setTimeout(r, 2));
        };
        await until(() => {
          const job = t.agent.jobs.get(id)!;
          return (
            job.phase.startsWith('uploading') && job.bytesTotal > 0 && job.bytesDone >= 0.1 * job.bytesTotal
          );
        });
        await d.freeze();
        try {
          // Frozen until the stall guard gives the attempt up and its retry is announced, then 1.8 s more.
          await until(() => retries.sftp > before);
          if (retries.sftp > before) await new Promise((r) => setTimeout(r, 1800));
        } finally {
          await d.thaw();
        }
        return t.agent.jobs.waitFor(id);
      }
    }),
  );

  describe('a frozen S3 server: list, Test Connection and cancel end', () => {
    /**
     * Short limits instead of the defaults (20 s connect, 60 s idle and per metadata request): a frozen
     * server never answers, so any limit ends the wait (requestTimeoutMs ends all of a request's attempts).
     */
    const SHORT = { connectTimeoutMs: 150, idleTimeoutMs: 250, requestTimeoutMs: 250 };

    async function frozen<T>(run: () => Promise<T>): Promise<T> {
      await destinations.s3.freeze();
      try {
        return await run();
      } finally {
        await destinations.s3.thaw();
      }
    }

    it(
      'list() and Test Connection end as unreachable after the shortened timeouts',
      inTurn('s3', async () => {
        const section = { ...t.agent.settings.get().offsite.s3 };
        const provider = new S3Provider({ ...s3Options(section), ...SHORT });
        try {
          const listed = await frozen(() =>
            provider.list().then(
              () => 'listed',
              (e) => e.code,
            ),
          );
          expect(listed).toBe('unreachable');
          const tested = await frozen(() => testConnection('s3', section, SHORT));
          expect(tested).toMatchObject({ ok: false, details: { code: 'unreachable', step: 'connect' } });
          expect(tested.message).toContain('Cannot reach the storage');
        } finally {
          await provider.close();
        }
      }),
    );

    it(
      'a cancelled list ends as aborted (the default timeouts still running)',
      inTurn('s3', async () => {
        const provider = new S3Provider(s3Options({ ...t.agent.settings.get().offsite.s3 }));
        const controller = new AbortController();
        try {
          const outcome = await frozen(() => {
            const listing = withRetry(() => provider.list({ signal: controller.signal }), {
              signal: controller.signal,
            }).then(
              () => 'listed',
              (e) => e.code,
            );
            setTimeout(() => controller.abort(), 300);
            return listing;
          });
          expect(outcome).toBe('aborted');
        } finally {
          await provider.close();
        }
      }),
    );

    it(
      'a Sync Now cancelled while the server is frozen ends, and frees the lock for a backup',
      inTurn('s3', async () => {
        const outcome = await frozen(async () => {
          const res = await call(t, 'POST', '/offsite/s3/sync');
          expect(res.status).toBe(202);
          const id = res.body.jobId as string;
          await new Promise((r) => setTimeout(r, 300));
          t.agent.jobs.cancel(id);
          return t.agent.jobs.waitFor(id);
        });
        expect(outcome.state).toBe('cancelled');
        const backup = await call(t, 'POST', '/backups');
        expect(backup.status, JSON.stringify(backup.body)).toBe(202);
        expect((await t.agent.jobs.waitFor(backup.body.jobId)).state).toBe('succeeded');
      }),
    );
  });
});

/**
 * S3's 99 % case. Its progress counts only the parts the server answered (and the whole size once the
 * Complete is), so 99 % is never shown while bytes are being sent and a freeze there would land after the
 * upload. s3rver is frozen instead as soon as this upload is started (its folder appears): no part can be
 * answered, so the fifth and sixth parts never start and bytes are still to send. (Frozen once 2 MiB of
 * its parts were stored, the freeze came too late in 3 runs of 4: all six parts had been sent.)
 */
const S3_MID_SEND = 0.99;

/** One case: `kind`'s server frozen once `at` of the upload is done; the checks; the next sync; cleanup. */
async function freezeCase(kind: Kind, at: number): Promise<void> {
  const { t, name } = agents[kind];
  const d = destinations[kind];
  const local = await readFile(t.agent.catalog.pathOf(name));
  const midSend = kind === 's3' && at === S3_MID_SEND;
  // The uploads s3rver holds already: those of earlier frozen attempts stay (it cannot abort them).
  const before = new Set(midSend ? await multipartUploads() : []);
  const res = await call(t, 'POST', `/offsite/${kind}/sync`);
  expect(res.status).toBe(202);
  const id = res.body.jobId as string;
  for (;;) {
    const job = t.agent.jobs.get(id)!;
    if (job.endedAt) break;
    if (midSend) {
      if ((await multipartUploads()).some((id) => !before.has(id))) break;
    } else if (job.phase?.startsWith('uploading') && job.bytesTotal && job.bytesDone / job.bytesTotal >= at)
      break;
    // The SMB provider reports what smbclient has read every 250 ms, so a fast upload shows no
    // middle in its progress: the share's temp file tells how far the upload is.
    if (kind === 'smb' && (await smbTempBytes()) >= at * local.length) break;
    await new Promise((r) => setTimeout(r, 2));
  }
  await d.freeze();
  report.inject();
  let job: Awaited<ReturnType<typeof t.agent.jobs.waitFor>>;
  try {
    job = await t.agent.jobs.waitFor(id);
    // Checked while the server is still frozen: whatever is there now is what a crash would leave.
  } finally {
    await d.thaw();
  }
  const raw = await d.raw();
  const listing = (await call(t, 'GET', `/offsite/${kind}/backups`)).body as {
    backups: Array<{ filename: string; size: number }>;
  };
  const listed = JSON.stringify(listing);
  // An object under the final name after a failed job is partial unless it is the whole backup:
  // a freeze after the checked rename loses only the answer (the job fails, the copy is whole).
  const stored = await d.bytesOf(name);
  const whole = stored
    ? stored.equals(local)
    : listing.backups.find((b) => b.filename === name)?.size === local.length;
  const partial =
    job.state !== 'succeeded' &&
    (((raw.includes(name) || listed.includes(name)) && !whole) ||
      raw.some((n) => n.startsWith(`${name}.`) && !n.includes('tmp')));
  // The next sync under the product's own limits (20 s to sign in, 5 min without a byte moved): the
  // shortened ones are there to end the frozen attempt quickly, and on a busy machine a sign-in to the
  // just-thawed server can take more than the 1 s they allow, failing a sync that a user's would finish.
  offsiteServiceFor(t.agent, { retry: FREEZE.retry });
  const next = await runJob(t, 'POST', `/offsite/${kind}/sync`).finally(() =>
    offsiteServiceFor(t.agent, FREEZE),
  );
  const after = JSON.stringify((await call(t, 'GET', `/offsite/${kind}/backups`)).body);
  const leftovers = await d.leftovers();
  const ok = !partial && next.state === 'succeeded' && after.includes(name) && leftovers.length === 0;
  report.tried(
    ok,
    `${kind} at ${at}: first ${job.state}, partial ${partial}, next ${next.state}, leftovers ${leftovers.length}`,
  );
  console.log(
    `${kind} frozen at ${at * 100} %: first sync ${job.state} ${job.error?.code ?? ''}, raw ${raw.join(', ')}`,
  );
  expect(partial, raw.join(', ')).toBe(false);
  if (midSend) {
    // What the user sees: the job failed at the provider's stall limit, naming the endpoint.
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('dependency_down');
    expect(job.error?.message).toBe(
      `1 transfer failed; nothing was pruned. ${name}: The storage at ${s3.endpoint} stopped answering during the upload of ${name}: it took no data for 1 s, so the upload was given up (nothing was stored under its name). Check that the server is running and reachable; the next sync or backup uploads it again.`,
    );
  }
  expect(next.state, JSON.stringify(next.error)).toBe('succeeded');
  expect(after).toContain(name);
  expect(
    leftovers,
    `temp files left after the next sync (the frozen attempt's: ${raw.filter((n) => n.startsWith('.tmp-')).join(', ') || 'none'})`,
  ).toEqual([]);
  // Start the next case from an empty destination.
  expect((await call(t, 'DELETE', `/offsite/${kind}/backups/${name}`)).status).toBeLessThan(300);
}
