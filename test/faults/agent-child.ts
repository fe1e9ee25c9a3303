/**
 * A separate agent process that runs one backup or restore job and reports its phases on stdout,
 * one JSON line per change; it SIGKILLs itself when told to (KILL_PHASE + KILL_FRACTION) or is
 * killed from outside by the test: a real crash, with nothing flushed or cleaned up.
 */
import { openAgent } from '../../agent/agent';
import { startBackup } from '../../agent/backup/operations';
import { loadConfig } from '../../agent/config';
import { silentLogger } from '../../agent/log';
import { startRestore } from '../../agent/restore/restore';

const action = process.env.FAULT_ACTION ?? 'backup';
const killPhase = process.env.KILL_PHASE;
const killFraction = Number(process.env.KILL_FRACTION ?? 0);
const killAfterMs = Number(process.env.KILL_AFTER_MS ?? 0);
let armed = false;
let timer: NodeJS.Timeout | undefined;
const say = (line: object) => process.stdout.write(`${JSON.stringify({ t: performance.now(), ...line })}\n`);

const agent = await openAgent(loadConfig(), silentLogger);
let last = '';
const die = (phase: string, fraction: number) => {
  say({ event: 'suicide', phase, fraction });
  process.kill(process.pid, 'SIGKILL');
};
agent.jobs.subscribeAll((event) => {
  const { phase, bytesDone, bytesTotal } = event.job;
  const key = `${phase}`;
  if (key !== last) {
    // Progress is reported at most every 200 ms: a phase may end before its late fraction is ever
    // seen. Then the kill happens as the phase ends, which is still the late point asked for.
    if (killPhase && last === killPhase && (!armed || timer)) {
      // A timed kill that would land after its phase (a fast machine) lands at the phase's end instead.
      clearTimeout(timer);
      armed = true;
      die(last, 1);
    }
    last = key;
    say({ event: 'phase', phase, bytesDone, bytesTotal });
  }
  if (killPhase && phase === killPhase) {
    const fraction = bytesTotal ? (bytesDone ?? 0) / bytesTotal : 0;
    if (fraction >= killFraction && !armed) {
      armed = true;
      const now = () => die(agent.jobs.get(event.job.id)?.phase ?? phase, fraction);
      if (killAfterMs > 0) timer = setTimeout(now, killAfterMs);
      else now();
    }
  }
});
say({ event: 'started' });
const job =
  action === 'restore'
    ? await startRestore(agent, process.env.BACKUP_NAME ?? '')
    : await startBackup(agent, {
        kind: 'manual',
        // The envelope's chunk size (1 MiB by default): crash-backup.test.ts asks for smaller chunks, so that
        // a smaller backup still has as many byte points (a chunk is what the temp file grows by).
        ...(process.env.FAULT_CHUNK_SIZE ? { chunkSize: Number(process.env.FAULT_CHUNK_SIZE) } : {}),
      });
const done = await agent.jobs.waitFor(job.id);
say({ event: 'done', state: done.state, error: done.error });
await agent.close();
