/** A small JSON state file in the data dir: read once, updates serialized and written temp-then-rename (0600). */
import { readFile } from 'node:fs/promises';
import { writeSmallFileAtomic } from './atomic-file';

export class JsonStateFile<T extends object> {
  private cache: T | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly path: string,
    private readonly initial: () => T,
  ) {}

  /**
   * A copy of the state; a missing or unreadable file reads as the initial state. A file that is not
   * a JSON object (damaged) is an error naming the file, never quoting it: JSON.parse's message shows
   * the text around the fault, and state files hold an installation id (the DR recovery credential).
   */
  async get(): Promise<T> {
    this.cache ??= await readFile(this.path, 'utf8').then(
      (text) => ({ ...this.initial(), ...this.parse(text) }),
      () => this.initial(),
    );
    return structuredClone(this.cache);
  }

  private parse(text: string): Partial<T> {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new Error(`${this.path} is damaged (not a JSON object): move it aside to start it afresh`);
    }
    return parsed as Partial<T>;
  }

  /** Applies `change` to a copy and saves it; memory follows disk, and concurrent updates queue. */
  update(change: (state: T) => void): Promise<T> {
    const run = this.queue.then(async () => {
      const next = await this.get();
      change(next);
      await writeSmallFileAtomic(this.path, `${JSON.stringify(next, null, 2)}\n`, 0o600);
      this.cache = next;
      return structuredClone(next);
    });
    this.queue = run.catch(() => {});
    return run;
  }
}
