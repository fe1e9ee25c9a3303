import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendMail } from '../../agent/alerts/smtp';
import { runProcess } from '../../agent/system/spawn';

/** A tiny SMTP server on loopback: STARTTLS with a self-signed certificate, AUTH PLAIN and LOGIN. */
interface Received {
  auth?: { user: string; pass: string };
  tlsBeforeAuth: boolean;
  from?: string;
  to: string[];
  data?: string;
}

let dir: string;
let cert: string;
let key: string;
let server: net.Server;
let port: number;
const received: Received[] = [];

function serve(socket: net.Socket, mechanisms: string): void {
  const r: Received = { to: [], tlsBeforeAuth: false };
  received.push(r);
  let current: net.Socket = socket;
  let buffer = '';
  let inData = false;
  let login: 'user' | 'pass' | undefined;
  let user = '';
  const send = (line: string) => current.write(`${line}\r\n`);
  const onLine = (line: string) => {
    if (inData) {
      if (line === '.') {
        inData = false;
        send('250 queued');
      } else r.data = `${r.data ?? ''}${line.startsWith('..') ? line.slice(1) : line}\n`;
      return;
    }
    if (login === 'user') {
      user = Buffer.from(line, 'base64').toString();
      login = 'pass';
      return send('334 UGFzc3dvcmQ6');
    }
    if (login === 'pass') {
      r.auth = { user, pass: Buffer.from(line, 'base64').toString() };
      login = undefined;
      return send('235 ok');
    }
    const [verb = '', ...rest] = line.split(' ');
    switch (verb.toUpperCase()) {
      case 'EHLO': {
        const secure = current !== socket;
        return current.write(
          `250-test.local\r\n${secure ? `250-AUTH ${mechanisms}\r\n` : '250-STARTTLS\r\n'}250 8BITMIME\r\n`,
        );
      }
      case 'STARTTLS': {
        send('220 go ahead');
        socket.removeAllListeners('data');
        const secure = new tls.TLSSocket(socket, { isServer: true, cert, key });
        current = secure;
        buffer = '';
        secure.on('data', onData);
        return;
      }
      case 'AUTH': {
        r.tlsBeforeAuth = current !== socket;
        if (rest[0] === 'PLAIN') {
          const [, u, p] = Buffer.from(rest[1]!, 'base64').toString().split('\0');
          r.auth = { user: u!, pass: p! };
          return send('235 ok');
        }
        login = 'user';
        return send('334 VXNlcm5hbWU6');
      }
      case 'MAIL':
        r.from = /<(.*)>/.exec(line)?.[1];
        return send('250 ok');
      case 'RCPT':
        r.to.push(/<(.*)>/.exec(line)![1]!);
        return send('250 ok');
      case 'DATA':
        inData = true;
        return send('354 end with .');
      case 'QUIT':
        send('221 bye');
        return current.end();
      default:
        return send('502 unknown');
    }
  };
  const onData = (chunk: Buffer) => {
    buffer += chunk.toString('utf8');
    let i = buffer.indexOf('\r\n');
    while (i >= 0) {
      const line = buffer.slice(0, i);
      buffer = buffer.slice(i + 2);
      onLine(line);
      i = buffer.indexOf('\r\n');
    }
  };
  socket.on('data', onData);
  socket.on('error', () => {});
  send('220 test.local ESMTP');
}

let mechanisms = 'PLAIN LOGIN';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-smtp-'));
  const made = await runProcess('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    join(dir, 'key.pem'),
    '-out',
    join(dir, 'cert.pem'),
    '-days',
    '1',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
  ]);
  if (made.code !== 0) throw new Error(`openssl failed (apt-get install -y openssl): ${made.stderr}`);
  cert = await readFile(join(dir, 'cert.pem'), 'utf8');
  key = await readFile(join(dir, 'key.pem'), 'utf8');
  server = net.createServer((s) => serve(s, mechanisms));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as net.AddressInfo).port;
});

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
  await rm(dir, { recursive: true, force: true });
});

const options = () => ({
  host: '127.0.0.1',
  port,
  secure: false,
  username: 'alerts@example.com',
  password: 'smtp pass: ünïcode',
  tls: { ca: cert },
  timeoutMs: 5000,
});

describe('the SMTP client', () => {
  it('upgrades with STARTTLS before AUTH PLAIN and delivers the message, dot-stuffed', async () => {
    await sendMail(options(), {
      from: 'gem@example.com',
      to: ['ops@example.com', 'oncall@example.com'],
      subject: '[FAILING] GEM Backup: offsite is failing',
      text: 'The SFTP server cannot be reached\n.a line starting with a dot',
    });
    const r = received.at(-1)!;
    expect(r.tlsBeforeAuth).toBe(true);
    expect(r.auth).toEqual({ user: 'alerts@example.com', pass: 'smtp pass: ünïcode' });
    expect(r.from).toBe('gem@example.com');
    expect(r.to).toEqual(['ops@example.com', 'oncall@example.com']);
    expect(r.data).toContain('Subject: [FAILING] GEM Backup: offsite is failing');
    expect(r.data).toContain('\n.a line starting with a dot\n');
  });

  it('uses AUTH LOGIN when that is all the server offers', async () => {
    mechanisms = 'LOGIN';
    await sendMail(options(), { from: 'gem@example.com', to: ['ops@example.com'], subject: 's', text: 't' });
    expect(received.at(-1)!.auth).toEqual({ user: 'alerts@example.com', pass: 'smtp pass: ünïcode' });
    mechanisms = 'PLAIN LOGIN';
  });

  it('refuses a server whose certificate it cannot trust, before sending the password', async () => {
    const { tls: _trusted, ...untrusted } = options();
    await expect(
      sendMail(untrusted, { from: 'gem@example.com', to: ['ops@example.com'], subject: 's', text: 't' }),
    ).rejects.toThrow(/STARTTLS failed/);
    expect(received.at(-1)!.auth).toBeUndefined();
  });

  it('refuses plaintext replies injected after the 220 to STARTTLS, so the alert is not counted as delivered', async () => {
    // A man in the middle appends replies to the plaintext 220; the real server refuses everything over TLS.
    const seenOverTls: string[] = [];
    const injector = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.write('220 real ESMTP\r\n');
      let buffer = '';
      const plain = (chunk: Buffer) => {
        buffer += chunk.toString('utf8');
        if (!buffer.endsWith('\r\n')) return;
        if (buffer.startsWith('EHLO')) socket.write('250-real\r\n250 STARTTLS\r\n');
        else if (buffer.startsWith('STARTTLS')) {
          socket.removeListener('data', plain);
          socket.write(
            '220 go ahead\r\n250 injected-ehlo\r\n250 injected-mail\r\n250 injected-rcpt\r\n354 injected-data\r\n250 injected-queued\r\n221 injected-bye\r\n',
          );
          const secure = new tls.TLSSocket(socket, { isServer: true, cert, key });
          secure.on('error', () => {});
          secure.on('data', (c: Buffer) => {
            seenOverTls.push(...c.toString('utf8').split('\r\n').filter(Boolean));
            secure.write('554 refused by the real server\r\n');
          });
        }
        buffer = '';
      };
      socket.on('data', plain);
    });
    await new Promise<void>((resolve) => injector.listen(0, '127.0.0.1', resolve));
    try {
      const { username: _u, password: _p, ...anonymous } = options();
      await expect(
        sendMail(
          { ...anonymous, port: (injector.address() as net.AddressInfo).port },
          { from: 'gem@example.com', to: ['ops@example.com'], subject: 's', text: 't' },
        ),
      ).rejects.toThrow(/more data after its reply to STARTTLS/);
      expect(seenOverTls.some((l) => l.startsWith('MAIL'))).toBe(false);
    } finally {
      await new Promise((resolve) => injector.close(resolve));
    }
  });

  it('gives up on a server that answers STARTTLS and never completes the TLS handshake, instead of waiting for ever', async () => {
    // It offers STARTTLS, says 220 and then reads the client's hello without a word: the send (and with
    // it every alert check after it) must not wait on it for good.
    const handshakes: net.Socket[] = [];
    const silent = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.write('220 silent ESMTP\r\n');
      socket.on('data', (chunk: Buffer) => {
        const line = chunk.toString('utf8');
        if (line.startsWith('EHLO')) socket.write('250-silent\r\n250 STARTTLS\r\n');
        else if (line.startsWith('STARTTLS')) {
          socket.write('220 go ahead\r\n');
          handshakes.push(socket);
          socket.removeAllListeners('data');
          socket.resume();
        }
      });
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      await expect(
        sendMail(
          { ...options(), port: (silent.address() as net.AddressInfo).port, timeoutMs: 2000 },
          { from: 'gem@example.com', to: ['ops@example.com'], subject: 's', text: 't' },
        ),
      ).rejects.toThrow(/STARTTLS failed: the SMTP server did not complete the TLS handshake in time/);
      expect(handshakes).toHaveLength(1);
    } finally {
      silent.close();
      for (const s of handshakes) s.destroy();
    }
  }, 30_000);
});
