/** The DR cloud's API as the agent calls it: enrollment, escrow keys, signed slot and multipart requests, recovery. */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { JWK } from 'jose';
import {
  AGENT_VERSION_HEADER,
  BACKUP_CREATED_AT_HEADER,
  type CreateUploadRequest,
  CreateUploadResponse,
  EscrowKeysResponse,
  UploadStatusResponse,
} from '../../shared/api/cloud';
import { EMPTY_BODY_SHA256, SIGNATURE_SCHEME, signRequest } from '../../shared/signing';
import { AppError } from '../errors';
import type { SigningKey } from '../keys/keyring';
import { AGENT_VERSION } from '../version';
import { type CloudResponse, readSmallBody, sendRequest } from './http';

/** Deliberate faults for tests and drills (the client counts them down as they fire). */
export interface DrFaults {
  /** Upload requests (single PUT or part): let `after` through, then cut the next `times` after `afterBytes` body bytes. */
  cutUploads?: { after: number; times: number; afterBytes: number };
}

/** Whom the cloud takes a request for: the installation id and the key that signs as it. */
export interface DrIdentity {
  installationId: string;
  signingKey: SigningKey;
}

export interface DrClientOptions {
  baseUrl: string;
  /** Read at each request: a recovery changes the installation's identity. */
  identity: () => DrIdentity;
  enrollmentToken?: string;
  timeoutMs?: number;
  faults?: DrFaults;
  /** Asked before each signed request is signed; throwing refuses it (see pinnedTo). */
  beforeSigned?: () => Promise<void>;
}

/** A body to sign and send: its hash and length are known before the first byte goes. */
export interface SignedBody {
  sha256: string;
  length: number;
  open: () => Buffer | Readable;
}

/**
 * What a push refused as older than the slot's copy means, and what to do: another controller pushes as
 * this installation (two boxes recovered from it), or this one pushed a newer backup earlier.
 */
export const OLDER_BACKUP_ADVICE =
  'the cloud holds a newer backup of this installation, pushed by another controller (or by this one earlier); ' +
  'if this box replaced that controller, retire the old one (stop its agent) so that only this one pushes; ' +
  'if not, run `gem-backup dr recover --abandon` on the box that should not push (or turn Cloud DR off there: unset GEM_DR_URL)';

/** Cloud refusals become AppErrors with the cloud's code in details; the HTTP status says whose fault it is. */
async function refusal(res: CloudResponse, what: string): Promise<AppError> {
  const text = (await readSmallBody(res.body).catch(() => Buffer.alloc(0))).toString('utf8');
  let code = 'unknown';
  let message = text.slice(0, 200);
  try {
    const parsed = JSON.parse(text) as { error?: { code?: string; message?: string } };
    code = parsed.error?.code ?? code;
    message = parsed.error?.message ?? message;
  } catch {
    // not the cloud's JSON error shape: keep the raw text
  }
  const details = { cloudStatus: res.status, cloudCode: code };
  const line = `${what}: the DR cloud answered ${res.status} ${code}: ${message}`;
  if (res.status === 404) return new AppError('not_found', line, { details });
  if (code === 'older_backup')
    return new AppError('conflict', `${line}; ${OLDER_BACKUP_ADVICE}`, { details });
  if (res.status >= 500 || res.status === 429) return new AppError('dependency_down', line, { details });
  return new AppError('unprocessable', line, { details });
}

export class DrClient {
  constructor(private readonly options: DrClientOptions) {}

  get baseUrl(): string {
    return this.options.baseUrl;
  }

  /** The identity the next request is signed with. */
  identity(): DrIdentity {
    return this.options.identity();
  }

  /**
   * This client for one push: every request signed as `identity`, whatever the keyring holds by then (a
   * keys import while the push runs), and each signed request sent only once `beforeSigned` resolved.
   */
  pinnedTo(identity: DrIdentity, beforeSigned: () => Promise<void>): DrClient {
    return new DrClient({ ...this.options, identity: () => identity, beforeSigned });
  }

  /** Binds this installation's signing key to its id (201 new, 200 already bound to the same key). */
  async enroll(): Promise<void> {
    const token = this.options.enrollmentToken;
    if (!token) {
      throw new AppError(
        'unprocessable',
        'this installation is not enrolled with the DR cloud and GEM_DR_ENROLLMENT_TOKEN is not set',
      );
    }
    const { installationId, signingKey } = this.options.identity();
    const body = Buffer.from(JSON.stringify({ installationId, publicKey: signingKey.publicJwk }));
    const res = await this.send('/v1/installations', 'enrolling', {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        'content-length': String(body.length),
      },
      body,
    });
    if (res.status !== 201 && res.status !== 200) throw await refusal(res, 'enrolling');
    await readSmallBody(res.body);
  }

  /** The published escrow public keys, current first. */
  async escrowKeys(): Promise<EscrowKeysResponse['keys']> {
    const res = await this.send('/v1/escrow-key', 'fetching the escrow key', { method: 'GET', headers: {} });
    if (res.status !== 200) throw await refusal(res, 'fetching the escrow key');
    return EscrowKeysResponse.parse(JSON.parse((await readSmallBody(res.body)).toString('utf8'))).keys;
  }

  /** Single-request upload into the slot. */
  async putBackup(body: SignedBody, createdAt: string, signal?: AbortSignal): Promise<void> {
    const res = await this.signed('PUT', '/v1/dr/backup', body, {
      backupCreatedAt: createdAt,
      upload: true,
      signal,
      headers: { [BACKUP_CREATED_AT_HEADER]: createdAt, [AGENT_VERSION_HEADER]: AGENT_VERSION },
    });
    await this.expect(res, [201], 'uploading the backup');
  }

  async createUpload(request: CreateUploadRequest): Promise<CreateUploadResponse> {
    const res = await this.signed('POST', '/v1/dr/uploads', jsonBody(request), {
      headers: { 'content-type': 'application/json' },
    });
    const body = await this.expect(res, [201], 'starting a multipart upload');
    return CreateUploadResponse.parse(JSON.parse(body.toString('utf8')));
  }

  async putPart(uploadId: string, n: number, body: SignedBody, signal?: AbortSignal): Promise<void> {
    const res = await this.signed('PUT', `/v1/dr/uploads/${uploadId}/parts/${n}`, body, {
      upload: true,
      signal,
    });
    await this.expect(res, [200, 201], `uploading part ${n}`);
  }

  /** The parts the cloud holds for an upload; null when the upload is gone (completed, aborted, expired). */
  async uploadStatus(uploadId: string): Promise<UploadStatusResponse | null> {
    const res = await this.signed('GET', `/v1/dr/uploads/${uploadId}`, emptyBody());
    if (res.status === 404) {
      await readSmallBody(res.body).catch(() => {});
      return null;
    }
    const body = await this.expect(res, [200], 'asking for the upload status');
    return UploadStatusResponse.parse(JSON.parse(body.toString('utf8')));
  }

  /** Completes the upload; `signal` lets an opt-out stop a completion that has not been sent yet. */
  async completeUpload(uploadId: string, signal?: AbortSignal): Promise<void> {
    const res = await this.signed('POST', `/v1/dr/uploads/${uploadId}/complete`, emptyBody(), { signal });
    await this.expect(res, [200, 201], 'completing the multipart upload');
  }

  async abortUpload(uploadId: string): Promise<void> {
    const res = await this.signed('DELETE', `/v1/dr/uploads/${uploadId}`, emptyBody());
    if (res.status === 404) return void (await readSmallBody(res.body).catch(() => {}));
    await this.expect(res, [200], 'aborting the multipart upload');
  }

  /** Opt-out: deletes the slot. True if there was a backup to delete. */
  async deleteSlot(): Promise<boolean> {
    const res = await this.signed('DELETE', '/v1/dr/backup', emptyBody());
    const body = await this.expect(res, [200], 'deleting the cloud backup');
    return (JSON.parse(body.toString('utf8')) as { deleted?: boolean }).deleted === true;
  }

  /** Recovery: the response streams the backup file; its headers carry the JWEs to `recipient`. */
  async recover(installationId: string, recipient: JWK, signal?: AbortSignal): Promise<CloudResponse> {
    const body = Buffer.from(JSON.stringify({ installationId, recipient }));
    const res = await this.send(
      '/v1/recover',
      'recovering',
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': String(body.length) },
        body,
      },
      signal,
    );
    if (res.status !== 200) throw await refusal(res, 'recovering');
    return res;
  }

  private async signed(
    method: string,
    path: string,
    body: SignedBody,
    extra: {
      backupCreatedAt?: string;
      headers?: Record<string, string>;
      upload?: boolean;
      signal?: AbortSignal | undefined;
    } = {},
  ): Promise<CloudResponse> {
    // Counted before the signing wait, so concurrent requests meet the faults in the order they were made.
    let cutAfterBytes: number | undefined;
    const cut = extra.upload ? this.options.faults?.cutUploads : undefined;
    if (cut) {
      if (cut.after > 0) cut.after--;
      else if (cut.times > 0) {
        cut.times--;
        cutAfterBytes = cut.afterBytes;
      }
    }
    await this.options.beforeSigned?.();
    const { installationId, signingKey } = this.options.identity();
    const token = await signRequest({
      installationId,
      method,
      path,
      bodySha256: body.sha256,
      bodyLength: body.length,
      privateJwk: signingKey.privateJwk as JWK,
      ...(extra.backupCreatedAt ? { backupCreatedAt: extra.backupCreatedAt } : {}),
    });
    const headers: Record<string, string> = {
      authorization: `${SIGNATURE_SCHEME} ${token}`,
      ...extra.headers,
    };
    if (body.length > 0) headers['content-length'] = String(body.length);
    return this.send(
      path,
      `${method} ${path}`,
      {
        method,
        headers,
        ...(body.length > 0 ? { body: body.open() } : {}),
        ...(cutAfterBytes !== undefined ? { cutAfterBytes } : {}),
      },
      extra.signal,
    );
  }

  private async send(
    path: string,
    what: string,
    request: {
      method: string;
      headers: Record<string, string>;
      body?: Buffer | Readable;
      cutAfterBytes?: number;
    },
    signal?: AbortSignal,
  ): Promise<CloudResponse> {
    const url = new URL(`${this.options.baseUrl.replace(/\/+$/, '')}${path}`);
    try {
      return await sendRequest(url, {
        ...request,
        timeoutMs: this.options.timeoutMs ?? 60_000,
        ...(signal ? { signal } : {}),
      });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new AppError(
        'dependency_down',
        `${what}: the DR cloud at ${url.origin} is unreachable: ${reason}`,
        {
          cause: error,
        },
      );
    }
  }

  private async expect(res: CloudResponse, ok: number[], what: string): Promise<Buffer> {
    if (!ok.includes(res.status)) throw await refusal(res, what);
    return readSmallBody(res.body);
  }
}

function emptyBody(): SignedBody {
  return { sha256: EMPTY_BODY_SHA256, length: 0, open: () => Buffer.alloc(0) };
}

function jsonBody(value: unknown): SignedBody {
  const bytes = Buffer.from(JSON.stringify(value));
  return {
    sha256: createHash('sha256').update(bytes).digest('hex'),
    length: bytes.length,
    open: () => bytes,
  };
}
