// CommuCat browser light client (protocols/signaling-v1.md). No build step: served as is by assist
// mode at /client/. It asks /api/p2p/assist for ICE servers, signals over /api/v1/ws, opens a
// DataChannel to the node's WebRTC gateway (id "node") to send and receive messages, and can open
// direct DataChannels to other browsers in a room.
'use strict';

const $ = (id) => document.getElementById(id);
const SUBPROTOCOL = 'commucat-signaling.v1';
const TOKEN_PREFIX = 'commucat-token.';
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const STABLE_MS = 10000;
const DEVICE_KEY = 'commucat.device';
const CLOSE_REVOKED = 4003;
// A pairing code: ten symbols of Crockford base 32, dashes and spaces ignored.
const CODE_RE = /^[0-9A-HJKMNP-TV-Z]{10}$/;

const state = {
  token: null,
  ws: null,
  me: null,
  iceServers: [],
  rooms: new Set(),
  backoff: BACKOFF_MIN_MS,
  openedAt: 0,
  reconnectTimer: null,
  stopped: false,
  node: null, // { pc, dc }
  peers: new Map(), // id -> { pc, dc, room }
  lastSeq: 0,
  shown: new Set(), // inbox positions already shown
  ref: 0,
  syncCount: 0,
  queue: Promise.resolve(),
};

function log(text) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('log').prepend(li);
  while ($('log').children.length > 200) $('log').lastChild.remove();
}

function setState(id, text) {
  $(id).textContent = text;
}

function addMessage(text, cls, data = {}) {
  const li = document.createElement('li');
  li.textContent = text;
  li.className = cls;
  Object.assign(li.dataset, data);
  $('messages').append(li);
  $('messages').scrollTop = $('messages').scrollHeight;
  return li;
}

function hostPort(ip, port) {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

class AuthError extends Error {}

// ICE servers from the assist endpoint: the node's STUN responder and its TURN servers.
async function fetchAssist() {
  const r = await fetch('/api/p2p/assist', { headers: { Authorization: `Bearer ${state.token}` } });
  if (r.status === 401) throw new AuthError('the token was refused');
  if (!r.ok) throw new Error(`/api/p2p/assist: HTTP ${r.status}`);
  const a = await r.json();
  const servers = [];
  for (const c of a.ice.lite_candidates || []) servers.push({ urls: `stun:${hostPort(c.ip, c.port)}` });
  for (const s of a.ice.servers || []) {
    servers.push({ urls: s.urls, username: s.username, credential: s.credential });
  }
  state.iceServers = servers;
}

function sig(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

function normalisedCode(text) {
  // The whole link `commucat pair` printed works too.
  const at = text.indexOf('#pair=');
  if (at >= 0) text = text.slice(at + '#pair='.length);
  const c = text.toUpperCase().replace(/[\s-]/g, '').replace(/[IL]/g, '1').replace(/O/g, '0');
  return CODE_RE.test(c) ? c : null;
}

function savedDevice() {
  try {
    const d = JSON.parse(localStorage.getItem(DEVICE_KEY) || 'null');
    if (d && d.token && d.expires_at * 1000 > Date.now()) return d;
  } catch {
    // Unreadable: pair again.
  }
  localStorage.removeItem(DEVICE_KEY);
  return null;
}

function showDevice(d) {
  setState('device', d ? `paired as device ${d.device_id}` : 'not paired');
}

function forgetDevice(why) {
  localStorage.removeItem(DEVICE_KEY);
  showDevice(null);
  log(why);
}

// Redeems a pairing code for this device's credentials (POST /api/pairing/claim).
async function pair(code) {
  setState('signaling', 'pairing');
  const r = await fetch('/api/pairing/claim', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ code, name: `browser ${navigator.platform || ''}`.trim().slice(0, 64) }),
  });
  if (!r.ok) {
    let detail = `HTTP ${r.status}`;
    try {
      detail = (await r.json()).detail || detail;
    } catch {
      // Keep the status.
    }
    setState('signaling', r.status === 401 ? 'code refused' : 'pairing failed');
    log(`pairing: ${detail}`);
    return null;
  }
  const d = await r.json();
  localStorage.setItem(DEVICE_KEY, JSON.stringify(d));
  showDevice(d);
  log(`paired with node ${d.node} as device ${d.device_id}`);
  return d;
}

async function start() {
  const typed = $('token').value.trim();
  if (!typed) return;
  const code = normalisedCode(typed);
  if (code) {
    const d = await pair(code);
    if (!d) return;
    state.token = d.token;
  } else {
    state.token = typed;
  }
  $('token').value = '';
  await connect();
}

async function connect() {
  state.stopped = false;
  clearTimeout(state.reconnectTimer);
  if (state.ws) state.ws.close();
  await attempt();
}

async function attempt() {
  try {
    await fetchAssist();
  } catch (e) {
    if (e instanceof AuthError) {
      state.stopped = true;
      setState('signaling', 'token refused');
      if (savedDevice()) forgetDevice('the node no longer knows this device: pair it again (commucat pair)');
      else log('the token was refused: get a new one (commucat token issue) or pair (commucat pair)');
      return;
    }
    log(`assist: ${e.message}`);
    scheduleReconnect();
    return;
  }
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}/api/v1/ws`, [SUBPROTOCOL, TOKEN_PREFIX + state.token]);
  state.ws = ws;
  setState('signaling', 'connecting');
  ws.onopen = () => {
    state.openedAt = Date.now();
    setState('signaling', 'open');
    log('signaling open');
    for (const room of state.rooms) sig({ type: 'join', room });
  };
  ws.onmessage = (e) => {
    let m;
    try {
      m = JSON.parse(e.data);
    } catch {
      return;
    }
    // One at a time: a candidate must not overtake the offer it belongs to.
    state.queue = state.queue.then(() => onSignal(m)).catch((err) => log(`signal ${m.type}: ${err}`));
  };
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    if (e.code === CLOSE_REVOKED) {
      state.stopped = true;
      setState('signaling', 'revoked');
      // The node closes this device's gateway connection itself; the node channel shows it.
      forgetDevice('this device was unpaired on the node (its token is revoked): pair it again to use it');
      return;
    }
    setState('signaling', 'closed');
    log(`signaling closed (${e.code}${e.reason ? ' ' + e.reason : ''})`);
    if (!state.stopped) scheduleReconnect();
  };
}

// Exponential backoff 1 s … 30 s with jitter, reset after a connection that stayed up (spec §4).
function scheduleReconnect() {
  if (state.openedAt && Date.now() - state.openedAt >= STABLE_MS) state.backoff = BACKOFF_MIN_MS;
  state.openedAt = 0;
  const delay = state.backoff * (1 + Math.random() * 0.2);
  state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
  log(`reconnecting in ${(delay / 1000).toFixed(1)} s`);
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(attempt, delay);
}

async function onSignal(m) {
  switch (m.type) {
    case 'welcome':
      state.me = m.payload.id;
      setState('me', state.me);
      state.lastSeq = Number(localStorage.getItem(`commucat.lastSeq.${state.me}`) || 0);
      if (m.payload.gateway) await startNode();
      else log('this node has no WebRTC gateway');
      break;
    case 'peer-list':
      for (const id of m.payload.peers) addPeer(id, m.room);
      break;
    case 'peer-joined':
      addPeer(m.from, m.room);
      break;
    case 'peer-left':
      removePeer(m.from);
      break;
    case 'offer':
      await answerPeer(m.from, m.room, m.payload);
      break;
    case 'answer':
      if (m.from === 'node') {
        if (state.node) await state.node.pc.setRemoteDescription(m.payload);
      } else if (state.peers.has(m.from)) {
        await state.peers.get(m.from).pc.setRemoteDescription(m.payload);
      }
      break;
    case 'ice-candidate': {
      const target = m.from === 'node' ? state.node : state.peers.get(m.from);
      if (target && m.payload) await target.pc.addIceCandidate(m.payload);
      break;
    }
    case 'error':
      log(`error from ${m.from || 'server'}: ${m.payload.code}: ${m.payload.message}`);
      break;
    default:
      break;
  }
}

// The DataChannel to the node's gateway.
async function startNode() {
  if (state.node) state.node.pc.close();
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  const dc = pc.createDataChannel('commucat');
  const node = { pc, dc };
  state.node = node;
  setState('node', 'connecting');
  pc.onicecandidate = (e) => {
    if (e.candidate) sig({ type: 'ice-candidate', to: 'node', payload: e.candidate.toJSON() });
  };
  pc.onconnectionstatechange = () => {
    log(`node connection ${pc.connectionState}`);
    if (pc.connectionState === 'failed' && state.node === node) {
      setState('node', 'failed');
      // Try again while signaling is up; a reconnect of signaling offers anew anyway.
      setTimeout(() => {
        if (state.node === node && state.ws && state.ws.readyState === WebSocket.OPEN) startNode();
      }, 2000);
    }
  };
  dc.onopen = () => {
    setState('node', 'open');
    log('node channel open');
    state.syncCount = 0;
    dc.send(JSON.stringify({ type: 'sync', after: state.lastSeq }));
  };
  dc.onclose = () => {
    if (state.node === node) setState('node', 'closed');
  };
  dc.onmessage = (e) => {
    try {
      onNodeMessage(JSON.parse(e.data));
    } catch (err) {
      log(`node message: ${err}`);
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  sig({ type: 'offer', to: 'node', payload: pc.localDescription.toJSON() });
}

function remember(seq) {
  if (seq > state.lastSeq) {
    state.lastSeq = seq;
    localStorage.setItem(`commucat.lastSeq.${state.me}`, String(seq));
  }
}

function onNodeMessage(m) {
  switch (m.type) {
    case 'message':
      state.syncCount += 1;
      if (!state.shown.has(m.seq)) {
        state.shown.add(m.seq);
        const who = m.from_client ? `client ${m.from_client} via ${m.from}` : m.from;
        addMessage(`${who}: ${m.body}`, 'received', { from: m.from, seq: String(m.seq) });
      }
      remember(m.seq);
      break;
    case 'synced':
      remember(m.up_to);
      if (state.syncCount >= 500) {
        state.syncCount = 0;
        state.node.dc.send(JSON.stringify({ type: 'sync', after: state.lastSeq }));
      }
      break;
    case 'queued': {
      const li = document.querySelector(`#messages li[data-ref="${m.ref}"]`);
      if (li) Object.assign(li.dataset, { state: 'queued', id: m.id });
      break;
    }
    case 'delivered': {
      const li = document.querySelector(`#messages li[data-id="${m.id}"]`);
      if (li) {
        li.dataset.state = 'delivered';
        li.textContent += ' ✓';
      }
      break;
    }
    case 'error':
      log(`node: ${m.message}`);
      addMessage(`error: ${m.message}`, 'error');
      break;
    default:
      break;
  }
}

function sendViaNode() {
  const to = $('to').value.trim();
  const body = $('body').value;
  const client = $('client').value.trim();
  if (!to || !body) return;
  if (!state.node || state.node.dc.readyState !== 'open') {
    log('the node channel is not open');
    return;
  }
  state.ref += 1;
  const msg = { type: 'send', to, body, ref: state.ref };
  if (client) msg.client = client;
  addMessage(`me → ${to}: ${body}`, 'sent', { ref: String(state.ref), state: 'sending' });
  state.node.dc.send(JSON.stringify(msg));
  $('body').value = '';
}

// Rooms and direct browser-to-browser channels.
function addPeer(id, room) {
  if (!id || id === state.me || document.querySelector(`#peers li[data-peer="${id}"]`)) return;
  const li = document.createElement('li');
  li.dataset.peer = id;
  li.dataset.room = room;
  li.dataset.state = 'idle';
  li.append(`${id} `);
  const b = document.createElement('button');
  b.textContent = 'connect';
  b.onclick = () => connectPeer(id, room).catch((e) => log(`connect ${id}: ${e}`));
  li.append(b);
  $('peers').append(li);
}

function removePeer(id) {
  const li = document.querySelector(`#peers li[data-peer="${id}"]`);
  if (li) li.remove();
  const p = state.peers.get(id);
  if (p) p.pc.close();
  state.peers.delete(id);
}

function peerState(id, s) {
  const li = document.querySelector(`#peers li[data-peer="${id}"]`);
  if (li) li.dataset.state = s;
}

function newPeer(id, room) {
  const old = state.peers.get(id);
  if (old) old.pc.close();
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  const p = { pc, dc: null, room };
  state.peers.set(id, p);
  pc.onicecandidate = (e) => {
    if (e.candidate) sig({ type: 'ice-candidate', to: id, room, payload: e.candidate.toJSON() });
  };
  pc.ondatachannel = (e) => setupDirect(id, p, e.channel);
  return p;
}

function setupDirect(id, p, dc) {
  p.dc = dc;
  dc.onopen = () => {
    peerState(id, 'open');
    log(`direct channel to ${id} open`);
  };
  dc.onclose = () => peerState(id, 'closed');
  dc.onmessage = (e) => addMessage(`${id} (direct): ${e.data}`, 'direct', { from: id });
}

async function connectPeer(id, room) {
  const p = newPeer(id, room);
  setupDirect(id, p, p.pc.createDataChannel('direct'));
  peerState(id, 'connecting');
  await p.pc.setLocalDescription(await p.pc.createOffer());
  sig({ type: 'offer', to: id, room, payload: p.pc.localDescription.toJSON() });
}

async function answerPeer(id, room, offer) {
  const p = newPeer(id, room);
  addPeer(id, room);
  peerState(id, 'connecting');
  await p.pc.setRemoteDescription(offer);
  await p.pc.setLocalDescription(await p.pc.createAnswer());
  sig({ type: 'answer', to: id, room, payload: p.pc.localDescription.toJSON() });
}

function sendDirect() {
  const text = $('direct-body').value;
  if (!text) return;
  let sent = 0;
  for (const [id, p] of state.peers) {
    if (p.dc && p.dc.readyState === 'open') {
      p.dc.send(text);
      addMessage(`me → ${id} (direct): ${text}`, 'sent direct-sent');
      sent += 1;
    }
  }
  if (!sent) log('no direct channel is open');
  $('direct-body').value = '';
}

function join() {
  const room = $('room').value.trim();
  if (!room) return;
  state.rooms.add(room);
  sig({ type: 'join', room });
}

$('connect').onclick = () => start().catch((e) => log(`${e}`));
$('send').onclick = sendViaNode;
$('body').onkeydown = (e) => {
  if (e.key === 'Enter') sendViaNode();
};
$('join').onclick = join;
$('direct-send').onclick = sendDirect;

const params = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
if (params.get('token') || fragment.get('pair')) {
  $('token').value = params.get('token') || fragment.get('pair');
  // Keep the token or code out of the address bar (and history) once read.
  history.replaceState(null, '', location.pathname);
  start().catch((e) => log(`${e}`));
} else {
  const d = savedDevice();
  showDevice(d);
  if (d) {
    state.token = d.token;
    connect().catch((e) => log(`${e}`));
  }
}
