// Verifies the GEM-Signature of a request and refuses replays, before any body is read.
import type { Context, MiddlewareHandler } from 'hono';
import {
  DEFAULT_MAX_SKEW_SECONDS,
  decodeUnverified,
  type RequestClaims,
  SignatureError,
  tokenFromAuthorization,
  verifyRequest,
} from '../../shared/signing';
import type { CloudDeps } from '../deps';
import { CloudError } from '../errors';
import type { InstallationStateApi } from '../state/ledger';
import { installationHash } from './installation-hash';

/** What a verified request carries to its route. */
export interface SignedRequest {
  claims: RequestClaims;
  installationHash: string;
  state: InstallationStateApi;
}

export type CloudVariables = { deps: CloudDeps; signed: SignedRequest };

/**
 * Checks the signature against the installation's enrolled key, the method, the path, the time
 * window and the declared body length, then records the request id so it can never be used again.
 * Every refusal is the same 401 shape whatever the reason, except a body length that differs (400).
 */
export const requireSignature: MiddlewareHandler<{ Variables: CloudVariables }> = async (c, next) => {
  const url = new URL(c.req.url);
  // Only the path is signed, so nothing after it is accepted: no route can come to read unsigned input.
  if (url.search !== '') throw new CloudError(400, 'bad_request', 'a signed request carries no query string');
  const token = tokenFromAuthorization(c.req.header('authorization'));
  if (!token) throw new CloudError(401, 'unauthorized', 'a GEM-Signature is required');
  const claims = decodeUnverified(token);
  const hash = await installationHash(claims.iss);
  const state = c.get('deps').installation(hash);
  const publicJwk = await state.publicKey();
  if (!publicJwk) throw new SignatureError('bad_signature', 'the request signature does not verify');
  const verified = await verifyRequest(token, {
    publicJwk,
    method: c.req.method,
    path: url.pathname,
    now: new Date(),
    maxSkewSeconds: DEFAULT_MAX_SKEW_SECONDS,
  });
  if (declaredLength(c) !== verified.bln) {
    throw new CloudError(400, 'body_mismatch', 'the body length does not match its signature');
  }
  // Remembered until the time window would refuse the request anyway.
  const expiresAtMs = (verified.iat + DEFAULT_MAX_SKEW_SECONDS + 1) * 1000;
  if (!(await state.admitRequest(verified.jti, expiresAtMs))) {
    throw new CloudError(401, 'replayed', 'this request was already received');
  }
  c.set('signed', { claims: verified, installationHash: hash, state });
  await next();
};

/**
 * The Content-Length of the request (0 without a body); a body of unknown length is refused, and so
 * is one framed both ways (Content-Length and Transfer-Encoding: which one counts is ambiguous).
 */
function declaredLength(c: Context): number {
  const header = c.req.header('content-length');
  const chunked = c.req.header('transfer-encoding') !== undefined;
  if (header === undefined) {
    if (c.req.raw.body !== null && chunked) {
      throw new CloudError(411, 'length_required', 'send a Content-Length');
    }
    return 0;
  }
  if (chunked) {
    throw new CloudError(400, 'bad_request', 'send a Content-Length without a Transfer-Encoding');
  }
  const n = Number(header);
  if (!Number.isSafeInteger(n) || n < 0) throw new CloudError(400, 'bad_request', 'bad Content-Length');
  return n;
}
