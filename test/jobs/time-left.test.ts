// How long a step has left (agent/ui/format.js timeLeftEstimator, shared by the page and the CLI), fed
// explicit progress and times: the current step only, from recent progress, and nothing when it cannot
// say honestly (no total, rows or items, the step just began, stalled); and on the CLI's progress line
// (agent/cli/context.ts). The page's dialog shows it in test/browser/time-left.test.ts.
import { describe, expect, it, vi } from 'vitest';
import { createCliContext } from '../../agent/cli/context';
import { progressWords, type StepProgress } from '../../agent/cli/progress';

type Estimate = (progress: StepProgress, now: number) => string;
const { timeLeftEstimator } = (await import(new URL('../../agent/ui/format.js', import.meta.url).href)) as {
  timeLeftEstimator(): Estimate;
};

const MB = 1_000_000;
const upload = (bytesDone: number, bytesTotal = 100 * MB): StepProgress => ({
  phase: 'upload',
  bytesDone,
  bytesTotal,
  unit: 'bytes',
});

/** Feeds `estimate` a report every second from `from` (s) for `seconds` at `perSecond`, from `done`; the last answer and count. */
function feed(
  estimate: Estimate,
  options: { from: number; seconds: number; perSecond: number; done: number; total?: number },
): { text: string; done: number } {
  let { done } = options;
  let text = '';
  for (let s = 1; s <= options.seconds; s++) {
    done += options.perSecond;
    text = estimate(upload(done, options.total), (options.from + s) * 1000);
  }
  return { text, done };
}

describe('the time a step has left', () => {
  it('measures from 2 s into the step: the bytes its first moment takes at once do not make it look fast', () => {
    const estimate = timeLeftEstimator();
    // The step begins; 20 MB go at once (buffers on the way fill), then 1 MB/s.
    expect(estimate(upload(0), 0)).toBe('');
    expect(estimate(upload(20 * MB), 200)).toBe('');
    // 30 MB at 10.2 s: 70 MB to go at 1 MB/s (counting the first 20 MB, at 2.9 MB/s: 24 s).
    const { text } = feed(estimate, { from: 0.2, seconds: 10, perSecond: MB, done: 20 * MB });
    expect(text).toBe('about 1 min left');
  });

  it('says it from the pace, in seconds under a minute, then minutes, then hours', () => {
    const answer = (seconds: number, perSecond: number, total: number) =>
      feed(timeLeftEstimator(), { from: 0, seconds, perSecond, done: 0, total }).text;
    // 10 MB of 50 MB at 1 MB/s: 40 s.
    expect(answer(10, MB, 50 * MB)).toBe('about 40 s left');
    // 10 MB of 200 MB at 1 MB/s: 190 s.
    expect(answer(10, MB, 200 * MB)).toBe('about 3 min left');
    // 30 MB of 1000 MB at 1 MB/s: 970 s.
    expect(answer(30, MB, 1000 * MB)).toBe('about 16 min left');
    // 300 MB of 15000 MB at 3 MB/s: 4900 s, 82 min, said to ten minutes.
    expect(answer(100, 3 * MB, 15_000 * MB)).toBe('about 1 h 20 min left');
    // A step near its end: a few seconds.
    expect(answer(48, MB, 50 * MB)).toBe('about 5 s left');
  });

  it('counts down between reports, and a pace a little off does not make the figure jump', () => {
    const estimate = timeLeftEstimator();
    let { done } = feed(estimate, { from: 0, seconds: 10, perSecond: MB, done: 0, total: 50 * MB });
    // No new report for 5 s (not a stall yet): the same estimate, 5 s on.
    expect(estimate(upload(done, 50 * MB), 15_000)).toBe('about 35 s left');
    // From 10 s on the pace is 20% faster: the figure keeps counting down from its 40 s (ending at 50 s)
    // instead of following each new measure (35 s at 12 s, 30 s at 15 s).
    const steady = timeLeftEstimator();
    ({ done } = feed(steady, { from: 0, seconds: 10, perSecond: MB, done: 0, total: 50 * MB }));
    const shown: string[] = [];
    for (let s = 11; s <= 15; s++) {
      done += 1.2 * MB;
      shown.push(steady(upload(done, 50 * MB), s * 1000));
    }
    expect(shown).toEqual([
      'about 40 s left',
      'about 40 s left',
      'about 35 s left',
      'about 35 s left',
      'about 35 s left',
    ]);
  });

  it('measures the pace over the recent progress only: a slow start stops counting', () => {
    const estimate = timeLeftEstimator();
    // 40 s at 0.1 MB/s (connecting, say), then 40 s at 2 MB/s: 84 MB of 200 MB done at 80 s.
    const { done } = feed(estimate, { from: 0, seconds: 40, perSecond: 0.1 * MB, done: 0, total: 200 * MB });
    const { text } = feed(estimate, { from: 40, seconds: 40, perSecond: 2 * MB, done, total: 200 * MB });
    // 116 MB to go at 2 MB/s: 58 s (at the whole step's average pace, 84 MB in 80 s, it would be 110 s).
    expect(text).toBe('about 1 min left');
  });

  it('says nothing in the first seconds and the first few percent of a step', () => {
    const estimate = timeLeftEstimator();
    // 4 s at 5 MB/s: 20% done, but too short a time to tell a pace.
    expect(feed(estimate, { from: 0, seconds: 4, perSecond: 5 * MB, done: 0 }).text).toBe('');
    // 20 s at 0.05 MB/s of 100 MB: 1% done, too little to tell.
    const slow = timeLeftEstimator();
    expect(feed(slow, { from: 0, seconds: 20, perSecond: 0.05 * MB, done: 0 }).text).toBe('');
    // Past 2%: it says.
    // Past 2% (at 40 s), it says: 2.75 MB done at 55 s at 0.05 MB/s, 1945 s to go.
    expect(feed(slow, { from: 20, seconds: 35, perSecond: 0.05 * MB, done: MB }).text).toBe(
      'about 32 min left',
    );
  });

  it('says nothing once the step stalls, rather than a growing number, and again once it moves', () => {
    const estimate = timeLeftEstimator();
    const total = 50 * MB;
    const { done } = feed(estimate, { from: 0, seconds: 20, perSecond: MB, done: 0, total });
    expect(estimate(upload(done, total), 25_000)).toBe('about 25 s left');
    // No progress for more than 10 s: nothing.
    expect(estimate(upload(done, total), 31_000)).toBe('');
    expect(estimate(upload(done, total), 60_000)).toBe('');
    // It moves again: once the stall is out of the window, after 5 s of new progress, a figure again.
    const after = feed(estimate, { from: 60, seconds: 4, perSecond: MB, done, total });
    expect(after.text).toBe('');
    expect(feed(estimate, { from: 64, seconds: 2, perSecond: MB, done: after.done, total }).text).toBe(
      'about 25 s left',
    );
  });

  it('says nothing without a total, for rows, for items, or at the total', () => {
    const noTotal = timeLeftEstimator();
    const rows = timeLeftEstimator();
    const items = timeLeftEstimator();
    const full = timeLeftEstimator();
    const said: Record<string, string[]> = { noTotal: [], rows: [], items: [], full: [] };
    for (let s = 1; s <= 20; s++) {
      said['noTotal']!.push(noTotal({ phase: 'dump', bytesDone: s * MB, bytesTotal: 0 }, s * 1000));
      said['rows']!.push(
        rows({ phase: 'purging history', bytesDone: s * 1000, bytesTotal: 0, unit: 'rows' }, s * 1000),
      );
      said['items']!.push(items({ phase: 'stage', bytesDone: s, bytesTotal: 40, unit: 'items' }, s * 1000));
      said['full']!.push(full(upload(Math.min(100 * MB, s * 10 * MB)), s * 1000));
    }
    // Only the upload, while under way (from 8 s: 80 MB, 2 s to go); nothing once it reached its total.
    expect(said).toEqual({
      noTotal: Array(20).fill(''),
      rows: Array(20).fill(''),
      items: Array(20).fill(''),
      full: [...Array(7).fill(''), 'about 5 s left', 'about 5 s left', ...Array(11).fill('')],
    });
  });

  it('starts afresh at a new step, or when the count went back', () => {
    const estimate = timeLeftEstimator();
    feed(estimate, { from: 0, seconds: 20, perSecond: MB, done: 0 });
    // The next step, as fast or not: nothing until it shows its own pace.
    expect(estimate({ ...upload(30 * MB), phase: 'verify' }, 21_000)).toBe('');
    expect(estimate({ ...upload(60 * MB), phase: 'verify' }, 22_000)).toBe('');
    // The same step name, begun again (a retry): its count went back, so the earlier pace is gone.
    const retried = timeLeftEstimator();
    const { done } = feed(retried, { from: 0, seconds: 20, perSecond: MB, done: 0 });
    expect(retried(upload(done), 20_500)).not.toBe('');
    expect(retried(upload(3 * MB), 21_000)).toBe('');
    expect(retried(upload(4 * MB), 22_000)).toBe('');
  });

  it('joins the CLI’s line after the percentage', () => {
    expect(progressWords('upload', 36, 100, 'about 40 s left')).toBe(
      'Uploading to Cloud Disaster Recovery 36%, about 40 s left',
    );
    expect(progressWords('upload', 36, 100)).toBe('Uploading to Cloud Disaster Recovery 36%');
    expect(progressWords('dump', 5 * 1048576, 0, '')).toBe('Exporting the database 5.0 MiB');
  });

  it('is on the CLI’s line on a terminal, redrawn each second: counting down, gone on a stall', () => {
    // The terminal is stderr pretending to be one, its writes caught; the time is vitest's clock.
    const tty = Object.getOwnPropertyDescriptor(process.stderr, 'isTTY');
    Object.defineProperty(process.stderr, 'isTTY', { value: true, configurable: true });
    const written: string[] = [];
    const write = vi.spyOn(process.stderr, 'write').mockImplementation((text) => {
      written.push(String(text));
      return true;
    });
    vi.useFakeTimers({ now: 0 });
    const shown = () => written.at(-1)?.replace('\r\x1b[K', '');
    try {
      const cli = createCliContext([]);
      cli.progress('upload', 0, 50 * MB, 'bytes');
      for (let s = 1; s <= 10; s++) {
        vi.advanceTimersByTime(1000);
        cli.progress('upload', s * MB, 50 * MB, 'bytes');
      }
      // Measured from what the line showed at 2 s (1 MB) to 10 MB at 10 s: 40 MB to go at 1.125 MB/s.
      expect(shown()).toBe('Uploading to Cloud Disaster Recovery 20%, about 35 s left');
      // No report for 5 s: the line counts down by itself (from the 33 s it said); past 10 s it stops saying.
      vi.advanceTimersByTime(5000);
      expect(shown()).toBe('Uploading to Cloud Disaster Recovery 20%, about 30 s left');
      vi.advanceTimersByTime(6000);
      expect(shown()).toBe('Uploading to Cloud Disaster Recovery 20%');
      // A restore's loading, counted in items: no estimate, however steady.
      for (let s = 1; s <= 10; s++) {
        vi.advanceTimersByTime(1000);
        cli.progress('stage', s, 40, 'items');
      }
      expect(shown()).toBe('Loading the backup (current data untouched) 25%');
      cli.endProgress();
      const count = written.length;
      vi.advanceTimersByTime(5000);
      expect(written.length).toBe(count);
    } finally {
      vi.useRealTimers();
      write.mockRestore();
      if (tty) Object.defineProperty(process.stderr, 'isTTY', tty);
      else delete (process.stderr as { isTTY?: boolean }).isTTY;
    }
  });
});
