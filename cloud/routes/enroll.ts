// POST /v1/installations: binds an installation id to its Ed25519 signing key (enrollment token).
import { Hono } from 'hono';
import { EnrollRequest } from '../../shared/api/cloud';
import { installationHash } from '../auth/installation-hash';
import type { CloudVariables } from '../auth/signed';
import { CloudError } from '../errors';
import { parseJsonBody } from './json-body';

/** Enrollment: the same key again is a no-op (200), another key for an enrolled id is refused (409). */
export const enrollRoutes = new Hono<{ Variables: CloudVariables }>().post('/v1/installations', async (c) => {
  const { config } = c.get('deps');
  const presented = /^Bearer\s+(\S+)\s*$/.exec(c.req.header('authorization') ?? '')?.[1] ?? '';
  if (!config.enrollmentToken || !(await sameSecret(presented, config.enrollmentToken))) {
    throw new CloudError(401, 'unauthorized', 'a valid enrollment token is required');
  }
  const body = await parseJsonBody(c.req.raw, EnrollRequest);
  const state = c.get('deps').installation(await installationHash(body.installationId));
  const outcome = await state.enroll(body.publicKey);
  if (outcome === 'conflict') {
    throw new CloudError(409, 'already_enrolled', 'this installation is enrolled with another key');
  }
  return c.json(
    { installationId: body.installationId, enrolled: true as const },
    outcome === 'created' ? 201 : 200,
  );
});

/** Compares two secrets in time independent of where they differ (hashes first, so lengths don't leak). */
async function sameSecret(a: string, b: string): Promise<boolean> {
  const enc = new TextEncoder();
  const [ha, hb] = await Promise.all([
    crypto.subtle.digest('SHA-256', enc.encode(a)),
    crypto.subtle.digest('SHA-256', enc.encode(b)),
  ]);
  const x = new Uint8Array(ha);
  const y = new Uint8Array(hb);
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i]! ^ y[i]!;
  return diff === 0;
}
