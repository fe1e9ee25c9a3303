// The envelope header: the key-less core, the stanzas and the HMAC that binds them (FORMAT.md "Layout").

import { base64url } from 'jose';
import { buf, concatBytes } from './bytes';
import { EnvelopeError } from './errors';
import { installationPrefix, installationTag } from './installation-tag';
import { deriveSubkey, type Stanza } from './keys';

/**
 * The header's readable-without-keys description of the backup. Version 2 files carry the
 * installation's tag and prefix, never its id (the DR recovery credential); version 1 files carry the
 * id, from which the parser computes the same tag and prefix, so callers compare tags for both.
 */
export interface EnvelopeCore {
  /** The format version of the file (the magic's last two bytes): what encodeHeader writes. */
  version: 1 | 2;
  /** SHA-256 of "gem-backup installation tag\n" + the installation id, 64 lower-case hex. */
  installationTag: string;
  /** The installation id's first 8 hex characters, for messages. */
  installationPrefix: string;
  /** Version 1 only: the installation id in clear. A version-2 file never holds it. */
  installationId?: string;
  createdAt: string;
  chunkSize: number;
  salt: string;
  meta: Record<string, string>;
}

/** A parsed header; `bytes` are its exact bytes including the MAC (what rewrapping and the AAD start from). */
export interface EnvelopeHeader {
  core: EnvelopeCore;
  stanzas: Stanza[];
  bytes: Uint8Array;
}

export const DEFAULT_CHUNK_SIZE = 65536;
const MIN_CHUNK_SIZE = 1024;
const MAX_CHUNK_SIZE = 16777216;
const MAGIC_V1 = new Uint8Array([0x47, 0x45, 0x4d, 0x42, 0x4b, 0x50, 0x00, 0x01]); // "GEMBKP" 0x00 0x01
const MAGIC_V2 = new Uint8Array([0x47, 0x45, 0x4d, 0x42, 0x4b, 0x50, 0x00, 0x02]); // "GEMBKP" 0x00 0x02
const MAGIC_LENGTH = 8;
const SIGNATURE_LENGTH = 6; // "GEMBKP", the magic before its version bytes
const MAX_CORE_LENGTH = 65536;
const MAX_STANZAS_LENGTH = 1048576;
const MAC_LENGTH = 32;
const CORE_START = MAGIC_LENGTH + 4;

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A new core with a fresh random salt; createdAt defaults to now, chunkSize to 64 KiB. It is a
 * version-2 core (the id's tag and prefix, not the id); `version: 1` is for tests that need a file
 * as older agents wrote it.
 */
export function newCore(fields: {
  installationId: string;
  createdAt?: string;
  chunkSize?: number;
  meta?: Record<string, string>;
  version?: 1 | 2;
}): EnvelopeCore {
  const version = fields.version ?? 2;
  const { installationId } = fields;
  if (typeof installationId !== 'string' || !HEX32.test(installationId)) {
    throw new EnvelopeError('bad_header', 'bad header core: installationId');
  }
  const core: EnvelopeCore = {
    version,
    installationTag: installationTag(installationId),
    installationPrefix: installationPrefix(installationId),
    ...(version === 1 ? { installationId } : {}),
    createdAt: fields.createdAt ?? new Date().toISOString(),
    chunkSize: fields.chunkSize ?? DEFAULT_CHUNK_SIZE,
    salt: base64url.encode(crypto.getRandomValues(new Uint8Array(16))),
    meta: { ...(fields.meta ?? {}) },
  };
  return checkCore(core, version);
}

/** Serializes core and stanzas into header bytes ending with the MAC keyed from `fileKey`. */
export async function encodeHeader(
  core: EnvelopeCore,
  stanzas: Stanza[],
  fileKey: Uint8Array,
): Promise<Uint8Array> {
  const checked = checkCore(core, core.version);
  const { createdAt, chunkSize, salt, meta } = checked;
  // Version 2 writes the tag and prefix only: the id is the DR recovery credential (FORMAT.md "Version 2").
  const fields =
    checked.version === 1
      ? { installationId: checked.installationId, createdAt, chunkSize, salt, meta }
      : {
          installationTag: checked.installationTag,
          installationPrefix: checked.installationPrefix,
          createdAt,
          chunkSize,
          salt,
          meta,
        };
  const coreBytes = utf8.encode(JSON.stringify(fields));
  if (coreBytes.length > MAX_CORE_LENGTH) throw new EnvelopeError('bad_header', 'the core is over 64 KiB');
  const magic = checked.version === 1 ? MAGIC_V1 : MAGIC_V2;
  const prefix = concatBytes([magic, uint32(coreBytes.length), coreBytes]);
  return sealHeader(prefix, salt, stanzas, fileKey);
}

/**
 * Parses a header from the start of `bytes` without any key (the MAC is NOT checked). Returns null
 * when more bytes are needed, throws EnvelopeError when the bytes cannot be a version-1 or -2 header.
 */
export function tryParseHeader(bytes: Uint8Array): { header: EnvelopeHeader; length: number } | null {
  const layout = readLayout(bytes);
  if (typeof layout === 'number' || bytes.length < layout.length) return null;
  return parseLaidOut(bytes, layout);
}

/** Parses the header `layout` describes from the start of `bytes`, which hold all of it. */
function parseLaidOut(bytes: Uint8Array, layout: HeaderLayout): { header: EnvelopeHeader; length: number } {
  const { version, coreLength, stanzasStart, stanzasLength, length } = layout;
  const core = checkCore(parseJson(bytes.subarray(CORE_START, CORE_START + coreLength), 'core'), version);
  const stanzas = checkStanzas(
    parseJson(bytes.subarray(stanzasStart, stanzasStart + stanzasLength), 'stanzas'),
  );
  return { header: { core, stanzas, bytes: bytes.slice(0, length) }, length };
}

/** Where the parts of a header lie, as its magic and length fields say. */
interface HeaderLayout {
  version: 1 | 2;
  coreLength: number;
  stanzasStart: number;
  stanzasLength: number;
  /** The whole header's length, MAC included. */
  length: number;
}

/**
 * The layout of the header at the start of `bytes` once they reach both length fields; before that,
 * how many bytes would tell more. Throws EnvelopeError as soon as they cannot start a version-1 or -2
 * header (each byte of the signature can tell).
 */
function readLayout(bytes: Uint8Array): HeaderLayout | number {
  for (let i = 0; i < Math.min(SIGNATURE_LENGTH, bytes.length); i++) {
    if (bytes[i] !== MAGIC_V1[i])
      throw new EnvelopeError('not_a_backup', 'it does not start with the GEM backup signature');
  }
  if (bytes.length < SIGNATURE_LENGTH) return bytes.length + 1;
  if (bytes.length < CORE_START) return CORE_START;
  const version = (bytes[6]! << 8) | bytes[7]!;
  if (version !== 1 && version !== 2) {
    throw new EnvelopeError(
      'unsupported_version',
      `backup format version ${version} is newer than this GEM Backup reads (1 and 2): upgrade GEM Backup to read it`,
    );
  }
  const coreLength = readUint32(bytes, MAGIC_LENGTH);
  if (coreLength < 1 || coreLength > MAX_CORE_LENGTH)
    throw new EnvelopeError('bad_header', 'bad core length');
  const stanzasStart = CORE_START + coreLength + 4;
  if (bytes.length < stanzasStart) return stanzasStart;
  const stanzasLength = readUint32(bytes, stanzasStart - 4);
  if (stanzasLength < 2 || stanzasLength > MAX_STANZAS_LENGTH) {
    throw new EnvelopeError('bad_header', 'bad stanzas length');
  }
  return {
    version,
    coreLength,
    stanzasStart,
    stanzasLength,
    length: stanzasStart + stanzasLength + MAC_LENGTH,
  };
}

/**
 * The most of a file's first bytes a HeaderScanner holds by default: more than the longest header
 * the format allows (a 64 KiB core and 1 MiB of stanzas).
 */
export const HEADER_SCAN_LIMIT = 2 * 1024 * 1024;

/** A header HeaderScanner found, with `bytes`: every byte pushed, the header's and those after it. */
export interface ScannedHeader {
  header: EnvelopeHeader;
  /** The header's length: `bytes` from here on are the payload's. */
  length: number;
  bytes: Uint8Array;
}

const NO_BYTES = new Uint8Array(0);

/**
 * Collects a file's first bytes, chunk by chunk as they arrive, until they hold its whole header. The
 * chunks are kept as they are and joined only once they reach a length that tells more (the signature,
 * the core's length field, the stanzas' length field, the end of the header), so bytes that trickle
 * in one at a time are copied a few times in all, not once per chunk. Pushed chunks are kept by
 * reference: callers must not modify them afterwards.
 */
export class HeaderScanner {
  private parts: Uint8Array[] = [];
  private needed = 0;
  /** How many bytes were pushed. */
  length = 0;

  constructor(readonly limit = HEADER_SCAN_LIMIT) {}

  /**
   * Adds the next chunk. Returns the header once all of it is there, null while more bytes are needed;
   * throws EnvelopeError (not_a_backup, unsupported_version, bad_header) on the chunk that shows the
   * bytes cannot start a header, as tryParseHeader does.
   */
  push(chunk: Uint8Array): ScannedHeader | null {
    this.parts.push(chunk);
    this.length += chunk.length;
    if (this.length < this.needed) return null;
    const bytes = this.held();
    // Worked out once per length that tells more: how many bytes to wait for, or the whole header.
    const layout = readLayout(bytes);
    this.needed = typeof layout === 'number' ? layout : layout.length;
    if (typeof layout === 'number' || bytes.length < layout.length) return null;
    return { ...parseLaidOut(bytes, layout), bytes };
  }

  /** Whether `limit` bytes arrived without a whole header among them: the caller gives up on them. */
  get full(): boolean {
    return this.length >= this.limit;
  }

  /** The error of a reader that gives up once `full`: bad_header, naming the limit. */
  notEnded(): EnvelopeError {
    return new EnvelopeError(
      'bad_header',
      `the backup header does not end within its first ${this.limit} bytes`,
    );
  }

  /** Every byte pushed so far, as one array. */
  held(): Uint8Array {
    if (this.parts.length > 1) this.parts = [concatBytes(this.parts)];
    return this.parts[0] ?? NO_BYTES;
  }
}

/**
 * Reads just the header off a stream; `rest` yields every byte after it. Gives up with `bad_header` when
 * `limit` bytes hold no whole header (HEADER_SCAN_LIMIT: more than the format allows).
 */
export async function readHeader(
  stream: ReadableStream<Uint8Array>,
  limit = HEADER_SCAN_LIMIT,
): Promise<{ header: EnvelopeHeader; rest: ReadableStream<Uint8Array> }> {
  const reader = stream.getReader();
  const scanner = new HeaderScanner(limit);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) throw new EnvelopeError('truncated', 'the file ends inside the backup header');
      const found = scanner.push(value);
      if (found) return { header: found.header, rest: restOf(found.bytes.subarray(found.length), reader) };
      if (scanner.full) throw scanner.notEnded();
    }
  } catch (error) {
    reader.cancel(error).catch(() => {});
    throw error;
  }
}

function restOf(
  leftover: Uint8Array,
  reader: ReadableStreamDefaultReader<Uint8Array>,
): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(controller) {
      if (leftover.length > 0) controller.enqueue(leftover);
    },
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

/** Checks the header MAC with the file key; throws `header_mac` when the header was tampered with or the key is wrong. */
export async function verifyHeaderMac(header: EnvelopeHeader, fileKey: Uint8Array): Promise<void> {
  const { bytes } = header;
  const key = await macKey(fileKey, header.core.salt, ['verify']);
  const body = bytes.subarray(0, bytes.length - MAC_LENGTH);
  const ok = await crypto.subtle.verify(
    'HMAC',
    key,
    buf(bytes.subarray(bytes.length - MAC_LENGTH)),
    buf(body),
  );
  if (!ok)
    throw new EnvelopeError('header_mac', 'the backup header was tampered with, or the file key is wrong');
}

/**
 * New header bytes with the same core and other stanzas (e.g. an added escrow stanza). The payload
 * after the old header stays valid behind the new one, since its AAD covers only magic and core.
 */
export async function rewrapHeader(
  header: EnvelopeHeader,
  fileKey: Uint8Array,
  stanzas: Stanza[],
): Promise<Uint8Array> {
  await verifyHeaderMac(header, fileKey);
  return sealHeader(header.bytes.subarray(0, coreEnd(header.bytes)), header.core.salt, stanzas, fileKey);
}

/** The payload AAD: SHA-256 of magic, coreLength and core, exactly as they are in the header bytes. */
export async function payloadAad(header: EnvelopeHeader): Promise<Uint8Array> {
  const digest = await crypto.subtle.digest('SHA-256', buf(header.bytes.subarray(0, coreEnd(header.bytes))));
  return new Uint8Array(digest);
}

/** The salt of a core as bytes. */
export function saltBytes(core: EnvelopeCore): Uint8Array {
  return base64url.decode(core.salt);
}

async function sealHeader(
  prefix: Uint8Array,
  salt: string,
  stanzas: Stanza[],
  fileKey: Uint8Array,
): Promise<Uint8Array> {
  checkStanzas(stanzas);
  const stanzaBytes = utf8.encode(JSON.stringify(stanzas));
  if (stanzaBytes.length > MAX_STANZAS_LENGTH)
    throw new EnvelopeError('bad_header', 'the stanzas are over 1 MiB');
  const body = concatBytes([prefix, uint32(stanzaBytes.length), stanzaBytes]);
  const key = await macKey(fileKey, salt, ['sign']);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, buf(body)));
  return concatBytes([body, mac]);
}

async function macKey(fileKey: Uint8Array, salt: string, usages: KeyUsage[]): Promise<CryptoKey> {
  const raw = await deriveSubkey(fileKey, base64url.decode(salt), 'gem-backup header');
  return crypto.subtle.importKey('raw', buf(raw), { name: 'HMAC', hash: 'SHA-256' }, false, usages);
}

function coreEnd(headerBytes: Uint8Array): number {
  return CORE_START + readUint32(headerBytes, MAGIC_LENGTH);
}

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(strictUtf8.decode(bytes));
  } catch {
    throw new EnvelopeError('bad_header', `the header ${what} is not UTF-8 JSON`);
  }
}

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;

/**
 * True if `text` is a date and time in UTC as `Date.prototype.toISOString` writes it (fractions of a
 * second optional): the one form a backup's created-at takes in its header, in signed DR requests and
 * in the cloud's slot metadata. Not whatever `Date.parse` accepts ("2026", "Thu, 03 Dec 2026 …").
 */
export function isIsoUtc(text: unknown): text is string {
  return typeof text === 'string' && ISO_UTC.test(text) && !Number.isNaN(Date.parse(text));
}

const HEX32 = /^[0-9a-f]{32}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const HEX8 = /^[0-9a-f]{8}$/;
const SALT = /^[A-Za-z0-9_-]{22}$/;

/**
 * A core of `version` as the file holds it, checked: version 1 must have `installationId` (its tag and
 * prefix are computed from it); version 2 must have `installationTag` and `installationPrefix` (an
 * `installationId` there is an unknown field, ignored and never returned).
 */
function checkCore(value: unknown, version: 1 | 2): EnvelopeCore {
  const bad = (why: string) => new EnvelopeError('bad_header', `bad header core: ${why}`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('not an object');
  const v = value as Record<string, unknown>;
  const { createdAt, chunkSize, salt, meta } = v;
  let installation: Pick<EnvelopeCore, 'installationTag' | 'installationPrefix' | 'installationId'>;
  if (version === 1) {
    const { installationId } = v;
    if (typeof installationId !== 'string' || !HEX32.test(installationId)) throw bad('installationId');
    installation = {
      installationTag: installationTag(installationId),
      installationPrefix: installationPrefix(installationId),
      installationId,
    };
  } else {
    const { installationTag: tag, installationPrefix: prefix } = v;
    if (typeof tag !== 'string' || !HEX64.test(tag)) throw bad('installationTag');
    if (typeof prefix !== 'string' || !HEX8.test(prefix)) throw bad('installationPrefix');
    installation = { installationTag: tag, installationPrefix: prefix };
  }
  if (!isIsoUtc(createdAt)) throw bad('createdAt');
  if (
    typeof chunkSize !== 'number' ||
    !Number.isInteger(chunkSize) ||
    chunkSize < MIN_CHUNK_SIZE ||
    chunkSize > MAX_CHUNK_SIZE
  ) {
    throw bad('chunkSize');
  }
  if (typeof salt !== 'string' || !SALT.test(salt)) throw bad('salt');
  if (typeof meta !== 'object' || meta === null || Array.isArray(meta)) throw bad('meta');
  const metaCopy: Record<string, string> = {};
  for (const [k, val] of Object.entries(meta)) {
    if (typeof val !== 'string') throw bad(`meta.${k} is not a string`);
    metaCopy[k] = val;
  }
  return { version, ...installation, createdAt, chunkSize, salt, meta: metaCopy };
}

const KNOWN_STANZA_TYPES = new Set(['master-key', 'escrow', 'escrow-keyring']);

function checkStanzas(value: unknown): Stanza[] {
  if (!Array.isArray(value) || value.length === 0)
    throw new EnvelopeError('bad_header', 'a header needs a stanza');
  for (const stanza of value) {
    const s = stanza as Record<string, unknown> | null;
    const ok =
      typeof s === 'object' &&
      s !== null &&
      typeof s.type === 'string' &&
      (!KNOWN_STANZA_TYPES.has(s.type) || (typeof s.kid === 'string' && typeof s.jwe === 'string'));
    if (!ok) throw new EnvelopeError('bad_header', 'bad stanza');
  }
  // Unknown stanza types are kept as they are, so rewrapping does not drop them.
  return value as Stanza[];
}

function uint32(n: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n);
  return out;
}

function readUint32(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(offset);
}
