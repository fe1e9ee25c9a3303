// Medians, ratios against their targets, and the table: for the terminal and for bench/RESULTS.md.

/** One timed run. `work` is what throughput is counted over: the database for backup/restore, the file otherwise. */
export interface Sample {
  ms: number;
  maxRssBytes: number;
  /** Output (or input) file size. */
  bytes: number;
  work: number;
  /** Agent phases: name and start, ms after the operation began. */
  phases?: Array<[string, number]>;
  /** Agent steps with their duration in ms (the restore's), as it logged them. */
  steps?: Array<[string, number]>;
}

export interface Comparison {
  name: string;
  labels: { agent: string; plain: string };
  agent: Sample[];
  plain: Sample[];
  /** Set when a run failed: the comparison stopped there. */
  error?: string;
}

export interface Row {
  name: string;
  label: string;
  seconds: number;
  runs: number[];
  mbPerSecond: number;
  bytes: number;
  peakRssMB: number;
}

export interface Ratio {
  what: string;
  value: string;
  target: string;
  ok: boolean;
}

export interface Summary {
  ratios: Ratio[];
  rows: Row[];
}

const MB = 1e6;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function row(name: string, label: string, samples: Sample[]): Row {
  const ms = median(samples.map((s) => s.ms));
  return {
    name,
    label,
    seconds: ms / 1000,
    runs: samples.map((s) => Math.round(s.ms) / 1000),
    mbPerSecond: median(samples.map((s) => s.work)) / MB / (ms / 1000),
    bytes: median(samples.map((s) => s.bytes)),
    peakRssMB: Math.max(...samples.map((s) => s.maxRssBytes)) / 1048576,
  };
}

/** The rows of the table and the ratios that matter, each with its target. */
export function summarize(comparisons: Comparison[]): Summary {
  const rows: Row[] = [];
  const ratios: Ratio[] = [];
  for (const c of comparisons) {
    if (c.error || c.agent.length === 0 || c.plain.length === 0) {
      ratios.push({
        what: c.name,
        value: `failed: ${c.error ?? 'no runs'}`.slice(0, 160),
        target: '',
        ok: false,
      });
      continue;
    }
    const a = row(c.name, c.labels.agent, c.agent);
    const b = row(c.name, c.labels.plain, c.plain);
    rows.push(a, b);
    const time = a.seconds / b.seconds;
    if (c.name === 'backup') {
      ratios.push({
        what: 'backup time / pg_dump -Fc',
        value: `${time.toFixed(2)} ×`,
        target: '≤ 0.80 ×',
        ok: time <= 0.8,
      });
      const size = a.bytes / b.bytes;
      ratios.push({
        what: 'backup size / pg_dump -Fc',
        value: `${size.toFixed(2)} ×`,
        target: '≤ 1.15 ×',
        ok: size <= 1.15,
      });
    } else if (c.name === 'restore') {
      ratios.push({
        what: 'restore time / pg_restore -j 2',
        value: `${time.toFixed(2)} ×`,
        target: '≤ 1.10 ×',
        ok: time <= 1.1,
      });
    } else if (c.name === 'verify' || c.name === 'verify (warm)') {
      ratios.push({
        what:
          c.name === 'verify'
            ? 'verify throughput (a fresh agent process)'
            : 'verify throughput (an agent that has read a backup)',
        value: `${a.mbPerSecond.toFixed(0)} MB/s (cat: ${b.mbPerSecond.toFixed(0)} MB/s)`,
        target: '≥ 500 MB/s',
        ok: a.mbPerSecond >= 500,
      });
    } else {
      const speed = b.seconds / a.seconds;
      const target = c.name === 'dr push' ? '≥ 0.90 × (same Worker under Miniflare)' : '≥ 0.90 ×';
      ratios.push({
        what: `${c.name} throughput / ${c.labels.plain}`,
        value: `${speed.toFixed(2)} ×`,
        target,
        ok: speed >= 0.9,
      });
    }
  }
  const agentRss = rows.filter((r) => r.label.startsWith('agent')).map((r) => r.peakRssMB);
  if (agentRss.length) {
    const peak = Math.max(...agentRss);
    ratios.push({
      what: 'agent peak RSS (any operation)',
      value: `${peak.toFixed(0)} MB`,
      target: '≤ 150 MB',
      ok: peak <= 150,
    });
  }
  return { ratios, rows };
}

function table(headers: string[], lines: string[][], markdown: boolean): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const pad = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!));
  if (markdown) {
    // Padded as the formatter (biome) lays markdown tables out, so a recorded RESULTS.md stays clean.
    const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
    return [
      line(pad(headers)),
      line(widths.map((w) => '-'.repeat(w))),
      ...lines.map((l) => line(pad(l))),
    ].join('\n');
  }
  return [
    pad(headers).join('  '),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...lines.map((l) => pad(l).join('  ')),
  ].join('\n');
}

function ratioLines(summary: Summary): string[][] {
  return summary.ratios.map((r) => [r.ok ? 'ok' : 'MISSED', r.what, r.value, r.target]);
}

function rowLines(summary: Summary): string[][] {
  return summary.rows.map((r) => [
    r.label,
    r.seconds.toFixed(2),
    r.runs.map((n) => n.toFixed(1)).join(' / '),
    r.mbPerSecond.toFixed(0),
    (r.bytes / MB).toFixed(1),
    r.peakRssMB.toFixed(0),
  ]);
}

const ROW_HEADERS = ['operation', 'median s', 'runs s', 'MB/s', 'size MB', 'peak RSS MB'];

/** The terminal report: ratios first, then the table. */
export function renderTerminal(summary: Summary, machine: Record<string, unknown>): string {
  return [
    table(['', 'ratio', 'measured', 'target'], ratioLines(summary), false),
    '',
    table(ROW_HEADERS, rowLines(summary), false),
    '',
    Object.entries(machine)
      .map(([k, v]) => `${k}: ${v}`)
      .join('\n'),
  ].join('\n');
}

/** The same, as the figures section of bench/RESULTS.md. */
export function renderMarkdown(summary: Summary, machine: Record<string, unknown>): string {
  return [
    table(['', 'ratio', 'measured', 'target'], ratioLines(summary), true),
    '',
    table(ROW_HEADERS, rowLines(summary), true),
    '',
    Object.entries(machine)
      .map(([k, v]) => `- ${k}: ${v}`)
      .join('\n'),
    '',
  ].join('\n');
}
