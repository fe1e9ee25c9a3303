/** Routes of the jobs: list, one, its server-sent events, cancel. */
import { Hono } from 'hono';
import { type SSEStreamingApi, streamSSE } from 'hono/streaming';
import type { Agent } from '../../agent';
import { AppError } from '../../errors';
import type { Job, JobEvent } from '../../jobs/runner';

/**
 * A job as the API answers it: every field API.md lists, `endedAt` null while it runs (the runner leaves
 * it out until then, and a script reading `job['endedAt']` of a running job would meet no such key).
 */
const jobView = (job: Job) => ({ ...job, endedAt: job.endedAt ?? null });

export function jobRoutes(agent: Agent): Hono {
  const app = new Hono();

  // With the jobs of a CLI command run beside the service (its own process and runner), from jobs.json.
  app.get('/', async (c) => c.json((await agent.jobs.listWithOthers()).map(jobView)));

  app.get('/:id', async (c) => {
    const id = c.req.param('id');
    const job = agent.jobs.get(id) ?? (await agent.jobs.ofOtherProcess(id))?.job;
    if (!job) throw new AppError('not_found', 'no such job');
    return c.json(jobView(job));
  });

  app.get('/:id/events', async (c) => {
    const id = c.req.param('id');
    const first = agent.jobs.get(id);
    const other = first ? undefined : await agent.jobs.ofOtherProcess(id);
    if (!first && !other) throw new AppError('not_found', 'no such job');
    // Hono answers HEAD with this handler and drops the body unread: a stream would block on its first
    // writes and keep its subscription as long as the job runs. A HEAD gets the headers only.
    if (c.req.method === 'HEAD') {
      return c.body(null, 200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    }
    if (!first) return streamSSE(c, (stream) => followOtherProcess(agent, id, other!.job, stream));
    return streamSSE(c, async (stream) => {
      const queue: JobEvent[] = [];
      let wake: (() => void) | undefined;
      const off = agent.jobs.subscribe(id, (event) => {
        queue.push(event);
        wake?.();
      });
      stream.onAbort(() => {
        off();
        wake?.();
      });
      // Read as the subscription begins, with nothing awaited between: every event after is queued.
      const current = agent.jobs.get(id) ?? first;
      const earlier = current.endedAt ? [] : agent.jobs.noticesOf(id);
      try {
        await stream.writeSSE({ event: 'job', data: JSON.stringify(jobView(current)) });
        // What the job announced before this stream began (which backup a push sends), as it was sent.
        for (const notice of earlier) {
          await stream.writeSSE({
            event: notice.name,
            data: JSON.stringify({ job: jobView(current), data: notice.data ?? null }),
          });
        }
        let ended = Boolean(current.endedAt);
        while (!ended && !stream.aborted) {
          if (queue.length === 0) {
            await new Promise<void>((resolve) => {
              wake = resolve;
              setTimeout(resolve, 15_000).unref();
            });
            wake = undefined;
            if (queue.length === 0) {
              await stream.writeSSE({ event: 'ping', data: '{}' });
              continue;
            }
          }
          const event = queue.shift()!;
          if (event.type === 'notice') {
            await stream.writeSSE({
              event: event.name,
              data: JSON.stringify({ job: jobView(event.job), data: event.data ?? null }),
            });
          } else {
            await stream.writeSSE({ event: 'job', data: JSON.stringify(jobView(event.job)) });
            ended = Boolean(event.job.endedAt);
          }
        }
      } finally {
        off();
      }
    });
  });

  app.post('/:id/cancel', async (c) => {
    const id = c.req.param('id');
    const other = agent.jobs.get(id) ? undefined : await agent.jobs.ofOtherProcess(id);
    if (other && !other.job.endedAt) {
      throw new AppError(
        'unprocessable',
        `this job runs in another process on this machine (pid ${other.pid}, a gem-backup command): stop it there, with Ctrl-C`,
      );
    }
    // Ended, as for a job of this agent's own.
    if (other) throw new AppError('conflict', `job ${id} has already ended (${other.job.state})`);
    return c.json(jobView(agent.jobs.cancel(id)));
  });

  return app;
}

/** How often the events of another process's job look at jobs.json (written at each phase, every few seconds while the job runs, and at the end). */
const OTHER_PROCESS_POLL_MS = 1000;

/**
 * The events of a job another process runs (a CLI command): its record as jobs.json holds it, again
 * each time it changes there (a phase, the end), a ping when nothing changed for 15 s.
 */
async function followOtherProcess(
  agent: Agent,
  id: string,
  first: Job,
  stream: SSEStreamingApi,
): Promise<void> {
  let last = JSON.stringify(jobView(first));
  await stream.writeSSE({ event: 'job', data: last });
  let quiet = 0;
  let ended = Boolean(first.endedAt);
  while (!ended && !stream.aborted) {
    await stream.sleep(OTHER_PROCESS_POLL_MS);
    const job = (await agent.jobs.ofOtherProcess(id))?.job;
    // Gone from the file (pushed out by newer jobs) or taken over by this runner: nothing more to tell.
    if (!job) return;
    const text = JSON.stringify(jobView(job));
    if (text !== last) {
      last = text;
      quiet = 0;
      await stream.writeSSE({ event: 'job', data: text });
      ended = Boolean(job.endedAt);
      continue;
    }
    quiet += OTHER_PROCESS_POLL_MS;
    if (quiet >= 15_000) {
      quiet = 0;
      await stream.writeSSE({ event: 'ping', data: '{}' });
    }
  }
}
