/** Receiving a backup file from outside (page upload, offsite download): streamed to a temp file, checked, then listed. */
import { stat } from 'node:fs/promises';
import { type Readable, Transform } from 'node:stream';
import { stanzaKeyIds } from '../../shared/envelope';
import type { Agent } from '../agent';
import { AppError } from '../errors';
import { writeFileAtomic } from '../system/atomic-file';
import { readBackup, readHeaderOfFile } from './reader';

export interface ReceivedBackup {
  filename: string;
  size: number;
  keyIds: string[];
  /** True if we hold a key for it and read it end to end; false if it waits for its keys to be imported. */
  verified: boolean;
}

/**
 * Streams `body` into the catalog under `name`. Before the file is listed, its size must match the
 * declared one and its header must parse; if we hold one of its keys, it is also verified end to
 * end. Any failure leaves nothing behind.
 */
export async function receiveUpload(
  agent: Pick<Agent, 'catalog' | 'keyring'>,
  name: string,
  body: Readable,
  options: { declaredSize?: number; signal?: AbortSignal; onProgress?: (bytes: number) => void } = {},
): Promise<ReceivedBackup> {
  if (await agent.catalog.exists(name))
    throw new AppError('conflict', `a backup named ${name} already exists`);
  let received = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _e, cb) {
      received += chunk.length;
      options.onProgress?.(received);
      cb(null, chunk);
    },
  });
  let result: ReceivedBackup | undefined;
  await writeFileAtomic(agent.catalog.pathOf(name), [body, counter], {
    ...(options.signal ? { signal: options.signal } : {}),
    check: async (temp) => {
      const size = (await stat(temp)).size;
      if (
        options.declaredSize !== undefined &&
        Number.isFinite(options.declaredSize) &&
        size !== options.declaredSize
      ) {
        throw new AppError(
          'bad_request',
          `the upload was cut short: received ${size} of ${options.declaredSize} bytes`,
        );
      }
      const header = await readHeaderOfFile(temp);
      const keyIds = stanzaKeyIds(header.stanzas);
      const held = new Set(agent.keyring.masterKeys.map((k) => k.id));
      const verified = keyIds.some((id) => held.has(id));
      if (verified)
        await readBackup(temp, {
          keys: agent.keyring.masterKeys,
          ...(options.signal ? { signal: options.signal } : {}),
        });
      if (await agent.catalog.exists(name))
        throw new AppError('conflict', `a backup named ${name} already exists`);
      result = { filename: name, size, keyIds, verified };
    },
  }).catch((error: NodeJS.ErrnoException) => {
    if (error instanceof AppError) throw error;
    if (error.code === 'ENOSPC')
      throw new AppError('no_space', 'the disk is full: free some space and try again');
    if (error.code === 'ECONNRESET' || error.message === 'aborted') {
      throw new AppError('bad_request', 'the upload was interrupted; nothing was kept');
    }
    throw error;
  });
  if (result?.verified)
    await agent.catalog.updateRecord(name, { verifiedAt: new Date().toISOString(), verifyResult: 'ok' });
  return result!;
}
