// GET /v1/escrow-key: the current escrow public key (a JWK with kid), and every one's public half, current first.
import { Hono } from 'hono';
import type { CloudVariables } from '../auth/signed';
import { CloudError } from '../errors';

/** Publishes only kty/crv/x/kid of each escrow key: the private part never leaves the server. */
export const escrowRoutes = new Hono<{ Variables: CloudVariables }>().get('/v1/escrow-key', (c) => {
  const keys = c
    .get('deps')
    .config.escrowPrivateKeys.map((k) => ({ kty: 'OKP', crv: 'X25519', x: k.x, kid: k.kid }));
  if (keys.length === 0) throw new CloudError(503, 'no_escrow_key', 'no escrow key is configured');
  // API.md: the answer is the escrow public key, a JWK with `kid` (the current one); `keys` adds the
  // list, current first, so a key being rotated out can still be recognised.
  return c.json({ ...keys[0], keys });
});
