/** What the page needs to know about the keys: were they ever downloaded, and is the banner collapsed. */
import { JsonStateFile } from '../system/json-state';

export interface KeyState {
  lastDownloadedAt?: string;
  bannerCollapsed: boolean;
}

export class KeyStateStore extends JsonStateFile<KeyState> {
  constructor(path: string) {
    super(path, () => ({ bannerCollapsed: false }));
  }

  /** Merges `patch` into the state and returns the result. */
  merge(patch: Partial<KeyState>): Promise<KeyState> {
    return this.update((state) => Object.assign(state, patch));
  }
}
