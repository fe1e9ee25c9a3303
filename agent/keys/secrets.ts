/** Small secrets sealed under a master key: settings passwords, and GEM's secure attribute values. */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import type { MasterKey } from '../../shared/envelope';
import { AppError } from '../errors';

/** What a sealed value is for; each purpose has its own derived key, so one can never be opened as another. */
type SecretPurpose = 'settings' | 'secure-attribute';

const PREFIX = 'gemsec1';

function derive(key: MasterKey, purpose: SecretPurpose): Buffer {
  return Buffer.from(hkdfSync('sha256', key.key, Buffer.alloc(0), `gem ${purpose}`, 32));
}

/** Seals `plaintext` under `key`: `gemsec1.<keyId>.<base64url(nonce | ciphertext | tag)>`. */
export function sealSecret(plaintext: string, key: MasterKey, purpose: SecretPurpose): string {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', derive(key, purpose), nonce, { authTagLength: 16 });
  cipher.setAAD(Buffer.from(`${PREFIX}.${key.id}`));
  const body = Buffer.concat([nonce, cipher.update(plaintext, 'utf8'), cipher.final(), cipher.getAuthTag()]);
  return `${PREFIX}.${key.id}.${body.toString('base64url')}`;
}

/** Opens a sealed value with whichever of `keys` it names; a clear error if we do not hold that key. */
export function openSecret(sealed: string, keys: MasterKey[], purpose: SecretPurpose): string {
  const [prefix, keyId, body] = sealed.split('.');
  if (prefix !== PREFIX || !keyId || !body) throw new AppError('bad_request', 'not a sealed secret');
  const key = keys.find((k) => k.id === keyId);
  if (!key) {
    throw new AppError(
      'no_key',
      `this value was sealed with key ${keyId}; import that installation's keys file`,
    );
  }
  const data = Buffer.from(body, 'base64url');
  if (data.length < 28) throw new AppError('bad_request', 'sealed secret is too short');
  const decipher = createDecipheriv('aes-256-gcm', derive(key, purpose), data.subarray(0, 12), {
    authTagLength: 16,
  });
  decipher.setAAD(Buffer.from(`${PREFIX}.${key.id}`));
  decipher.setAuthTag(data.subarray(data.length - 16));
  try {
    return Buffer.concat([decipher.update(data.subarray(12, data.length - 16)), decipher.final()]).toString(
      'utf8',
    );
  } catch {
    throw new AppError('corrupt_backup', `sealed value under key ${keyId} failed authentication`);
  }
}
