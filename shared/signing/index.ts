// Signed agent → cloud requests: a compact EdDSA JWS binding installation, method, path, body and time.
import { base64url, CompactSign, compactVerify, decodeProtectedHeader, importJWK, type JWK } from 'jose';
import { isIsoUtc } from '../envelope/header';

/** The JWS `typ` every request signature carries. */
export const REQUEST_TOKEN_TYPE = 'gem-request+jwt';
/** The Authorization scheme: `Authorization: GEM-Signature <jws>`. */
export const SIGNATURE_SCHEME = 'GEM-Signature';
/** Hex sha256 of zero bytes: the `bsh` of a request without a body. */
export const EMPTY_BODY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
/** How far a request's issued-at may be from the server's clock, either way. */
export const DEFAULT_MAX_SKEW_SECONDS = 300;

/** The claims of a request signature. */
export interface RequestClaims {
  /** installation id (32 hex) */
  iss: string;
  /** HTTP method, upper case */
  mth: string;
  /** URL path, without query */
  pth: string;
  /** hex sha256 of the body */
  bsh: string;
  /** body length in bytes */
  bln: number;
  /** issued at, seconds since the epoch */
  iat: number;
  /** unique id of this request; the cloud refuses to see it twice */
  jti: string;
  /** backup created-at (ISO-8601), for uploads: lets the cloud refuse an older backup over a newer one */
  bca?: string;
}

/** Why a signature was refused; `code` is stable, the message is safe to return to the caller. */
export class SignatureError extends Error {
  constructor(
    readonly code:
      | 'malformed'
      | 'bad_algorithm'
      | 'bad_signature'
      | 'wrong_method'
      | 'wrong_path'
      | 'wrong_body'
      | 'expired'
      | 'from_the_future',
    message: string,
  ) {
    super(message);
    this.name = 'SignatureError';
  }
}

export interface SignRequestOptions {
  installationId: string;
  method: string;
  path: string;
  bodySha256: string;
  bodyLength: number;
  /** the installation's Ed25519 private key as a JWK (kty OKP, crv Ed25519, d) */
  privateJwk: JWK;
  /** backup created-at, signed as `bca` on uploads */
  backupCreatedAt?: string;
  /** clock, for tests; defaults to now */
  now?: Date;
  /** request id; defaults to 16 random bytes */
  jti?: string;
}

/** Signs one request; the result goes in `Authorization: GEM-Signature <result>`. */
export async function signRequest(opts: SignRequestOptions): Promise<string> {
  const claims: RequestClaims = {
    iss: opts.installationId,
    mth: opts.method.toUpperCase(),
    pth: opts.path,
    bsh: opts.bodySha256.toLowerCase(),
    bln: opts.bodyLength,
    iat: Math.floor((opts.now ?? new Date()).getTime() / 1000),
    jti: opts.jti ?? randomId(),
  };
  if (opts.backupCreatedAt !== undefined) claims.bca = opts.backupCreatedAt;
  const key = await importJWK({ ...opts.privateJwk, alg: 'EdDSA' }, 'EdDSA');
  return new CompactSign(new TextEncoder().encode(JSON.stringify(claims)))
    .setProtectedHeader({ alg: 'EdDSA', typ: REQUEST_TOKEN_TYPE })
    .sign(key);
}

export interface VerifyRequestOptions {
  /** the installation's enrolled Ed25519 public JWK */
  publicJwk: JWK;
  method: string;
  path: string;
  /** when given, the signed body hash must equal it */
  bodySha256?: string;
  /** when given, the signed body length must equal it */
  bodyLength?: number;
  now: Date;
  maxSkewSeconds?: number;
}

/**
 * Verifies a request signature against the enrolled key and the request actually received.
 * Only EdDSA is accepted: `none`, HS256 keyed with the public key, and everything else are refused
 * before any key is used. A future issued-at refuses this request only; nothing is remembered.
 */
export async function verifyRequest(token: string, opts: VerifyRequestOptions): Promise<RequestClaims> {
  const header = safeHeader(token);
  if (header.alg !== 'EdDSA' || header.typ !== REQUEST_TOKEN_TYPE || header.crit !== undefined) {
    throw new SignatureError('bad_algorithm', 'only EdDSA request signatures are accepted');
  }
  if (opts.publicJwk.kty !== 'OKP' || opts.publicJwk.crv !== 'Ed25519' || opts.publicJwk.d !== undefined) {
    throw new SignatureError('bad_signature', 'the enrolled key is not an Ed25519 public key');
  }
  let payload: Uint8Array;
  try {
    const key = await importJWK({ kty: 'OKP', crv: 'Ed25519', x: opts.publicJwk.x, alg: 'EdDSA' }, 'EdDSA');
    ({ payload } = await compactVerify(token, key, { algorithms: ['EdDSA'] }));
  } catch {
    throw new SignatureError('bad_signature', 'the request signature does not verify');
  }
  const claims = parseClaims(payload);
  if (claims.mth !== opts.method.toUpperCase()) {
    throw new SignatureError('wrong_method', 'the signature is for another method');
  }
  if (claims.pth !== opts.path) throw new SignatureError('wrong_path', 'the signature is for another path');
  if (opts.bodySha256 !== undefined && claims.bsh !== opts.bodySha256.toLowerCase()) {
    throw new SignatureError('wrong_body', 'the body does not match its signature');
  }
  if (opts.bodyLength !== undefined && claims.bln !== opts.bodyLength) {
    throw new SignatureError('wrong_body', 'the body length does not match its signature');
  }
  const skew = opts.maxSkewSeconds ?? DEFAULT_MAX_SKEW_SECONDS;
  const nowSeconds = Math.floor(opts.now.getTime() / 1000);
  if (claims.iat < nowSeconds - skew)
    throw new SignatureError('expired', 'the request signature has expired');
  if (claims.iat > nowSeconds + skew) {
    throw new SignatureError('from_the_future', 'the request was signed in the future; check the clock');
  }
  return claims;
}

/**
 * Reads the claims without verifying anything: only to find which installation's key to verify with.
 * Never trust the result before verifyRequest has accepted the same token.
 */
export function decodeUnverified(token: string): RequestClaims {
  safeHeader(token);
  try {
    return parseClaims(base64url.decode(token.split('.')[1] ?? ''));
  } catch (err) {
    if (err instanceof SignatureError) throw err;
    throw new SignatureError('malformed', 'the request signature is not a compact JWS');
  }
}

/** The token from an `Authorization: GEM-Signature <jws>` header, or null when there is none. */
export function tokenFromAuthorization(header: string | null | undefined): string | null {
  if (!header) return null;
  const match = /^GEM-Signature\s+([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)\s*$/.exec(header);
  return match ? match[1]! : null;
}

/** Hex sha256 of a byte array (for small bodies; large ones are hashed by the caller as they stream). */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>);
  return toHex(new Uint8Array(digest));
}

/** Lower-case hex of bytes. */
export function toHex(bytes: Uint8Array): string {
  let out = '';
  for (const b of bytes) out += b.toString(16).padStart(2, '0');
  return out;
}

function randomId(): string {
  return toHex(crypto.getRandomValues(new Uint8Array(16)));
}

function safeHeader(token: string): { alg?: unknown; typ?: unknown; crit?: unknown } {
  if (typeof token !== 'string' || token.split('.').length !== 3) {
    throw new SignatureError('malformed', 'the request signature is not a compact JWS');
  }
  try {
    return decodeProtectedHeader(token) as { alg?: unknown; typ?: unknown; crit?: unknown };
  } catch {
    throw new SignatureError('malformed', 'the request signature is not a compact JWS');
  }
}

function parseClaims(payload: Uint8Array): RequestClaims {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(payload));
  } catch {
    throw new SignatureError('malformed', 'the request signature claims are not JSON');
  }
  const c = raw as Record<string, unknown>;
  const ok =
    typeof c === 'object' &&
    c !== null &&
    typeof c.iss === 'string' &&
    /^[0-9a-f]{32}$/.test(c.iss) &&
    typeof c.mth === 'string' &&
    typeof c.pth === 'string' &&
    c.pth.startsWith('/') &&
    typeof c.bsh === 'string' &&
    /^[0-9a-f]{64}$/.test(c.bsh) &&
    Number.isSafeInteger(c.bln) &&
    (c.bln as number) >= 0 &&
    Number.isSafeInteger(c.iat) &&
    typeof c.jti === 'string' &&
    /^[A-Za-z0-9_-]{16,128}$/.test(c.jti) &&
    (c.bca === undefined || isIsoUtc(c.bca));
  if (!ok) throw new SignatureError('malformed', 'the request signature claims are incomplete');
  return c as unknown as RequestClaims;
}
