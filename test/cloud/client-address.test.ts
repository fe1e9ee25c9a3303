// What the recovery rate limit counts by (a unit test of a pure function; the Worker under miniflare and
// the Node entry are tested with real requests in recover.test.ts and node.test.ts).
import { describe, expect, it } from 'vitest';
import { forwardedClient, rateLimitKey } from '../../cloud/auth/client-address';

describe('rateLimitKey', () => {
  it('keeps an IPv4 address, and takes an IPv4-mapped IPv6 one as its IPv4 address', () => {
    expect(rateLimitKey('203.0.113.9')).toBe('203.0.113.9');
    expect(rateLimitKey('::ffff:203.0.113.9')).toBe('203.0.113.9');
  });

  it('counts an IPv6 address by its /64, however it is written', () => {
    const key = '2001:db8:1:2::/64';
    for (const a of [
      '2001:db8:1:2::a',
      '2001:0db8:0001:0002:ffff:ffff:ffff:ffff',
      '2001:DB8:1:2:0:0:0:1',
      '2001:db8:1:2::1%eth0',
    ])
      expect(rateLimitKey(a), a).toBe(key);
    expect(rateLimitKey('2001:db8:1:3::1')).toBe('2001:db8:1:3::/64');
    expect(rateLimitKey('::1')).toBe('0:0:0:0::/64');
    expect(rateLimitKey('64:ff9b::198.51.100.1')).toBe('64:ff9b:0:0::/64');
  });

  it('keeps what is not an address as it is (one bucket for it)', () => {
    expect(rateLimitKey('unknown')).toBe('unknown');
    expect(rateLimitKey('1:2:3')).toBe('1:2:3');
    expect(rateLimitKey('1::2::3')).toBe('1::2::3');
  });
});

describe('forwardedClient', () => {
  it('takes the last X-Forwarded-For entry: the one the trusted proxy appended', () => {
    expect(forwardedClient('198.51.100.1, 203.0.113.9')).toBe('203.0.113.9');
    expect(forwardedClient(' 203.0.113.9 ')).toBe('203.0.113.9');
    expect(forwardedClient(undefined)).toBeUndefined();
    expect(forwardedClient('')).toBeUndefined();
  });

  it("drops the client's port a proxy adds (IP:port, [IPv6]:port): each connection is not a new client", () => {
    expect(forwardedClient('198.51.100.1, 203.0.113.9:51234')).toBe('203.0.113.9');
    expect(rateLimitKey(forwardedClient('203.0.113.9:51235')!)).toBe('203.0.113.9');
    expect(forwardedClient('[2001:db8:1:2::a]:443')).toBe('2001:db8:1:2::a');
    expect(forwardedClient('[2001:db8:1:2::a]')).toBe('2001:db8:1:2::a');
    expect(rateLimitKey(forwardedClient('[2001:db8:1:2::b]:50000')!)).toBe('2001:db8:1:2::/64');
    // A bare IPv6 address keeps its last group.
    expect(forwardedClient('2001:db8:1:2::a')).toBe('2001:db8:1:2::a');
  });
});
