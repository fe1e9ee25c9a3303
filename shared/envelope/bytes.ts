// Byte helpers shared by the envelope modules: concatenation, a chunk-assembling queue, WebCrypto typing.

/** WebCrypto's types want ArrayBuffer-backed views; every view we pass is one, so this only narrows the type. */
export function buf(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes as Uint8Array<ArrayBuffer>;
}

/** Concatenates byte arrays into a fresh one. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/**
 * A FIFO of byte arrays that hands out exact-size pieces. A piece lying inside one pushed array is a
 * view of it (no copy); only pieces spanning several arrays are copied, which coalesces small writes.
 * Pushed arrays are kept by reference, so callers must not modify them afterwards.
 */
const EMPTY = new Uint8Array(0);

export class ByteQueue {
  private parts: Uint8Array[] = [];
  private first = 0; // index of the first unread part; parts before it are spent
  private head = 0; // offset into parts[first]
  length = 0;

  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.parts.push(bytes);
    this.length += bytes.length;
  }

  /**
   * Removes the first `n` bytes and returns them as views of the pushed arrays, in order (no copy);
   * `n` must not exceed `length`. An empty list for n = 0.
   */
  takeParts(n: number): Uint8Array[] {
    if (n > this.length) throw new RangeError(`take(${n}) from ${this.length} bytes`);
    this.length -= n;
    const parts: Uint8Array[] = [];
    let left = n;
    while (left > 0) {
      const part = this.parts[this.first]!;
      const count = Math.min(part.length - this.head, left);
      parts.push(part.subarray(this.head, this.head + count));
      left -= count;
      this.head += count;
      if (this.head === part.length) this.dropFirst();
    }
    return parts;
  }

  /** Removes and returns the first `n` bytes; `n` must not exceed `length`. */
  take(n: number): Uint8Array {
    if (n > this.length) throw new RangeError(`take(${n}) from ${this.length} bytes`);
    this.length -= n;
    const first = this.parts[this.first];
    if (n === 0 || first === undefined) return new Uint8Array(0);
    if (first.length - this.head >= n) {
      const piece = first.subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) this.dropFirst();
      return piece;
    }
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const part = this.parts[this.first]!;
      const count = Math.min(part.length - this.head, n - filled);
      out.set(part.subarray(this.head, this.head + count), filled);
      filled += count;
      this.head += count;
      if (this.head === part.length) this.dropFirst();
    }
    return out;
  }

  private dropFirst(): void {
    // Release the spent part at once (a queue fed 1 MiB reads must not pin them); compacting the
    // array only in batches keeps many tiny writes linear rather than quadratic.
    this.parts[this.first] = EMPTY;
    this.first++;
    this.head = 0;
    if (this.first >= 1024 || this.first === this.parts.length) {
      this.parts = this.parts.slice(this.first);
      this.first = 0;
    }
  }
}
