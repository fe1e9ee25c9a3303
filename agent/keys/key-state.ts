/** What the page needs to know about the keys: were they ever downloaded, and is the banner collapsed. */
import { readFile } from 'node:fs/promises';
import { writeSmallFileAtomic } from '../system/atomic-file';

export interface KeyState {
  lastDownloadedAt?: string;
  bannerCollapsed: boolean;
}

export class KeyStateStore {
  constructor(private readonly path: string) {}

  async get(): Promise<KeyState> {
    try {
      const parsed = JSON.parse(await readFile(this.path, 'utf8')) as Partial<KeyState>;
      return {
        bannerCollapsed: parsed.bannerCollapsed === true,
        ...(parsed.lastDownloadedAt ? { lastDownloadedAt: parsed.lastDownloadedAt } : {}),
      };
    } catch {
      return { bannerCollapsed: false };
    }
  }

  async update(patch: Partial<KeyState>): Promise<KeyState> {
    const next = { ...(await this.get()), ...patch };
    await writeSmallFileAtomic(this.path, `${JSON.stringify(next, null, 2)}\n`, 0o600);
    return next;
  }
}
