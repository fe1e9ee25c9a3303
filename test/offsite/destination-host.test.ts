// A destination's host as the settings accept it, handed to ssh2 and smbclient in the form they take.
import { describe, expect, it } from 'vitest';
import type { DestinationSettings } from '../../agent/offsite/destinations';
import { destinationOptions } from '../../agent/offsite/destinations';

const sftp = (host: string) =>
  ({
    enabled: true,
    host,
    username: 'gem',
    remotePath: '/backups',
    auth: { password: 'secret' },
  }) as unknown as DestinationSettings<'sftp'>;
const smb = (host: string) =>
  ({
    enabled: true,
    host,
    share: 'gem',
    username: 'gem',
    password: 'secret',
  }) as unknown as DestinationSettings<'smb'>;

describe('a destination host', () => {
  it('gives ssh2 and smbclient an [IPv6] address bare (both would look the bracketed form up as a name)', () => {
    expect(destinationOptions('sftp', sftp('[fd00::12]')).host).toBe('fd00::12');
    expect(destinationOptions('smb', smb(' [::1] ')).host).toBe('::1');
  });

  it('passes names, IPv4 and bare IPv6 addresses as they are', () => {
    for (const host of ['nas.local', '192.168.1.20', 'fd00::12']) {
      expect(destinationOptions('sftp', sftp(host)).host).toBe(host);
      expect(destinationOptions('smb', smb(host)).host).toBe(host);
    }
  });
});
