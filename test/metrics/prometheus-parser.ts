// A strict parser of the Prometheus text format 0.0.4, for tests: any line it does not understand is an error.

interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface PromFamily {
  name: string;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  help: string;
  samples: PromSample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function parseValue(text: string, line: number): number {
  if (text === '+Inf') return Number.POSITIVE_INFINITY;
  if (text === '-Inf') return Number.NEGATIVE_INFINITY;
  if (text === 'NaN') return Number.NaN;
  if (!/^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`line ${line}: bad value ${text}`);
  return Number(text);
}

function parseLabels(text: string, line: number): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf('=', i);
    if (eq < 0) throw new Error(`line ${line}: bad labels`);
    const name = text.slice(i, eq);
    if (!LABEL.test(name)) throw new Error(`line ${line}: bad label name ${name}`);
    if (name in labels) throw new Error(`line ${line}: duplicate label ${name}`);
    if (text[eq + 1] !== '"') throw new Error(`line ${line}: label value must be quoted`);
    let j = eq + 2;
    let value = '';
    for (;;) {
      const c = text[j];
      if (c === undefined) throw new Error(`line ${line}: unterminated label value`);
      if (c === '"') break;
      if (c === '\\') {
        const n = text[j + 1];
        if (n === 'n') value += '\n';
        else if (n === '\\' || n === '"') value += n;
        else throw new Error(`line ${line}: bad escape \\${n}`);
        j += 2;
      } else {
        value += c;
        j++;
      }
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ',') i++;
    else if (i < text.length) throw new Error(`line ${line}: expected , between labels`);
  }
  return labels;
}

/** Parses exposition text; checks TYPE before samples, one TYPE per family, samples grouped, histogram shape. */
export function parsePrometheusText(text: string): Map<string, PromFamily> {
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  const families = new Map<string, PromFamily>();
  let current: PromFamily | undefined;
  const closed = new Set<string>();
  text
    .slice(0, -1)
    .split('\n')
    .forEach((raw, index) => {
      const line = index + 1;
      if (raw.startsWith('#')) {
        const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(raw);
        if (!m) return; // a plain comment
        const [, kind, name, rest] = m as unknown as [string, string, string, string];
        if (!NAME.test(name)) throw new Error(`line ${line}: bad metric name ${name}`);
        if (closed.has(name) && current?.name !== name) throw new Error(`line ${line}: family ${name} split`);
        if (current && current.name !== name) closed.add(current.name);
        let family = families.get(name);
        if (!family) {
          family = { name, type: 'untyped', help: '', samples: [] };
          families.set(name, family);
        }
        if (kind === 'TYPE') {
          if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) {
            throw new Error(`line ${line}: bad type ${rest}`);
          }
          if (family.samples.length) throw new Error(`line ${line}: TYPE after samples of ${name}`);
          family.type = rest as PromFamily['type'];
        } else family.help = rest;
        current = family;
        return;
      }
      if (raw.trim() === '') throw new Error(`line ${line}: empty line`);
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(raw);
      if (!m) throw new Error(`line ${line}: not a sample: ${raw}`);
      const [, name, labelText, valueText] = m as unknown as [string, string, string | undefined, string];
      const base = current && name.startsWith(current.name) ? current : undefined;
      const suffix = base ? name.slice(base.name.length) : '';
      const allowed =
        base?.type === 'histogram'
          ? ['_bucket', '_sum', '_count']
          : base?.type === 'summary'
            ? ['', '_sum', '_count']
            : [''];
      if (!base || !allowed.includes(suffix))
        throw new Error(`line ${line}: sample ${name} outside its family`);
      base.samples.push({
        name,
        labels: labelText ? parseLabels(labelText, line) : {},
        value: parseValue(valueText, line),
      });
    });
  for (const f of families.values()) {
    if (f.type !== 'histogram') continue;
    const buckets = f.samples.filter((s) => s.name.endsWith('_bucket'));
    const inf = buckets.find((b) => b.labels.le === '+Inf');
    const count = f.samples.find((s) => s.name.endsWith('_count'));
    if (!inf || !count || inf.value !== count.value)
      throw new Error(`histogram ${f.name}: +Inf bucket must equal _count`);
    for (let i = 1; i < buckets.length; i++) {
      if (buckets[i]!.value < buckets[i - 1]!.value)
        throw new Error(`histogram ${f.name}: buckets not cumulative`);
    }
  }
  return families;
}
