// A separate process racing for the job lock: on 'go' it tries once and reports; it holds until 'release'.
import { acquireLock } from '../../agent/jobs/lock';

const take = acquireLock;

let release: (() => Promise<void>) | undefined;
process.on('message', async (m: { go?: string; release?: boolean; exit?: boolean }) => {
  if (m.go) {
    try {
      release = await take(m.go, 'race');
      process.send?.({ got: true });
    } catch (error) {
      process.send?.({ got: false, code: (error as { code?: string }).code });
    }
  } else if (m.release) {
    await release?.();
    release = undefined;
    process.send?.({ released: true });
  } else if (m.exit) {
    process.exit(0);
  }
});
process.send?.({ ready: true });
