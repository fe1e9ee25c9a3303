// The one error type every envelope reader throws, with a stable code per failure kind (FORMAT.md, "Errors").

/** Why an envelope could not be read. */
export type EnvelopeErrorCode =
  | 'not_a_backup'
  | 'unsupported_version'
  | 'bad_header'
  | 'no_key'
  | 'header_mac'
  | 'truncated'
  | 'corrupt_chunk'
  | 'trailing_data';

/** A backup file that cannot be read, with `code` saying why. */
export class EnvelopeError extends Error {
  readonly code: EnvelopeErrorCode;
  /** The payload chunk that failed (corrupt_chunk, trailing_data, truncated in the payload). */
  readonly chunkIndex?: number;
  /** The key ids the file was made with (no_key). */
  readonly keyIds?: string[];

  constructor(
    code: EnvelopeErrorCode,
    message: string,
    details: { chunkIndex?: number; keyIds?: string[] } = {},
  ) {
    super(message);
    this.name = 'EnvelopeError';
    this.code = code;
    if (details.chunkIndex !== undefined) this.chunkIndex = details.chunkIndex;
    if (details.keyIds !== undefined) this.keyIds = details.keyIds;
  }
}
