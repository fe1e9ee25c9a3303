// Schemas of the DR cloud's request and response bodies, shared by the Worker and the agent's DR client.
import { z } from 'zod';
import { isIsoUtc } from '../envelope/header';

/** 128-bit installation id, lower-case hex. */
const InstallationId = z.string().regex(/^[0-9a-f]{32}$/, 'installationId must be 32 lower-case hex chars');
const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'sha256 must be 64 lower-case hex chars');
const IsoDate = z.string().refine(isIsoUtc, 'must be an ISO-8601 date in UTC, e.g. 2026-12-03T15:00:00.000Z');

/** An Ed25519 public JWK (no private part). */
const Ed25519PublicJwk = z
  .object({ kty: z.literal('OKP'), crv: z.literal('Ed25519'), x: z.string().regex(/^[A-Za-z0-9_-]{43}$/) })
  .loose()
  .refine((k) => !('d' in k), 'a public key must not carry its private part');

/** An X25519 public JWK (no private part). */
const X25519PublicJwk = z
  .object({
    kty: z.literal('OKP'),
    crv: z.literal('X25519'),
    x: z.string().regex(/^[A-Za-z0-9_-]{43}$/),
    kid: z.string().optional(),
  })
  .loose()
  .refine((k) => !('d' in k), 'a public key must not carry its private part');

/** `POST /v1/installations` body. */
export const EnrollRequest = z.object({ installationId: InstallationId, publicKey: Ed25519PublicJwk });
export type EnrollRequest = z.infer<typeof EnrollRequest>;

/** `POST /v1/installations` answer (201 new, 200 same key again). */
const EnrollResponse = z.object({ installationId: InstallationId, enrolled: z.literal(true) });
export type EnrollResponse = z.infer<typeof EnrollResponse>;

/** An escrow public key as published: an X25519 JWK with its `kid`. */
const EscrowPublicJwk = X25519PublicJwk.and(z.object({ kid: z.string() }));

/**
 * `GET /v1/escrow-key` answer: the current escrow public key (API.md: a JWK with `kid`), and `keys`,
 * every published one, current first (two during a rotation).
 */
export const EscrowKeysResponse = EscrowPublicJwk.and(z.object({ keys: z.array(EscrowPublicJwk).min(1) }));
export type EscrowKeysResponse = z.infer<typeof EscrowKeysResponse>;

/** What the slot holds; HEAD/GET send it as the SLOT_HEADERS response headers. */
export const SlotMetadata = z.object({
  createdAt: IsoDate,
  size: z.number().int().nonnegative(),
  sha256: Sha256Hex,
  agentVersion: z.string(),
  uploadedAt: IsoDate,
});
export type SlotMetadata = z.infer<typeof SlotMetadata>;

/** `PUT /v1/dr/backup` and `POST /v1/dr/uploads/:id/complete` answer. */
const UploadResponse = z.object({ slot: SlotMetadata });
export type UploadResponse = z.infer<typeof UploadResponse>;

/** `POST /v1/dr/uploads` body. */
export const CreateUploadRequest = z.object({
  size: z.number().int().positive(),
  /** sha256 of the whole backup as the agent computed it; R2 cannot check it for multipart (see cloud). */
  sha256: Sha256Hex,
  createdAt: IsoDate,
  agentVersion: z.string().max(64),
  /** wished part size; the cloud may adjust it (5 MiB..95 MiB) and answers the one to use */
  partSize: z.number().int().positive(),
});
export type CreateUploadRequest = z.infer<typeof CreateUploadRequest>;

/** `POST /v1/dr/uploads` answer. */
export const CreateUploadResponse = z.object({ uploadId: z.string(), partSize: z.number().int().positive() });
export type CreateUploadResponse = z.infer<typeof CreateUploadResponse>;

/** One received part. */
const UploadedPart = z.object({
  n: z.number().int().min(1).max(10000),
  size: z.number().int(),
  etag: z.string(),
});
export type UploadedPart = z.infer<typeof UploadedPart>;

/** `GET /v1/dr/uploads/:id` answer (for resuming) and `PUT .../parts/:n` answer (`{part}`). */
export const UploadStatusResponse = z.object({
  uploadId: z.string(),
  size: z.number().int(),
  partSize: z.number().int(),
  createdAt: IsoDate,
  parts: z.array(UploadedPart),
});
export type UploadStatusResponse = z.infer<typeof UploadStatusResponse>;

/** `POST /v1/recover` body. */
export const RecoverRequest = z.object({ installationId: InstallationId, recipient: X25519PublicJwk });
export type RecoverRequest = z.infer<typeof RecoverRequest>;

/** Response headers of `POST /v1/recover`; the body is the unchanged backup file. */
export const RECOVER_FILE_KEY_HEADER = 'X-Gem-File-Key';
export const RECOVER_KEYRING_HEADER = 'X-Gem-Keyring';
/** Request header naming the backup's created-at on uploads (also signed as the `bca` claim). */
export const BACKUP_CREATED_AT_HEADER = 'X-Gem-Backup-Created-At';
/** Request header naming the agent's version on single uploads. */
export const AGENT_VERSION_HEADER = 'X-Gem-Agent-Version';

/** Response headers of `HEAD`/`GET /v1/dr/backup` carrying the slot's metadata. */
export const SLOT_HEADERS = {
  createdAt: 'X-Gem-Backup-Created-At',
  size: 'X-Gem-Backup-Size',
  sha256: 'X-Gem-Backup-Sha256',
  agentVersion: 'X-Gem-Agent-Version',
  uploadedAt: 'X-Gem-Uploaded-At',
} as const;

/** The API error shape. */
export const ApiError = z.object({ error: z.object({ code: z.string(), message: z.string() }) });
export type ApiError = z.infer<typeof ApiError>;
