// The GEM backup envelope (FORMAT.md): streaming authenticated encryption of backup files, Node and workerd.

export { type ChunkCipher, TAG_LENGTH, webCryptoChunkCipher } from './cipher';
export { EnvelopeError, type EnvelopeErrorCode } from './errors';
export {
  DEFAULT_CHUNK_SIZE,
  type EnvelopeCore,
  type EnvelopeHeader,
  encodeHeader,
  HEADER_SCAN_LIMIT,
  HeaderScanner,
  newCore,
  readHeader,
  rewrapHeader,
  type ScannedHeader,
  tryParseHeader,
  verifyHeaderMac,
} from './header';
export { installationPrefix, installationTag } from './installation-tag';
export {
  generateFileKey,
  type MasterKey,
  type Stanza,
  stanzaKeyIds,
  unwrapWithMasterKeys,
  unwrapWithX25519,
  wrapForMasterKey,
  wrapForX25519,
} from './keys';
export { PayloadOpener, PayloadSealer, type SealOptions } from './payload';
export { type OpenOptions, openStream, sealStream } from './stream';
