import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import {
  makeVerifier,
  md5Response,
  SCRAM_MECHANISM,
  ScramClient,
  ScramServer,
} from '../../src/engines/postgres/scram';

// randomBytes stays real unless a test asks for one fixed value (to pin the client nonce).
jest.mock('node:crypto', () => {
  const actual = jest.requireActual<typeof import('node:crypto')>('node:crypto');
  return { ...actual, randomBytes: jest.fn(actual.randomBytes) };
});

const hmac = (key: Buffer, data: string): Buffer => createHmac('sha256', key).update(data).digest();
const sha256 = (data: Buffer): Buffer => createHash('sha256').update(data).digest();
const xor = (a: Buffer, b: Buffer): Buffer => Buffer.from(a.map((v, i) => v ^ (b[i] as number)));

/** Runs a full exchange; returns the messages so tests can inspect or tamper with them. */
function exchange(clientPassword: string, serverPassword: string) {
  const client = new ScramClient(clientPassword);
  const server = new ScramServer(makeVerifier(serverPassword, Buffer.from('0123456789abcdef'), 4096));
  const clientFirst = client.first();
  const serverFirst = server.first(clientFirst);
  const clientFinal = client.final(serverFirst);
  return { client, server, clientFirst, serverFirst, clientFinal };
}

describe('SCRAM-SHA-256', () => {
  it('names the mechanism', () => {
    expect(SCRAM_MECHANISM).toBe('SCRAM-SHA-256');
  });

  it('client and server agree on the same password, and each verifies the other', () => {
    for (const password of ['pencil', 'pässwörd ✓ with spaces, commas=and equals', 'x'.repeat(200)]) {
      const { client, server, clientFirst, serverFirst, clientFinal } = exchange(password, password);
      expect(clientFirst).toMatch(/^n,,n=\*,r=[A-Za-z0-9+/=]+$/);
      const nonce = /r=([^,]+)/.exec(clientFirst)?.[1] as string;
      expect(serverFirst).toMatch(
        new RegExp(`^r=${nonce.replace(/[+/]/g, '\\$&')}[A-Za-z0-9+/=]+,s=[^,]+,i=4096$`),
      );
      expect(clientFinal).toMatch(/^c=biws,r=[^,]+,p=[A-Za-z0-9+/=]+$/);
      const serverFinal = server.final(clientFinal);
      expect(serverFinal).toMatch(/^v=[A-Za-z0-9+/=]+$/);
      expect(() => client.verifyFinal(serverFinal)).not.toThrow();
    }
  });

  it('uses a fresh client nonce per exchange', () => {
    expect(new ScramClient('a').first()).not.toBe(new ScramClient('a').first());
  });

  it('server rejects a wrong password', () => {
    const { server, clientFinal } = exchange('wrong', 'right');
    expect(() => server.final(clientFinal)).toThrow('password authentication failed');
  });

  it('server rejects a tampered proof, a missing proof and a proof of the wrong length', () => {
    const { server, clientFinal } = exchange('pw', 'pw');
    const pIdx = clientFinal.lastIndexOf(',p=');
    const proof = Buffer.from(clientFinal.slice(pIdx + 3), 'base64');
    proof[0] = (proof[0] as number) ^ 1;
    expect(() => server.final(`${clientFinal.slice(0, pIdx)},p=${proof.toString('base64')}`)).toThrow(
      'password authentication failed',
    );
    expect(() => server.final(clientFinal.slice(0, pIdx))).toThrow('missing client proof');
    expect(() =>
      server.final(`${clientFinal.slice(0, pIdx)},p=${Buffer.alloc(8).toString('base64')}`),
    ).toThrow('password authentication failed');
  });

  it('server rejects a client-final with a different nonce or channel binding', () => {
    const { server, clientFinal } = exchange('pw', 'pw');
    expect(() => server.final(clientFinal.replace(/r=([^,]+)/, 'r=$1X'))).toThrow('nonce mismatch');
    expect(() => server.final(clientFinal.replace('c=biws', 'c=eSws'))).toThrow('channel binding mismatch');
  });

  it('server refuses channel-binding client-first messages and a missing nonce', () => {
    const server = new ScramServer(makeVerifier('pw'));
    expect(() => server.first('p=tls-server-end-point,,n=*,r=abc')).toThrow(/channel binding/);
    expect(() => server.first('n,,n=*')).toThrow('missing client nonce');
    expect(() => server.first(`n,,n=*,r=${'a'.repeat(257)}`)).toThrow('missing client nonce');
  });

  it('client rejects a tampered server signature', () => {
    const { client, server, clientFinal } = exchange('pw', 'pw');
    const serverFinal = server.final(clientFinal);
    const sig = Buffer.from(serverFinal.slice(2), 'base64');
    sig[31] = (sig[31] as number) ^ 0x80;
    expect(() => client.verifyFinal(`v=${sig.toString('base64')}`)).toThrow(
      'SCRAM server signature does not match',
    );
    expect(() => client.verifyFinal('v=')).toThrow('SCRAM server signature does not match');
    expect(() => client.verifyFinal('e=invalid-proof')).toThrow('SCRAM server signature does not match');
    expect(() => client.verifyFinal(`v=${sig.subarray(0, 16).toString('base64')}`)).toThrow(
      'SCRAM server signature does not match',
    );
  });

  it("client rejects a server that does not know the password (signature from another password's keys)", () => {
    const client = new ScramClient('pw');
    const liar = new ScramServer(makeVerifier('other'));
    const serverFirst = liar.first(client.first());
    const clientFinal = client.final(serverFirst);
    // Compute the signature a server holding the *other* verifier would send.
    const v = makeVerifier('other', Buffer.from(/s=([^,]+)/.exec(serverFirst)?.[1] as string, 'base64'));
    const authMessage = `${client.first().slice(3)},${serverFirst},${clientFinal.slice(0, clientFinal.lastIndexOf(',p='))}`;
    expect(() => client.verifyFinal(`v=${hmac(v.serverKey, authMessage).toString('base64')}`)).toThrow(
      'SCRAM server signature does not match',
    );
  });

  it('client rejects verifyFinal before final', () => {
    const client = new ScramClient('pw');
    expect(() => client.verifyFinal('v=AAAA')).toThrow('SCRAM server signature does not match');
  });

  it('client rejects a server nonce that does not extend its own', () => {
    const client = new ScramClient('pw');
    const ours = /r=([^,]+)/.exec(client.first())?.[1] as string;
    const s = Buffer.from('salt').toString('base64');
    expect(() => client.final(`r=someoneelse${ours},s=${s},i=4096`)).toThrow(
      'SCRAM server nonce does not extend ours',
    );
    expect(() => client.final(`r=${ours},s=${s},i=4096`)).toThrow('SCRAM server nonce does not extend ours');
    // Our nonce with its last character changed (never to itself), then more.
    const other = ours.endsWith('Z') ? 'Y' : 'Z';
    expect(() => client.final(`r=${ours.slice(0, -1)}${other}extra,s=${s},i=4096`)).toThrow(
      'SCRAM server nonce does not extend ours',
    );
  });

  it('client rejects a malformed server-first', () => {
    const client = new ScramClient('pw');
    const ours = /r=([^,]+)/.exec(client.first())?.[1] as string;
    for (const bad of [
      `r=${ours}x,i=4096`,
      `r=${ours}x,s=c2FsdA==`,
      `r=${ours}x,s=c2FsdA==,i=0`,
      `r=${ours}x,s=c2FsdA==,i=abc`,
      `r=${ours}x,s=c2FsdA==,i=1.5`,
      `s=c2FsdA==,i=4096`,
      '',
    ]) {
      expect(() => client.final(bad)).toThrow('malformed SCRAM server-first message');
    }
  });

  it('client computes the RFC 5802 proof (checked independently, with a fixed nonce)', () => {
    const fixed = Buffer.from('rOprNGfwEbeRWgbNEkqO', 'base64');
    (randomBytes as unknown as jest.Mock).mockImplementationOnce(() => Buffer.from(fixed));
    const client = new ScramClient('pencil');
    expect(client.first()).toBe('n,,n=*,r=rOprNGfwEbeRWgbNEkqO');
    // RFC 7677's server-first message.
    const serverFirst =
      'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096';
    const clientFinal = client.final(serverFirst);

    const salted = pbkdf2Sync(
      'pencil',
      Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64'),
      4096,
      32,
      'sha256',
    );
    const clientKey = hmac(salted, 'Client Key');
    const withoutProof = 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0';
    // Postgres clients send n=* (the user comes from the startup packet), so the auth message has n=*.
    const authMessage = `n=*,r=rOprNGfwEbeRWgbNEkqO,${serverFirst},${withoutProof}`;
    const proof = xor(clientKey, hmac(sha256(clientKey), authMessage));
    expect(clientFinal).toBe(`${withoutProof},p=${proof.toString('base64')}`);
    const serverSig = hmac(hmac(salted, 'Server Key'), authMessage);
    expect(() => client.verifyFinal(`v=${serverSig.toString('base64')}`)).not.toThrow();
  });

  it('makeVerifier matches the RFC 7677 test vector (user "user", password "pencil")', () => {
    const v = makeVerifier('pencil', Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64'), 4096);
    const authMessage =
      'n=user,r=rOprNGfwEbeRWgbNEkqO,' +
      'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,' +
      'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0';
    const rfcProof = Buffer.from('dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=', 'base64');
    // The server check: H(ClientProof XOR HMAC(StoredKey, AuthMessage)) == StoredKey.
    expect(sha256(xor(rfcProof, hmac(v.storedKey, authMessage)))).toEqual(v.storedKey);
    expect(hmac(v.serverKey, authMessage).toString('base64')).toBe(
      '6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
    );
    expect(v.iterations).toBe(4096);
  });

  it('server accepts an independently computed RFC 7677-style client (n=user)', () => {
    const salt = Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64');
    const server = new ScramServer(makeVerifier('pencil', salt, 4096));
    const clientFirstBare = 'n=user,r=rOprNGfwEbeRWgbNEkqO';
    const serverFirst = server.first(`n,,${clientFirstBare}`);
    expect(serverFirst.startsWith('r=rOprNGfwEbeRWgbNEkqO')).toBe(true);
    expect(serverFirst.endsWith(',s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096')).toBe(true);
    const r = /r=([^,]+)/.exec(serverFirst)?.[1] as string;
    const salted = pbkdf2Sync('pencil', salt, 4096, 32, 'sha256');
    const clientKey = hmac(salted, 'Client Key');
    const withoutProof = `c=biws,r=${r}`;
    const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
    const proof = xor(clientKey, hmac(sha256(clientKey), authMessage));
    const serverFinal = server.final(`${withoutProof},p=${proof.toString('base64')}`);
    expect(serverFinal).toBe(`v=${hmac(hmac(salted, 'Server Key'), authMessage).toString('base64')}`);
  });

  it("server accepts a 'y' gs2 header when the client echoes it", () => {
    const salt = Buffer.from('salty');
    const server = new ScramServer(makeVerifier('pw', salt, 4096));
    const serverFirst = server.first('y,,n=*,r=abc');
    const r = /r=([^,]+)/.exec(serverFirst)?.[1] as string;
    const salted = pbkdf2Sync('pw', salt, 4096, 32, 'sha256');
    const clientKey = hmac(salted, 'Client Key');
    const withoutProof = `c=${Buffer.from('y,,').toString('base64')},r=${r}`;
    const authMessage = `n=*,r=abc,${serverFirst},${withoutProof}`;
    const proof = xor(clientKey, hmac(sha256(clientKey), authMessage));
    expect(() => server.final(`${withoutProof},p=${proof.toString('base64')}`)).not.toThrow();
  });
});

describe('md5Response', () => {
  it("matches 'md5' + md5(md5(password + user) + salt) computed independently", () => {
    const salt = Buffer.from([1, 2, 3, 4]);
    const inner = createHash('md5').update('secretpostgres').digest('hex');
    const expected = 'md5' + createHash('md5').update(inner).update(salt).digest('hex');
    expect(md5Response('postgres', 'secret', salt)).toBe(expected);
    expect(expected).toMatch(/^md5[0-9a-f]{32}$/);
  });

  it('depends on user, password and salt', () => {
    const salt = Buffer.from([1, 2, 3, 4]);
    const base = md5Response('postgres', 'secret', salt);
    expect(md5Response('ostgres', 'secretp', salt)).toBe(base); // password+user concatenation is the input
    expect(md5Response('postgres', 'secreT', salt)).not.toBe(base);
    expect(md5Response('Postgres', 'secret', salt)).not.toBe(base);
    expect(md5Response('postgres', 'secret', Buffer.from([1, 2, 3, 5]))).not.toBe(base);
  });

  it('handles high salt bytes and UTF-8 passwords', () => {
    const salt = Buffer.from([0xff, 0x80, 0x00, 0x7f]);
    const inner = createHash('md5').update(Buffer.from('pässwordünïcode', 'utf8')).digest('hex');
    const expected =
      'md5' +
      createHash('md5')
        .update(Buffer.concat([Buffer.from(inner), salt]))
        .digest('hex');
    expect(md5Response('ünïcode', 'pässword', salt)).toBe(expected);
  });
});
