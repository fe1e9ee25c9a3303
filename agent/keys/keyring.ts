/** The installation's keyring: identity, AES-256 master keys (one active), Ed25519 signing key; file, export, import. */
import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  scrypt as scryptCb,
} from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { z } from 'zod';
import { installationTag, type MasterKey } from '../../shared/envelope';
import { AppError } from '../errors';
import type { Logger } from '../log';
import { createSmallFileExclusive, writeSmallFileAtomic } from '../system/atomic-file';

const scrypt = promisify(scryptCb) as (
  pw: string,
  salt: Buffer,
  len: number,
  opts: object,
) => Promise<Buffer>;

/** The derivation before this one's turn: one at a time in this process. */
let derivations: Promise<unknown> = Promise.resolve();

/**
 * A passphrase's key (scrypt, NFC-normalized), one derivation at a time in this process: each may hold
 * up to 128 MiB (SCRYPT_LIMITS), and libuv would run four at once, half a GiB on a small controller for
 * four keys checks sent together.
 */
function deriveKey(
  passphrase: string,
  salt: Buffer,
  params: { N: number; r: number; p: number },
): Promise<Buffer> {
  const run = derivations.then(() =>
    scrypt(passphrase.normalize('NFC'), salt, 32, {
      N: params.N,
      r: params.r,
      p: params.p,
      maxmem: 256 * params.N * params.r,
    }),
  );
  derivations = run.catch(() => {});
  return run;
}

const b64u = z.string().regex(/^[A-Za-z0-9_-]+$/);
const hex32 = z.string().regex(/^[0-9a-f]{32}$/);

const masterKeySchema = z.object({
  id: z.string().regex(/^mk-[0-9a-f]{16}$/),
  key: b64u.refine((k) => Buffer.from(k, 'base64url').length === 32, 'master key must be 32 bytes'),
  createdAt: z.string(),
  status: z.enum(['active', 'retired']),
  installationId: hex32,
});

const okpPublic = z.object({ kty: z.literal('OKP'), crv: z.literal('Ed25519'), x: b64u });
const signingKeySchema = z.object({
  publicJwk: okpPublic,
  privateJwk: okpPublic.extend({ d: b64u }),
});

export const keyringFileSchema = z.object({
  format: z.literal('gem-keyring'),
  version: z.literal(1),
  installationId: hex32,
  createdAt: z.string(),
  masterKeys: z
    .array(masterKeySchema)
    .min(1)
    .refine(
      (keys) => keys.filter((k) => k.status === 'active').length === 1,
      'exactly one master key must be active',
    ),
  signingKey: signingKeySchema,
  retiredIdentities: z.array(z.object({ installationId: hex32, signingKey: signingKeySchema })).default([]),
});
export type KeyringFile = z.infer<typeof keyringFileSchema>;
export type SigningKey = z.infer<typeof signingKeySchema>;

/**
 * Whether a signing key is one Ed25519 key pair: a private key Node reads, whose public half is the one
 * written beside it (both `x`).
 */
function isKeyPair(key: SigningKey): boolean {
  try {
    const derived = createPublicKey(createPrivateKey({ key: key.privateJwk, format: 'jwk' })).export({
      format: 'jwk',
    });
    return derived.x === key.publicJwk.x && key.privateJwk.x === key.publicJwk.x;
  } catch {
    return false;
  }
}

/**
 * A keyring as a keys file brings it: also no key id twice (GEM never writes one). An import keeps one
 * key per id, so one of the two would be lost without a word, or no key left active. And each signing
 * key one key pair: a damaged one would be taken, and every Cloud DR push after it refused.
 */
const importedKeyringSchema = keyringFileSchema.superRefine((keyring, ctx) => {
  const ids = keyring.masterKeys.map((k) => k.id);
  const twice = ids.find((id, index) => ids.indexOf(id) !== index);
  if (twice) ctx.addIssue({ code: 'custom', path: ['masterKeys'], message: `key id ${twice} appears twice` });
  if (!isKeyPair(keyring.signingKey)) {
    ctx.addIssue({
      code: 'custom',
      path: ['signingKey'],
      message: 'the signing key is not one Ed25519 key pair',
    });
  }
  for (const [i, retired] of keyring.retiredIdentities.entries()) {
    if (!isKeyPair(retired.signingKey)) {
      ctx.addIssue({
        code: 'custom',
        path: ['retiredIdentities', i, 'signingKey'],
        message: 'the signing key is not one Ed25519 key pair',
      });
    }
  }
});

const exportSchema = z.object({
  format: z.literal('gem-encryption-keys'),
  version: z.literal(1),
  exportedAt: z.string(),
  installationId: hex32,
  keyring: z.unknown().optional(),
  protected: z
    .object({
      kdf: z.literal('scrypt'),
      // Bounded here only loosely; checkScryptParams refuses anything beyond what export writes.
      N: z.number().int().min(1024),
      r: z.number().int().min(1),
      p: z.number().int().min(1),
      salt: b64u,
      cipher: z.literal('aes-256-gcm'),
      nonce: b64u,
      ciphertext: b64u,
    })
    .optional(),
});

const SCRYPT = { N: 1 << 15, r: 8, p: 1 };
/**
 * The most a keys file may ask of scrypt: a little above what export writes (SCRYPT), so each import
 * or check costs at most 128 MiB and a few times the default work, never the 4 GiB a crafted file could ask.
 */
const SCRYPT_LIMITS = { N: 1 << 17, r: 8, p: 2 };

/** Refuses (422 `bad_keys_file`) scrypt parameters beyond SCRYPT_LIMITS, before any key is derived. */
function checkScryptParams(params: { N: number; r: number; p: number }): void {
  const powerOfTwo = (params.N & (params.N - 1)) === 0;
  if (!powerOfTwo || params.N > SCRYPT_LIMITS.N || params.r > SCRYPT_LIMITS.r || params.p > SCRYPT_LIMITS.p) {
    throw new AppError(
      'bad_keys_file',
      `this keys file asks for scrypt parameters GEM never writes (N=${params.N}, r=${params.r}, p=${params.p}; at most N=${SCRYPT_LIMITS.N} as a power of two, r=${SCRYPT_LIMITS.r}, p=${SCRYPT_LIMITS.p}): it was not made by GEM's export`,
    );
  }
}

function newMasterKey(installationId: string): KeyringFile['masterKeys'][number] {
  return {
    id: `mk-${randomBytes(8).toString('hex')}`,
    key: randomBytes(32).toString('base64url'),
    createdAt: new Date().toISOString(),
    status: 'active',
    installationId,
  };
}

function newSigningKey(): SigningKey {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const pub = publicKey.export({ format: 'jwk' }) as { x: string };
  const priv = privateKey.export({ format: 'jwk' }) as { x: string; d: string };
  return {
    publicJwk: { kty: 'OKP', crv: 'Ed25519', x: pub.x },
    privateJwk: { kty: 'OKP', crv: 'Ed25519', x: priv.x, d: priv.d },
  };
}

/** A brand-new keyring: random 128-bit installation id, one active master key, one signing key. */
export function createKeyringFile(): KeyringFile {
  const installationId = randomBytes(16).toString('hex');
  return {
    format: 'gem-keyring',
    version: 1,
    installationId,
    createdAt: new Date().toISOString(),
    masterKeys: [newMasterKey(installationId)],
    signingKey: newSigningKey(),
    retiredIdentities: [],
  };
}

/**
 * Merges an imported keyring into the current one: imported keys become active, current ones retired.
 * An imported key with one of our key ids but other bytes is refused (422 `bad_keys_file`): it would
 * replace ours, and every backup and secret sealed with ours would become unreadable.
 */
function mergeImported(current: KeyringFile, imported: KeyringFile): KeyringFile {
  for (const key of imported.masterKeys) {
    const ours = current.masterKeys.find((k) => k.id === key.id);
    if (ours && !Buffer.from(ours.key, 'base64url').equals(Buffer.from(key.key, 'base64url'))) {
      throw new AppError(
        'bad_keys_file',
        `this keys file holds a different key under our key id ${key.id}; importing it would make the backups sealed with our key unreadable, so nothing was imported`,
        { details: { keyId: key.id } },
      );
    }
  }
  const byId = new Map<string, KeyringFile['masterKeys'][number]>();
  for (const key of current.masterKeys) byId.set(key.id, { ...key, status: 'retired' });
  for (const key of imported.masterKeys) byId.set(key.id, { ...key });
  const identities = [
    ...current.retiredIdentities,
    ...imported.retiredIdentities,
    { installationId: current.installationId, signingKey: current.signingKey },
  ].filter(
    (identity, index, all) =>
      identity.installationId !== imported.installationId &&
      all.findIndex((other) => other.installationId === identity.installationId) === index,
  );
  return {
    ...imported,
    masterKeys: [...byId.values()],
    retiredIdentities: identities,
  };
}

/**
 * Validates an exported keys file (plain or passphrase-protected) and returns the keyring inside. A
 * data dir's own keyring.json (format gem-keyring, copied off a controller's disk) is taken as it is:
 * it holds what an unprotected export holds.
 */
export async function parseKeysExport(text: string, passphrase?: string): Promise<KeyringFile> {
  let json: unknown;
  try {
    // A UTF-8 byte order mark (a keys file saved by Notepad or PowerShell) is not part of the JSON.
    json = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch {
    throw new AppError('bad_keys_file', 'this is not a GEM encryption keys file (it is not JSON)');
  }
  if ((json as { format?: unknown } | null)?.format === 'gem-keyring') {
    const keyring = importedKeyringSchema.safeParse(json);
    if (keyring.success) return keyring.data;
    throw new AppError('bad_keys_file', `this keyring.json is corrupt: ${issueWords(keyring.error)}`);
  }
  const envelope = exportSchema.safeParse(json);
  if (!envelope.success) {
    throw new AppError(
      'bad_keys_file',
      "this is not a GEM encryption keys file (expected a gem-encryption-keys-YYYY-MM-DD.json export, or a data dir's keyring.json)",
    );
  }
  let inner: unknown = envelope.data.keyring;
  const sealed = envelope.data.protected;
  if (sealed) {
    if (!passphrase) {
      throw new AppError(
        'wrong_passphrase',
        'this keys file is protected by a passphrase: enter the passphrase',
      );
    }
    checkScryptParams(sealed);
    const key = await deriveKey(passphrase, Buffer.from(sealed.salt, 'base64url'), sealed);
    const data = Buffer.from(sealed.ciphertext, 'base64url');
    if (data.length < 17)
      throw new AppError('bad_keys_file', 'the keys file is corrupt (protected part too short)');
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(sealed.nonce, 'base64url'), {
        authTagLength: 16,
      });
      decipher.setAAD(Buffer.from(`gem-encryption-keys:${envelope.data.installationId}`));
      decipher.setAuthTag(data.subarray(data.length - 16));
      const plain = Buffer.concat([decipher.update(data.subarray(0, data.length - 16)), decipher.final()]);
      inner = JSON.parse(plain.toString('utf8'));
    } catch {
      throw new AppError('wrong_passphrase', 'wrong passphrase for this keys file (or the file is corrupt)');
    }
  }
  const keyring = importedKeyringSchema.safeParse(inner);
  if (!keyring.success) {
    throw new AppError('bad_keys_file', `the keys file is corrupt: ${issueWords(keyring.error)}`);
  }
  if (keyring.data.installationId !== envelope.data.installationId) {
    throw new AppError('bad_keys_file', 'the keys file is corrupt: installation ids disagree');
  }
  return keyring.data;
}

/** Where a keyring failed its schema, in words: "masterKeys: exactly one master key must be active". */
function issueWords(error: z.ZodError): string {
  const issue = error.issues[0];
  return issue ? `${issue.path.join('.') || 'keyring'}: ${issue.message}` : 'invalid keyring';
}

/** The keys JSON export, optionally sealed under a passphrase with scrypt + AES-256-GCM. */
export async function buildKeysExport(
  keyring: KeyringFile,
  passphrase?: string,
  now = new Date(),
): Promise<string> {
  const base = {
    format: 'gem-encryption-keys' as const,
    version: 1 as const,
    exportedAt: now.toISOString(),
    installationId: keyring.installationId,
  };
  if (!passphrase) return `${JSON.stringify({ ...base, keyring }, null, 2)}\n`;
  const salt = randomBytes(16);
  const nonce = randomBytes(12);
  const key = await deriveKey(passphrase, salt, SCRYPT);
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 });
  cipher.setAAD(Buffer.from(`gem-encryption-keys:${keyring.installationId}`));
  const ciphertext = Buffer.concat([
    cipher.update(JSON.stringify(keyring)),
    cipher.final(),
    cipher.getAuthTag(),
  ]);
  const protectedPart = {
    kdf: 'scrypt' as const,
    ...SCRYPT,
    salt: salt.toString('base64url'),
    cipher: 'aes-256-gcm' as const,
    nonce: nonce.toString('base64url'),
    ciphertext: ciphertext.toString('base64url'),
  };
  return `${JSON.stringify({ ...base, protected: protectedPart }, null, 2)}\n`;
}

export function exportFileName(now = new Date()): string {
  return `gem-encryption-keys-${now.toISOString().slice(0, 10)}.json`;
}

/** Told the new installation id (and the one before): the DR recovery credential, do not log it. */
/**
 * An installation id where the whole of it must not show (lists, messages, the CLI): its first 8
 * characters tell installations apart; the whole id is the DR recovery credential.
 */
export function installationIdPrefix(id: string): string {
  return id.slice(0, 8);
}

/** An installation id as a sentence names it: its prefix and "…". */
export function shortInstallationId(id: string): string {
  return `${installationIdPrefix(id)}…`;
}

type IdentityListener = (installationId: string, previous: string) => void;

/** The live keyring of this agent, backed by a 0600 file in the data dir. */
export class Keyring {
  /** Keyring writes, one at a time (see change). */
  private queue: Promise<unknown> = Promise.resolve();
  /** Which version of the file `file` is (inode, size, mtime): another process's write changes it. */
  private stamp: string | undefined;
  /** Told when the installation id changes (see onIdentityChanged). */
  private readonly identityListeners = new Set<IdentityListener>();

  private constructor(
    private readonly path: string,
    private loaded: KeyringFile,
  ) {
    this.stamp = stampOf(path);
  }

  /**
   * The keyring as the file holds it now. Another process (`gem-backup keys import` beside the running
   * agent) may have written it since we read it: its keys must be usable at once (a restore of the
   * imported installation's backups), not after a restart. A file that cannot be read or is not a valid
   * keyring (it is written by rename, so never half) leaves the copy we have.
   */
  private get file(): KeyringFile {
    const stamp = stampOf(this.path);
    if (stamp === undefined || stamp === this.stamp) return this.loaded;
    try {
      const parsed = keyringFileSchema.safeParse(JSON.parse(readFileSync(this.path, 'utf8')));
      if (parsed.success) this.use(parsed.data);
    } catch {
      // kept: the copy we have
    }
    this.stamp = stamp;
    return this.loaded;
  }

  /** Loads an existing keyring; never creates one (a command that only reads the keys). */
  static async load(path: string): Promise<Keyring> {
    return new Keyring(path, parseKeyringFile(await readFile(path, 'utf8'), path));
  }

  /** Loads the keyring, creating it on first start. A present but unreadable keyring is an error, never replaced. */
  static async loadOrCreate(path: string, log?: Logger): Promise<Keyring> {
    let text: string | undefined;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    if (text === undefined) {
      const file = createKeyringFile();
      // Exclusive: a process starting beside this one may be creating it too; then both use its
      // keyring, never each their own (backups sealed with a key that lost the race would be lost).
      if (await createSmallFileExclusive(path, `${JSON.stringify(file, null, 2)}\n`, 0o600)) {
        // Not the installation id: it is the DR recovery credential.
        log?.info('created a new keyring', { keyId: file.masterKeys[0]!.id });
        return new Keyring(path, file);
      }
      text = await readFile(path, 'utf8');
    }
    return new Keyring(path, parseKeyringFile(text, path));
  }

  get installationId(): string {
    return this.file.installationId;
  }

  /**
   * This installation's tag: what a backup file names its installation by (the id is the DR recovery
   * credential and is not in files, FORMAT.md "Version 2"). Compare a header's `installationTag` with it.
   */
  get installationTag(): string {
    return installationTag(this.file.installationId);
  }

  /** Whether a backup file's `installationTag` is the active installation's (not a retired identity's). */
  isActive(tag: string): boolean {
    return tag === this.installationTag;
  }

  /**
   * Calls `listener` (after the current call, never inside it) whenever the installation id changes:
   * an import here, or one another process wrote, noticed at the keyring's next use. What follows the
   * identity (the Cloud DR nightly offset) re-arms there. Returns the function that removes it.
   */
  onIdentityChanged(listener: IdentityListener): () => void {
    this.identityListeners.add(listener);
    return () => this.identityListeners.delete(listener);
  }

  /** Makes `next` the keyring in memory; tells the identity listeners if the installation id changed. */
  private use(next: KeyringFile): void {
    const previous = this.loaded.installationId;
    this.loaded = next;
    if (next.installationId === previous) return;
    const installationId = next.installationId;
    for (const listener of [...this.identityListeners]) {
      // Deferred: the change is noticed inside a getter, which must stay quick and cannot fail.
      queueMicrotask(() => {
        try {
          listener(installationId, previous);
        } catch {
          // the listener's own failure; the keyring is in use as read
        }
      });
    }
  }

  get activeKey(): MasterKey {
    const key = this.file.masterKeys.find((k) => k.status === 'active')!;
    return { id: key.id, key: Buffer.from(key.key, 'base64url') };
  }

  /** Every master key we hold, active first: what may open a backup or a sealed secret. */
  get masterKeys(): MasterKey[] {
    return [...this.file.masterKeys]
      .sort((a, b) => (a.status === 'active' ? -1 : b.status === 'active' ? 1 : 0))
      .map((k) => ({ id: k.id, key: Buffer.from(k.key, 'base64url') }));
  }

  get signingKey(): SigningKey {
    return this.file.signingKey;
  }

  /**
   * Whether a backup whose header names installation tag `tag` (FORMAT.md "Version 2"; a version-1
   * header's tag is computed from its id) and is sealed to `keyIds` is ours: made under this
   * installation's identity (or one it had before a key import) and openable with a key we hold.
   */
  owns(tag: string, keyIds: readonly string[]): boolean {
    const identities = [
      this.file.installationId,
      ...this.file.retiredIdentities.map((i) => i.installationId),
    ];
    return (
      identities.some((id) => installationTag(id) === tag) &&
      keyIds.some((id) => this.file.masterKeys.some((k) => k.id === id))
    );
  }

  toFile(): KeyringFile {
    return structuredClone(this.file);
  }

  /** Replaces the keyring with `next`, written atomically first so memory never runs ahead of disk. */
  replace(next: KeyringFile): Promise<void> {
    return this.change(() => next);
  }

  /** Imports an exported keyring: it becomes active, ours (and any key imported meanwhile) kept as retired. */
  importKeys(imported: KeyringFile): Promise<void> {
    return this.change((current) => mergeImported(current, imported));
  }

  /**
   * Applies `change` to the keyring as the file holds it now and saves the result. Changes queue one
   * after another, and each starts from the file, so neither a concurrent change here nor a key another
   * process (the CLI) wrote meanwhile is lost. A failed change leaves file and memory as they were.
   */
  private change(change: (current: KeyringFile) => KeyringFile): Promise<void> {
    const run = this.queue.then(async () => {
      const current = (await readKeyringFile(this.path)) ?? this.loaded;
      const valid = keyringFileSchema.parse(change(structuredClone(current)));
      await writeSmallFileAtomic(this.path, `${JSON.stringify(valid, null, 2)}\n`, 0o600);
      this.stamp = stampOf(this.path);
      this.use(valid);
    });
    this.queue = run.catch(() => {});
    return run;
  }
}

/** The version of the file at `path` (inode, size, mtime), or undefined if it cannot be read. */
function stampOf(path: string): string | undefined {
  try {
    const s = statSync(path, { bigint: true });
    return `${s.ino}:${s.size}:${s.mtimeNs}`;
  } catch {
    return undefined;
  }
}

/** The keyring file as it is on disk now (undefined if there is none); a corrupt one is an error, never replaced. */
async function readKeyringFile(path: string): Promise<KeyringFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  return parseKeyringFile(text, path);
}

/**
 * The keyring in `text` (the file at `path`); a corrupt one is one plain error. Never JSON.parse's
 * own message: V8 quotes the text around the fault, which here is a master key or the installation id.
 */
function parseKeyringFile(text: string, path: string): KeyringFile {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const parsed = keyringFileSchema.safeParse(json);
  // Kept aside, not deleted: it may hold keys imported after the export was made. With no keyring,
  // `keys import` sets one up and makes the export's keys active; it cannot tell this box from a rebuilt
  // one, so it holds Cloud DR pushes until the owner says the data here is the installation's.
  if (!parsed.success) {
    throw new Error(
      `the keyring at ${path} is corrupt: move it aside (keep it), then import your keys export: gem-backup keys import FILE; with Cloud DR on, then confirm the data here is still this installation's: gem-backup dr push --data-is-current`,
    );
  }
  return parsed.data;
}
