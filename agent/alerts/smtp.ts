/** A small SMTP client over node:net/tls: implicit TLS or STARTTLS, AUTH PLAIN/LOGIN, one message per connection. */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { hostname } from 'node:os';
import tls from 'node:tls';

export interface SmtpOptions {
  host: string;
  port: number;
  /** Implicit TLS from the first byte (port 465); otherwise STARTTLS is required when the server offers it. */
  secure: boolean;
  username?: string;
  password?: string;
  /** Extra TLS options (a private CA for a site's own mail server; tests). */
  tls?: tls.ConnectionOptions;
  timeoutMs?: number;
}

interface MailMessage {
  from: string;
  to: string[];
  subject: string;
  text: string;
}

/** An SMTP refusal or a broken conversation; `code` is the server's reply code when there is one. */
class SmtpError extends Error {
  constructor(
    message: string,
    readonly code?: number,
  ) {
    super(message);
    this.name = 'SmtpError';
  }
}

interface Reply {
  code: number;
  lines: string[];
}

/** The longest reply line read (SMTP's limit is 512 octets; servers' EHLO lines stay far below this). */
const MAX_REPLY_LINE = 64 * 1024;
/** The most lines one multi-line reply may have (an EHLO answer has a few dozen). */
const MAX_REPLY_LINES = 1000;
/** The most replies held before the client asked for them (SMTP answers one reply per command). */
const MAX_UNREAD_REPLIES = 100;

/** Reads SMTP replies (multi-line "250-..." until "250 ...") from a socket that may be upgraded to TLS. */
class Conversation {
  private buffer = '';
  private waiting: ((r: Reply | Error) => void) | undefined;
  private pending: Array<Reply | Error> = [];
  private lines: string[] = [];
  private overflowed = false;

  constructor(
    public socket: net.Socket,
    private readonly timeoutMs: number,
  ) {
    this.attach(socket);
  }

  /** Listens to `socket` from now on; anything read on a previous socket is dropped with it. */
  attach(socket: net.Socket): void {
    this.socket = socket;
    // Replies read before a TLS upgrade were plaintext: none of them may answer a command sent over TLS.
    this.buffer = '';
    this.pending = [];
    this.lines = [];
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (e) => this.push(new SmtpError(`SMTP connection failed: ${e.message}`)));
    socket.on('close', () => this.push(new SmtpError('the SMTP server closed the connection')));
  }

  /** Stops listening to the plain socket before the TLS upgrade takes it over. */
  detach(): void {
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('error');
    this.socket.removeAllListeners('close');
  }

  /** True when something beyond the replies already read has been received (a reply, a partial line, an error). */
  hasUnread(): boolean {
    return this.buffer.length > 0 || this.pending.length > 0 || this.lines.length > 0;
  }

  private onData(chunk: string): void {
    if (this.overflowed) return;
    this.buffer += chunk;
    let i = this.buffer.indexOf('\n');
    while (i >= 0) {
      const line = this.buffer.slice(0, i).replace(/\r$/, '');
      this.buffer = this.buffer.slice(i + 1);
      const m = /^(\d{3})([ -])(.*)$/.exec(line);
      if (!m) {
        this.push(new SmtpError(`unexpected SMTP reply: ${line.slice(0, 100)}`));
      } else {
        this.lines.push(m[3]!);
        if (this.lines.length > MAX_REPLY_LINES) {
          this.overflow(`a reply of more than ${MAX_REPLY_LINES} lines`);
          return;
        }
        if (m[2] === ' ') {
          this.push({ code: Number(m[1]), lines: this.lines });
          this.lines = [];
          if (this.pending.length > MAX_UNREAD_REPLIES) {
            this.overflow(`more than ${MAX_UNREAD_REPLIES} replies nobody asked for`);
            return;
          }
        }
      }
      i = this.buffer.indexOf('\n');
    }
    if (this.buffer.length > MAX_REPLY_LINE) this.overflow('a reply line that does not end');
  }

  /**
   * A server (or, before STARTTLS, anyone on the path) that sends a line or a multi-line reply with no
   * end would otherwise grow the buffer until the read timeout: hundreds of MB in that time, and a
   * string past V8's limit throws in this data handler, which ends the agent. The send fails instead.
   */
  private overflow(what: string): void {
    this.overflowed = true;
    this.buffer = '';
    this.lines = [];
    this.pending = [];
    this.push(new SmtpError(`the SMTP server sent ${what}: the send stops here`));
    this.socket.destroy();
  }

  private push(item: Reply | Error): void {
    const w = this.waiting;
    if (w) {
      this.waiting = undefined;
      w(item);
    } else this.pending.push(item);
  }

  /** The next reply; fails unless its code is one of `ok`. */
  async read(ok: number[], what: string): Promise<Reply> {
    const item =
      this.pending.shift() ??
      (await new Promise<Reply | Error>((resolve) => {
        const timer = setTimeout(
          () => resolve(new SmtpError(`the SMTP server did not answer ${what} in time`)),
          this.timeoutMs,
        );
        this.waiting = (r) => {
          clearTimeout(timer);
          resolve(r);
        };
      }));
    if (item instanceof Error) throw item;
    if (!ok.includes(item.code)) {
      throw new SmtpError(`the SMTP server refused ${what}: ${item.code} ${item.lines.join(' ')}`, item.code);
    }
    return item;
  }

  async command(line: string, ok: number[], what: string): Promise<Reply> {
    this.socket.write(`${line}\r\n`);
    return this.read(ok, what);
  }
}

function connect(options: SmtpOptions): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = options.secure
      ? tls.connect({ host: options.host, port: options.port, servername: options.host, ...options.tls })
      : net.connect({ host: options.host, port: options.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new SmtpError(`cannot reach the SMTP server ${options.host}:${options.port}: timed out`));
    }, options.timeoutMs ?? 20_000);
    socket.once(options.secure ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (e) => {
      clearTimeout(timer);
      reject(new SmtpError(`cannot reach the SMTP server ${options.host}:${options.port}: ${e.message}`));
    });
  });
}

function upgrade(socket: net.Socket, options: SmtpOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = tls.connect({ socket, servername: options.host, ...options.tls });
    // A server that answers 220 and never completes the handshake would hold the send, and with it
    // every alert check after it, for ever: the handshake has the same time as a reply.
    const timer = setTimeout(() => {
      secure.destroy();
      reject(new SmtpError('STARTTLS failed: the SMTP server did not complete the TLS handshake in time'));
    }, options.timeoutMs ?? 20_000);
    secure.once('secureConnect', () => {
      clearTimeout(timer);
      resolve(secure);
    });
    secure.once('error', (e) => {
      clearTimeout(timer);
      reject(new SmtpError(`STARTTLS failed: ${e.message}`));
    });
  });
}

const capabilities = (reply: Reply) => reply.lines.slice(1).map((l) => l.toUpperCase());

/** Header-safe text: no line breaks (a subject cannot inject headers); non-ASCII as RFC 2047 UTF-8. */
function headerText(text: string): string {
  const flat = text.replace(/[\r\n]+/g, ' ');
  return /^[\x20-\x7e]*$/.test(flat) ? flat : `=?UTF-8?B?${Buffer.from(flat).toString('base64')}?=`;
}

function checkAddress(address: string): string {
  if (!/^[^\s@<>,]+@[^\s@<>,]+$/.test(address)) throw new SmtpError(`not an e-mail address: ${address}`);
  return address;
}

/** The message in RFC 5322 form, lines CRLF, dot-stuffed for DATA. */
function formatMessage(message: MailMessage, date = new Date()): string {
  const domain = message.from.split('@')[1] ?? 'localhost';
  const head = [
    `From: ${message.from}`,
    `To: ${message.to.join(', ')}`,
    `Subject: ${headerText(message.subject)}`,
    `Date: ${date.toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: <${randomBytes(12).toString('hex')}@${domain}>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
  ];
  const body = message.text.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..');
  return `${head.join('\r\n')}\r\n\r\n${body}\r\n`;
}

/**
 * Sends one message. Credentials are only ever sent over TLS: a server that offers no STARTTLS on a
 * plain connection gets no AUTH (the send fails rather than leak the password).
 */
export async function sendMail(options: SmtpOptions, message: MailMessage): Promise<void> {
  const from = checkAddress(message.from);
  const to = message.to.map(checkAddress);
  if (!to.length) throw new SmtpError('no recipient');
  const timeout = options.timeoutMs ?? 20_000;
  const socket = await connect(options);
  const c = new Conversation(socket, timeout);
  const me = hostname().replace(/[^\w.-]/g, '') || 'localhost';
  try {
    await c.read([220], 'the greeting');
    let ehlo = await c.command(`EHLO ${me}`, [250], 'EHLO');
    let encrypted = options.secure;
    if (!encrypted && capabilities(ehlo).includes('STARTTLS')) {
      await c.command('STARTTLS', [220], 'STARTTLS');
      c.detach();
      // A server says nothing after its 220 until the TLS handshake: more plaintext there can only be
      // injected by someone on the path (STARTTLS response injection), so the send stops here.
      if (c.hasUnread()) {
        throw new SmtpError(
          'the SMTP server sent more data after its reply to STARTTLS: refused as a possible injection',
        );
      }
      c.attach(await upgrade(c.socket, options));
      encrypted = true;
      ehlo = await c.command(`EHLO ${me}`, [250], 'EHLO after STARTTLS');
    }
    if (options.username) {
      if (!encrypted)
        throw new SmtpError('the SMTP server offers no TLS: the password is not sent in the clear');
      const auth = capabilities(ehlo).find((l) => l.startsWith('AUTH')) ?? '';
      const password = options.password ?? '';
      if (/\bPLAIN\b/.test(auth)) {
        const token = Buffer.from(`\0${options.username}\0${password}`).toString('base64');
        await c.command(`AUTH PLAIN ${token}`, [235], 'the user name or password');
      } else if (/\bLOGIN\b/.test(auth)) {
        await c.command('AUTH LOGIN', [334], 'AUTH LOGIN');
        await c.command(Buffer.from(options.username).toString('base64'), [334], 'the user name');
        await c.command(Buffer.from(password).toString('base64'), [235], 'the user name or password');
      } else {
        throw new SmtpError('the SMTP server offers neither AUTH PLAIN nor AUTH LOGIN');
      }
    }
    await c.command(`MAIL FROM:<${from}>`, [250], 'the sender');
    for (const r of to) await c.command(`RCPT TO:<${r}>`, [250, 251], `the recipient ${r}`);
    await c.command('DATA', [354], 'DATA');
    c.socket.write(formatMessage({ ...message, from, to }));
    await c.command('.', [250], 'the message');
    await c.command('QUIT', [221], 'QUIT').catch(() => undefined);
  } finally {
    c.socket.destroy();
  }
}
