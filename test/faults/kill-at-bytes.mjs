// Preloaded into an agent process (NODE_OPTIONS=--import) by test/faults/crash-backup.test.ts: SIGKILLs
// the process once its backup has written (KILL_BYTES_STAGE=pack) or read back for its verify
// (KILL_BYTES_STAGE=verify) KILL_BYTES_FRACTION of the backup's KILL_BYTES_TOTAL bytes. It looks every
// millisecond, at the system's view of the process (no help from the agent's code): the size of the temp
// file it holds open for writing in the backups folder (KILL_BYTES_DIR), then, once that is closed, the
// bytes the process has read since (/proc/self/io rchar: the verify reads the temp by pread, which moves
// no file position). So a kill lands at a byte point of a phase however short the phase is, unlike the
// job's progress, reported at most every 200 ms. It prints the same `suicide` line as agent-child.ts.
import { fstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { isMainThread } from 'node:worker_threads';

const stage = process.env.KILL_BYTES_STAGE;
const fraction = Number(process.env.KILL_BYTES_FRACTION ?? 0);
const total = Number(process.env.KILL_BYTES_TOTAL ?? 0);
const dir = process.env.KILL_BYTES_DIR ?? '';

/** The open descriptors on a temp file in the backups folder: [fd, writable] pairs. */
function tempFds() {
  const out = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (dirname(target) !== dir || !basename(target).startsWith('.tmp-')) continue;
    try {
      const flags = Number.parseInt(
        /^flags:\s+(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))[1],
        8,
      );
      out.push([Number(fd), (flags & 3) !== 0]);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

const readSoFar = () => Number(/^rchar:\s+(\d+)/m.exec(readFileSync('/proc/self/io', 'utf8'))?.[1] ?? 0);

function die(at, bytes) {
  process.stdout.write(
    `${JSON.stringify({ t: performance.now(), event: 'suicide', phase: at, by: 'bytes', bytes, total })}\n`,
  );
  process.kill(process.pid, 'SIGKILL');
}

if (isMainThread && (stage === 'pack' || stage === 'verify') && total > 0 && dir) {
  let writerSeen = false;
  let readBase;
  const timer = setInterval(() => {
    const fds = tempFds();
    const writer = fds.find(([, writable]) => writable);
    if (writer) {
      writerSeen = true;
      if (stage !== 'pack') return;
      let size = 0;
      try {
        size = fstatSync(writer[0]).size; // what pack has written so far
      } catch {
        return;
      }
      if (size >= fraction * total) die('pack', size);
      return;
    }
    if (!writerSeen) return;
    // Pack ended between two looks without reaching the point: the kill lands at its end.
    if (stage === 'pack') die('pack', total);
    // Written and closed: what the process reads from now on is the temp read back (the fsync before
    // the verify opens it too, but reads nothing).
    readBase ??= readSoFar();
    const read = readSoFar() - readBase;
    const reading = fds.length > 0;
    // Its reader closed after most of it was read, before the point: the kill lands at the end of verify.
    if (read >= fraction * total || (!reading && read >= total / 2)) die('verify', read);
  }, 1);
  timer.unref();
}
