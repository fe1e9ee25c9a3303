/** Routes of the jobs: list, one, its server-sent events, cancel. */
import { Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { Agent } from '../../agent';
import { AppError } from '../../errors';
import type { JobEvent } from '../../jobs/runner';

export function jobRoutes(agent: Agent): Hono {
  const app = new Hono();

  app.get('/', (c) => c.json(agent.jobs.list()));

  app.get('/:id', (c) => {
    const job = agent.jobs.get(c.req.param('id'));
    if (!job) throw new AppError('not_found', 'no such job');
    return c.json(job);
  });

  app.get('/:id/events', (c) => {
    const id = c.req.param('id');
    const first = agent.jobs.get(id);
    if (!first) throw new AppError('not_found', 'no such job');
    // Hono answers HEAD with this handler and drops the body unread: a stream would block on its first
    // writes and keep its subscription as long as the job runs. A HEAD gets the headers only.
    if (c.req.method === 'HEAD') {
      return c.body(null, 200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    }
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
        await stream.writeSSE({ event: 'job', data: JSON.stringify(current) });
        // What the job announced before this stream began (which backup a push sends), as it was sent.
        for (const notice of earlier) {
          await stream.writeSSE({
            event: notice.name,
            data: JSON.stringify({ job: current, data: notice.data ?? null }),
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
              data: JSON.stringify({ job: event.job, data: event.data ?? null }),
            });
          } else {
            await stream.writeSSE({ event: 'job', data: JSON.stringify(event.job) });
            ended = Boolean(event.job.endedAt);
          }
        }
      } finally {
        off();
      }
    });
  });

  app.post('/:id/cancel', (c) => c.json(agent.jobs.cancel(c.req.param('id'))));

  return app;
}
