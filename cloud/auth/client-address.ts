/**
 * What the recovery rate limit counts by: an IPv4 address as it is, an IPv6 address by its /64 (one
 * home or one server gets a whole /64; counted per address it would get 2^64 separate limits).
 */
export function rateLimitKey(address: string): string {
  const text = address.trim().toLowerCase();
  // An IPv4 client on a dual-stack socket (::ffff:203.0.113.9) is that IPv4 address.
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(text);
  if (mapped) return mapped[1]!;
  if (!text.includes(':')) return text;
  const groups = expandIpv6(text.split('%')[0]!);
  return groups ? `${groups.slice(0, 4).join(':')}::/64` : text;
}

/** The eight 16-bit groups of an IPv6 address (no leading zeros), or undefined if it is not one. */
function expandIpv6(text: string): string[] | undefined {
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parse = (part: string) => (part === '' ? [] : part.split(':'));
  const head = parse(halves[0]!);
  const tail = halves.length === 2 ? parse(halves[1]!) : [];
  // An embedded IPv4 tail (64:ff9b::198.51.100.1) is two groups.
  const last = tail.length > 0 ? tail : head;
  const dotted = last.at(-1);
  if (dotted?.includes('.')) {
    const octets = dotted.split('.').map(Number);
    if (octets.length !== 4 || octets.some((o) => !Number.isInteger(o) || o < 0 || o > 255)) return undefined;
    last.splice(
      -1,
      1,
      ((octets[0]! << 8) | octets[1]!).toString(16),
      ((octets[2]! << 8) | octets[3]!).toString(16),
    );
  }
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail];
  if (!groups.every((g) => /^[0-9a-f]{1,4}$/.test(g))) return undefined;
  return groups.map((g) => Number.parseInt(g, 16).toString(16));
}

/**
 * The client's address behind a reverse proxy the operator trusts (TRUST_PROXY=1 on the self-hosted
 * entry): the last X-Forwarded-For entry, the one that proxy appended; whatever the client sent comes
 * before it. Undefined when there is none. A port some proxies add (`203.0.113.9:51234`,
 * `[2001:db8::1]:443`) is dropped: counted with it, each new connection would be a new client.
 */
export function forwardedClient(header: string | undefined): string | undefined {
  const last = header?.split(',').at(-1)?.trim();
  if (!last) return undefined;
  const ported = /^(\d{1,3}(?:\.\d{1,3}){3}):\d+$/.exec(last) ?? /^\[([^\]]+)\](?::\d+)?$/.exec(last);
  return ported ? ported[1]! : last;
}
