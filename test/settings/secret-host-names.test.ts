// A saved password is kept for the same server however its host is spelled, and refused for another.
import { describe, expect, it } from 'vitest';
import { applySettingsUpdate, hostKey, withDefaults } from '../../agent/settings/model';
import { SettingsUpdate } from '../../shared/api/settings';

function savedSftp(host: string) {
  const s = withDefaults(undefined);
  s.offsite.sftp = {
    ...s.offsite.sftp,
    enabled: true,
    host,
    port: 22,
    username: 'gem',
    remotePath: '/backups',
    auth: { password: 'saved-password' },
  } as typeof s.offsite.sftp;
  return s;
}

/** The PUT body the page sends: the host as typed, the password echoed as `{set: true}`. */
const put = (host: string) =>
  SettingsUpdate.parse({
    offsite: {
      sftp: {
        enabled: true,
        host,
        port: 22,
        username: 'gem',
        remotePath: '/backups',
        auth: { password: { set: true } },
      },
    },
  });

const passwordAfter = (saved: string, typed: string) => {
  const next = applySettingsUpdate(savedSftp(saved), put(typed)).offsite.sftp.auth;
  return next && 'password' in next ? next.password : undefined;
};

describe('the host a saved password belongs to', () => {
  it.each([
    ['nas.example.com', '  NAS.Example.com '],
    ['nas.example.com', 'nas.example.com.'],
    ['fd00::10', '[fd00::10]'],
    ['[fd00::10]', 'fd00:0:0:0:0:0:0:10'],
    ['FD00::A', 'fd00::a'],
  ])('keeps it from %s to %s (the same server)', (saved, typed) => {
    expect(passwordAfter(saved, typed)).toBe('saved-password');
  });

  it.each([
    ['nas.example.com', 'nas.example.net'],
    ['nas.example.com', 'nas.example.co'],
    ['fd00::10', 'fd00::11'],
    ['192.168.1.10', '192.168.1.100'],
  ])('refuses it from %s to %s (another server)', (saved, typed) => {
    expect(() => passwordAfter(saved, typed)).toThrow(
      'offsite.sftp.auth.password: enter the password again: the host changed',
    );
  });

  it('spells hosts as the resolver reads them', () => {
    expect(hostKey(' [FD00:0:0:0:0:0:0:10] ')).toBe('fd00::10');
    expect(hostKey('Nas.Example.com.')).toBe('nas.example.com');
    expect(hostKey('not:an:address')).toBe('not:an:address');
  });
});
