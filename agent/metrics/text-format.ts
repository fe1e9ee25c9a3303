/** Writing the Prometheus text exposition format 0.0.4: families with HELP/TYPE, escaped labels, histograms. */

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export type Labels = Record<string, string>;
type MetricType = 'gauge' | 'counter' | 'histogram';

export interface Sample {
  labels?: Labels;
  value: number;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Number.POSITIVE_INFINITY) return '+Inf';
  if (v === Number.NEGATIVE_INFINITY) return '-Inf';
  return String(v);
}

function labelText(labels: Labels | undefined): string {
  const entries = Object.entries(labels ?? {});
  if (!entries.length) return '';
  return `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}`;
}

/** Collects metric families and renders them; each family is written once, its samples together. */
export class MetricsText {
  private readonly lines: string[] = [];

  family(name: string, type: MetricType, help: string, samples: Sample[]): this {
    this.lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`);
    for (const s of samples) this.lines.push(`${name}${labelText(s.labels)} ${formatValue(s.value)}`);
    return this;
  }

  /** A histogram from its cumulative bucket counts (upper bounds ascending), sum and count. */
  histogram(name: string, help: string, h: HistogramData, labels: Labels = {}): this {
    this.lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} histogram`);
    h.bounds.forEach((le, i) => {
      this.lines.push(`${name}_bucket${labelText({ ...labels, le: formatValue(le) })} ${h.counts[i]}`);
    });
    this.lines.push(`${name}_bucket${labelText({ ...labels, le: '+Inf' })} ${h.count}`);
    this.lines.push(`${name}_sum${labelText(labels)} ${formatValue(h.sum)}`);
    this.lines.push(`${name}_count${labelText(labels)} ${h.count}`);
    return this;
  }

  toString(): string {
    return `${this.lines.join('\n')}\n`;
  }
}

interface HistogramData {
  bounds: number[];
  /** Cumulative: counts[i] = observations <= bounds[i]. */
  counts: number[];
  sum: number;
  count: number;
}

/** A histogram being filled. */
export class Histogram {
  private readonly data: HistogramData;

  constructor(bounds: number[]) {
    this.data = { bounds: [...bounds], counts: bounds.map(() => 0), sum: 0, count: 0 };
  }

  observe(value: number): void {
    this.data.bounds.forEach((le, i) => {
      if (value <= le) this.data.counts[i]!++;
    });
    this.data.sum += value;
    this.data.count++;
  }

  snapshot(): HistogramData {
    return structuredClone(this.data);
  }
}
