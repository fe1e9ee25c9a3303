/** What the page needs to know about the keys: were they ever downloaded, and is the banner collapsed. */
import type { Logger } from '../log';
import { JsonStateFile } from '../system/json-state';

interface KeyState {
  lastDownloadedAt?: string;
  bannerCollapsed: boolean;
}

export class KeyStateStore extends JsonStateFile<KeyState> {
  /** Damaged, it is set aside (told to `log`): the page asks for the keys download again. */
  constructor(path: string, log: Logger) {
    super(path, () => ({ bannerCollapsed: false }), { setAsideDamaged: { log } });
  }

  /** Merges `patch` into the state and returns the result. */
  merge(patch: Partial<KeyState>): Promise<KeyState> {
    return this.update((state) => Object.assign(state, patch));
  }
}
