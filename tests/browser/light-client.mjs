// Drives Debian's Chromium (headless, through playwright-core) against the light client a CommuCat
// node serves at /client/. Called by tests/browser.rs; prints one JSON object per line on stdout
// ({"event": ...}); exits non-zero with the pages' logs on failure.
//
//   node light-client.mjs node <base-url> <token> <peer-id> <text> <expected-reply>
//     loads the page, waits for the DataChannel to the node, sends <text> to <peer-id>, prints
//     {"event":"queued"}, then waits for <expected-reply> to show up among the received messages.
//   node light-client.mjs p2p <base-url> <token-a> <token-b> <room> <text>
//     two pages join <room>; page A connects to page B directly and sends <text>; page B shows it.
//   node light-client.mjs pair <base-url> <code> <peer-id> <text> <expected-reply>
//     opens the light client's URL with the pairing code in its fragment ("paired"), sends <text> to
//     <peer-id> and waits for <expected-reply> ("reply"); reloads the page, which signs in again
//     with the credentials it kept ("restored"); then, after a line on stdin (the device was
//     revoked), requires signaling and the node channel to be closed within a second ("revoked").
//   node light-client.mjs reconnect <base-url> <token> <room>
//     the page joins <room> and opens the node channel ("ready"), sees signaling drop ("lost") and
//     come back with a new node channel ("back").
import { chromium } from 'playwright-core';

const WAIT_MS = 60_000;
// Where the pairing flow saves screenshots of the page, for a person to look at.
const SHOTS = process.env.SCREENSHOTS;
const [mode, base, ...rest] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    // WebRTC keeps Chromium's defaults (host candidates hidden behind mDNS names): connectivity
    // comes from the STUN responder and peer-reflexive candidates, as for a user's browser.
  ],
});

const pages = [];
function emit(event, extra = {}) {
  console.log(JSON.stringify({ event, ...extra }));
}

// A page in a context of its own at `path` of the node, its console kept for failure reports.
async function load(path) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  pages.push({ page, consoleLines });
  await page.goto(`${base}${path}`);
  return page;
}

async function open(token) {
  const page = await load(`/client/?token=${token}`);
  await page.waitForFunction(() => document.getElementById('signaling').textContent === 'open', null, {
    timeout: WAIT_MS,
  });
  return page;
}

async function nodeRoundTrip([token, peer, text, reply]) {
  const page = await open(token);
  await page.waitForFunction(() => document.getElementById('node').textContent === 'open', null, {
    timeout: WAIT_MS,
  });
  const me = await page.textContent('#me');
  emit('node-open', { me });
  await page.fill('#to', peer);
  await page.fill('#body', text);
  await page.click('#send');
  await page.waitForSelector('#messages li.sent[data-state="queued"], #messages li.sent[data-state="delivered"]', {
    timeout: WAIT_MS,
  });
  emit('queued');
  await page.waitForSelector('#messages li.sent[data-state="delivered"]', { timeout: WAIT_MS });
  emit('delivered');
  const received = page.locator('#messages li.received', { hasText: reply });
  await received.first().waitFor({ timeout: WAIT_MS });
  emit('reply', { text: await received.first().textContent() });
}

async function peerToPeer([tokenA, tokenB, room, text]) {
  const a = await open(tokenA);
  const b = await open(tokenB);
  const idA = await a.textContent('#me');
  const idB = await b.textContent('#me');
  for (const p of [a, b]) {
    await p.fill('#room', room);
    await p.click('#join');
  }
  await a.click(`#peers li[data-peer="${idB}"] button`, { timeout: WAIT_MS });
  await a.waitForSelector(`#peers li[data-peer="${idB}"][data-state="open"]`, { timeout: WAIT_MS });
  await b.waitForSelector(`#peers li[data-peer="${idA}"][data-state="open"]`, { timeout: WAIT_MS });
  emit('direct-open', { a: idA, b: idB });
  await a.fill('#direct-body', text);
  await a.click('#direct-send');
  const got = b.locator('#messages li.direct', { hasText: text });
  await got.first().waitFor({ timeout: WAIT_MS });
  emit('direct-message', { text: await got.first().textContent(), from: await got.first().getAttribute('data-from') });
}

function stdinLine() {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no go-ahead on stdin')), WAIT_MS);
    process.stdin.once('data', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// Evaluated in the page: signaling and the node channel are both open.
const BOTH_OPEN = () =>
  document.getElementById('signaling').textContent === 'open' &&
  document.getElementById('node').textContent === 'open';

async function pairAndRevoke([code, peer, text, reply]) {
  const page = await load(`/client/#pair=${code}`);
  await page.waitForFunction(BOTH_OPEN, null, { timeout: WAIT_MS });
  const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('commucat.device')));
  emit('paired', {
    me: await page.textContent('#me'),
    device: await page.textContent('#device'),
    url: page.url(),
    stored,
  });
  await page.fill('#to', peer);
  await page.fill('#body', text);
  await page.click('#send');
  await page.waitForSelector('#messages li.sent[data-state="delivered"]', { timeout: WAIT_MS });
  const received = page.locator('#messages li.received', { hasText: reply });
  await received.first().waitFor({ timeout: WAIT_MS });
  emit('reply', { text: await received.first().textContent() });
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/paired.png`, fullPage: true });

  // The credentials outlive the page: a reload signs in again without a code.
  await page.reload();
  await page.waitForFunction(BOTH_OPEN, null, { timeout: WAIT_MS });
  emit('restored', { me: await page.textContent('#me') });

  await stdinLine();
  await page.waitForFunction(
    () =>
      document.getElementById('signaling').textContent === 'revoked' &&
      document.getElementById('node').textContent !== 'open',
    null,
    { timeout: 1000 },
  );
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/unpaired.png`, fullPage: true });
  emit('revoked', {
    stored: await page.evaluate(() => localStorage.getItem('commucat.device')),
    log: await page.innerText('#log'),
  });
}

async function reconnect([token, room]) {
  const page = await open(token);
  await page.fill('#room', room);
  await page.click('#join');
  await page.waitForFunction(() => document.getElementById('node').textContent === 'open', null, {
    timeout: WAIT_MS,
  });
  emit('ready', { me: await page.textContent('#me') });
  await page.waitForFunction(() => document.getElementById('signaling').textContent !== 'open', null, {
    timeout: WAIT_MS,
  });
  emit('lost');
  await page.waitForFunction(
    () =>
      document.getElementById('signaling').textContent === 'open' &&
      document.getElementById('node').textContent === 'open',
    null,
    { timeout: WAIT_MS },
  );
  emit('back', { log: await page.innerText('#log') });
  // Stay connected until the test has looked at the room (a line on stdin).
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no go-ahead on stdin')), WAIT_MS);
    process.stdin.once('data', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

let code = 0;
try {
  if (mode === 'node') await nodeRoundTrip(rest);
  else if (mode === 'p2p') await peerToPeer(rest);
  else if (mode === 'reconnect') await reconnect(rest);
  else if (mode === 'pair') await pairAndRevoke(rest);
  else throw new Error(`unknown mode ${mode}`);
} catch (e) {
  code = 1;
  console.error(`FAILED: ${e.message}`);
  for (const [i, { page, consoleLines }] of pages.entries()) {
    console.error(`--- page ${i} log:\n${await page.innerText('#log').catch(() => '?')}`);
    console.error(`--- page ${i} messages:\n${await page.innerText('#messages').catch(() => '?')}`);
    console.error(`--- page ${i} console:\n${consoleLines.join('\n')}`);
  }
} finally {
  await browser.close();
}
process.exit(code);
