// Read-modify-write of one JSON object in S3 with conditional writes, so several processes may share a bucket.
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { storageUnavailable } from '../errors';

/** What one step decides: the value to answer, and the document to write (none: nothing changed). */
interface UpdateStep<T> {
  value: T;
  next?: Record<string, unknown>;
}

/** How often a write that lost a race is re-run, and how long to pause between tries. */
export interface UpdateOptions {
  attempts?: number;
  pauseMs?: number;
  /** what the update is, for the server log when it gives up */
  what?: string;
}

const ATTEMPTS = 10;
const PAUSE_MS = 20;

/**
 * Reads `key` (a missing object reads as undefined) with its ETag, runs `step` on it and, when the
 * step changes it, writes it back only if nobody wrote it meanwhile: `If-Match: <etag>`, or
 * `If-None-Match: *` when it did not exist. A write that lost the race (412, or 409 for a
 * concurrent conditional write) reads again and re-runs `step`, so `step` must have no effect
 * outside the document it returns: whatever it implies is done by the caller once this resolves.
 * After `attempts` lost races: a retryable 503 (storage_unavailable). A server that ignores the
 * conditions writes unconditionally: correct for one process per bucket only.
 */
export async function updateJsonObject<T>(
  s3: S3Client,
  bucket: string,
  key: string,
  step: (current: Record<string, unknown> | undefined) => Promise<UpdateStep<T>> | UpdateStep<T>,
  opts: UpdateOptions = {},
): Promise<T> {
  const attempts = opts.attempts ?? ATTEMPTS;
  const pauseMs = opts.pauseMs ?? PAUSE_MS;
  for (let attempt = 1; ; attempt++) {
    const current = await readJsonObject(s3, bucket, key);
    const { value, next } = await step(current?.body);
    if (next === undefined) return value;
    try {
      await s3.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: JSON.stringify(next),
          ContentType: 'application/json',
          // An existing object without an ETag (no real server does this) can only be overwritten.
          ...(current === undefined ? { IfNoneMatch: '*' } : current.etag ? { IfMatch: current.etag } : {}),
        }),
      );
      return value;
    } catch (err) {
      if (!lostRace(err)) throw err;
      if (attempt >= attempts) throw storageUnavailable(opts.what ?? `updating ${key}`, err);
      // Jittered, growing a little: two writers that collided do not collide again in lockstep.
      await new Promise((r) => setTimeout(r, pauseMs * (0.5 + Math.random()) * Math.min(attempt, 5)));
    }
  }
}

/** The object's JSON and ETag, or undefined when there is no such object. */
async function readJsonObject(
  s3: S3Client,
  bucket: string,
  key: string,
): Promise<{ body: Record<string, unknown>; etag: string | undefined } | undefined> {
  let text: string;
  let etag: string | undefined;
  try {
    const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    text = (await out.Body?.transformToString()) ?? '{}';
    etag = out.ETag;
  } catch (err) {
    const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
    if (e?.name === 'NoSuchKey' || e?.$metadata?.httpStatusCode === 404) return undefined;
    throw err;
  }
  try {
    return { body: JSON.parse(text), etag };
  } catch {
    // Never JSON.parse's message: it quotes the text around the fault (the document names uploads).
    throw new Error(`the document ${key} is damaged (not JSON)`);
  }
}

/** 412: the object changed (or appeared) since it was read; 409: another conditional write was under way. */
function lostRace(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  const status = e?.$metadata?.httpStatusCode;
  return (
    e?.name === 'PreconditionFailed' ||
    e?.name === 'ConditionalRequestConflict' ||
    status === 412 ||
    status === 409
  );
}
