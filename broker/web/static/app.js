/*
 * mailnet web client — app.js
 *
 * The browser front end of the mailnet message broker: sign-in, inbox with live
 * notifications, text conversations, compose, who's online, history search and
 * settings. It is one plain script (no framework, no build step, no external
 * resources) that talks to the same-origin HTTP API under /api/ with a bearer
 * token and to the live WebSocket at /api/ws, as described in docs/http-api.md.
 *
 * Security rule for this file: user-supplied content is only ever inserted with
 * textContent / text nodes (see h()), never with innerHTML.
 */
(function () {
  'use strict';

  // ---------------------------------------------------------------- constants

  const RICKROLL_URL = 'https://www.youtube.com/watch?v=dQw4w9WgXcQ';
  const PAGE_SIZE = 50;
  const WHO_REFRESH_MS = 15000;
  const PING_MS = 10000;
  const WS_DEAD_MS = 35000;          // no frame at all for this long: reconnect
  const WS_BACKOFF_MIN_MS = 500;
  const WS_BACKOFF_MAX_MS = 3000;    // low cap: a broker back from an outage is found within ~3 s
  const TOAST_MS = 6000;
  const TOAST_MAX = 3;               // more mail than this at once becomes one grouped notice
  const TOAST_CHARS = 90;
  const VIEWS = ['inbox', 'sent', 'texts', 'compose', 'who', 'history', 'settings'];
  // How far a message got with one recipient; receipts may come out of order: keep the furthest.
  const STATE_RANK = { queued: 0, delivered: 1, read: 2, acked: 3 };
  const STATE_WORD = { queued: 'Sent', delivered: 'Delivered', read: 'Read', acked: 'Acknowledged' };
  const ADMIN_LEDGER_REFRESH_MS = 5000;   // admins are not pushed others' receipts: they look again
  const KIND_LABEL = { email: 'Email', text: 'Text', announcement: 'Announcement', rickroll: 'Surprise' };
  const TOKEN_KEY = 'mailnet.token';
  const SEQ_KEY_PREFIX = 'mailnet.lastSeq.';
  const ME_KEY = 'mailnet.me';
  const OUTBOX_KEY_PREFIX = 'mailnet.outbox.';

  // Icon outlines (24x24, stroked). Static strings, never user data.
  const ICONS = {
    logo: 'M3 7l9 6 9-6M4 5h16a1 1 0 0 1 1 1v12a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1V6a1 1 0 0 1 1-1z',
    inbox: 'M3 13h5l1.5 3h5L16 13h5M5.5 5h13L21 13v5a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1v-5z',
    email: 'M3 7l9 6 9-6M4 5h16a1 1 0 0 1 1 1v12a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1V6a1 1 0 0 1 1-1z',
    text: 'M4 5h16a1 1 0 0 1 1 1v10a1 1 0 0 1-1 1H9l-5 4v-4H4a1 1 0 0 1-1-1V6a1 1 0 0 1 1-1zM8 10h8M8 13h5',
    announcement: 'M4 10v4a1 1 0 0 0 1 1h2l6 4V5L7 9H5a1 1 0 0 0-1 1zM17 9a4 4 0 0 1 0 6M19.5 6.5a7.5 7.5 0 0 1 0 11',
    rickroll: 'M4 11h16v9H4zM3 7h18v4H3zM12 7v13M12 7c-1.5-3-5-3.5-5-1s3 1 5 1zm0 0c1.5-3 5-3.5 5-1s-3 1-5 1z',
    compose: 'M4 20h4L19 9l-4-4L4 16zM13.5 6.5l4 4',
    who: 'M9 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8zM2 21v-1a6 6 0 0 1 6-6h2a6 6 0 0 1 6 6v1M17 4a4 4 0 0 1 0 7M22 21v-1a6 6 0 0 0-4-5.6',
    search: 'M11 18a7 7 0 1 0 0-14 7 7 0 0 0 0 14zM21 21l-5-5',
    settings: 'M12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM19.4 15a1.7 1.7 0 0 0 .3 1.8l.1.1a2 2 0 1 1-2.8 2.8l-.1-.1a1.7 1.7 0 0 0-1.8-.3 1.7 1.7 0 0 0-1 1.5V21a2 2 0 1 1-4 0v-.1a1.7 1.7 0 0 0-1.1-1.5 1.7 1.7 0 0 0-1.8.3l-.1.1a2 2 0 1 1-2.8-2.8l.1-.1a1.7 1.7 0 0 0 .3-1.8 1.7 1.7 0 0 0-1.5-1H3a2 2 0 1 1 0-4h.1a1.7 1.7 0 0 0 1.5-1.1 1.7 1.7 0 0 0-.3-1.8l-.1-.1a2 2 0 1 1 2.8-2.8l.1.1a1.7 1.7 0 0 0 1.8.3H9a1.7 1.7 0 0 0 1-1.5V3a2 2 0 1 1 4 0v.1a1.7 1.7 0 0 0 1 1.5 1.7 1.7 0 0 0 1.8-.3l.1-.1a2 2 0 1 1 2.8 2.8l-.1.1a1.7 1.7 0 0 0-.3 1.8V9a1.7 1.7 0 0 0 1.5 1H21a2 2 0 1 1 0 4h-.1a1.7 1.7 0 0 0-1.5 1z',
    logout: 'M15 4h4a1 1 0 0 1 1 1v14a1 1 0 0 1-1 1h-4M10 17l5-5-5-5M15 12H3',
    refresh: 'M20 11a8 8 0 0 0-14.9-3M4 4v4h4M4 13a8 8 0 0 0 14.9 3M20 20v-4h-4',
    send: 'M22 2L11 13M22 2l-7 20-4-9-9-4z',
    back: 'M15 18l-6-6 6-6',
    reply: 'M9 14L4 9l5-5M4 9h10a6 6 0 0 1 6 6v4',
    out: 'M7 17L17 7M8 7h9v9',
    in: 'M17 7L7 17M16 17H7V8',
    error: 'M12 3l10 18H2zM12 10v5M12 18v.01',
    ok: 'M20 6L9 17l-5-5',
    tick: 'M5 12.5l4.5 4.5L19 7',
    ticks: 'M2 12.5l4.5 4.5L16 7M11 15.5l1.5 1.5L22 7',
    archive: 'M3 4h18v4H3zM5 8v11a1 1 0 0 0 1 1h12a1 1 0 0 0 1-1V8M10 12h4',
    link: 'M10 14a5 5 0 0 0 7 0l3-3a5 5 0 0 0-7-7l-1 1M14 10a5 5 0 0 0-7 0l-3 3a5 5 0 0 0 7 7l1-1',
  };

  // ------------------------------------------------------------------- state

  const state = {
    token: null,
    me: null,                 // {username, role, prank_opt_out, unread}
    lastSeq: 0,               // highest mailbox seq this tab has seen
    inbox: [],                // entries, newest (highest seq) first
    inboxSeqs: new Set(),
    inboxHasMore: false,
    unread: 0,
    openSeq: null,            // entry shown in the reader
    view: 'inbox',
    conv: { user: null, ids: new Set() },
    convPartners: [],         // [{user, last}] newest first
    history: { items: [], query: null },
    who: [],
    knownUsers: new Set(),
    ws: null,
    wsWanted: false,
    wsBackoff: WS_BACKOFF_MIN_MS,
    wsRetryAt: 0,
    wsCountdown: null,
    offline: false,           // the live connection is down (outage or no network)
    needsReload: false,       // started while offline: load everything once back
    channel: null,            // BroadcastChannel to this user's other tabs
    composeTo: [],            // recipient chips
    wsRetryTimer: null,
    wsEverReady: false,
    pingTimer: null,
    wsLastFrame: 0,
    whoTimer: null,
    whoReloadTimer: null,
    pendingIds: {},           // slot -> {key, id}: client_msg_id reused on retry
    ending: false,
    showArchived: false,      // the inbox lists archived entries too (marked)
    replyTo: null,            // {message_id, subject}: the compose form sends a reply in its thread
    sent: { items: [], loaded: false, stale: false, hasMore: false, openId: null, ledgers: new Map(), refresh: new Map() },
    ledgerTimer: null,        // an admin's look at someone else's ledger, again every few seconds
  };

  // ----------------------------------------------------------- DOM helpers

  function $(id) { return document.getElementById(id); }

  /**
   * Create an element. props: class, text (textContent), dataset, on<event>,
   * anything else becomes an attribute. Children may be nodes or strings
   * (strings become text nodes, so they are never parsed as HTML).
   */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = String(v);
        else if (k === 'dataset') Object.assign(el.dataset, v);
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function icon(name, cls) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('class', 'icon' + (cls ? ' ' + cls : ''));
    svg.setAttribute('aria-hidden', 'true');
    const p = document.createElementNS(NS, 'path');
    p.setAttribute('d', ICONS[name] || ICONS.email);
    svg.append(p);
    return svg;
  }

  function fillIcons(root) {
    root.querySelectorAll('[data-icon]').forEach((el) => {
      if (!el.firstChild) el.append(icon(el.dataset.icon));
    });
  }

  function setText(id, text) { $(id).textContent = text; }

  function showMsg(el, text, kind) {
    el.textContent = text || '';
    el.hidden = !text;
    if (kind) el.dataset.state = kind; else delete el.dataset.state;
  }

  function avatarFor(name, cls) {
    const a = h('span', { class: 'avatar' + (cls ? ' ' + cls : ''), 'aria-hidden': 'true' });
    paintAvatar(a, name);
    return a;
  }

  function paintAvatar(el, name) {
    el.textContent = name ? name.charAt(0).toUpperCase() : '?';
    let hash = 0;
    for (const ch of String(name || '')) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    el.dataset.hue = name ? String(hash % 8) : 'x';
  }

  // ------------------------------------------------------------ formatting

  function parseTime(s) {
    if (!s) return null;
    const d = new Date(s);
    return isNaN(d.getTime()) ? null : d;
  }

  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  }

  /** Short time for lists: "14:05" today, "Nov 28" this year, else "2025-11-28". */
  function fmtShort(s) {
    const d = parseTime(s);
    if (!d) return '';
    const now = new Date();
    if (sameDay(d, now)) return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    const y = new Date(now); y.setDate(now.getDate() - 1);
    if (sameDay(d, y)) return 'Yesterday';
    if (d.getFullYear() === now.getFullYear()) return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
    return d.toISOString().slice(0, 10);
  }

  function fmtLong(s) {
    const d = parseTime(s);
    if (!d) return '';
    return d.toLocaleString([], { weekday: 'short', year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  }

  /** Seconds as "45s", "3m 12s", "2h 5m", "3d 4h". */
  function fmtDuration(sec) {
    let s = Math.max(0, Math.floor(Number(sec) || 0));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const hr = Math.floor(s / 3600); s -= hr * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return `${d}d ${hr}h`;
    if (hr) return `${hr}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function firstLine(s) {
    const t = String(s || '').trim();
    const i = t.indexOf('\n');
    return i >= 0 ? t.slice(0, i) : t;
  }

  function kindLabel(kind) { return KIND_LABEL[kind] || String(kind || 'Message'); }

  function kindPill(kind) {
    return h('span', { class: 'pill pill-' + safeKind(kind) }, icon(safeKind(kind)), kindLabel(kind));
  }

  function safeKind(kind) { return Object.prototype.hasOwnProperty.call(KIND_LABEL, kind) ? kind : 'email'; }

  function senderName(entry) {
    if (entry.direction === 'out') return 'You';
    return entry.sender == null ? 'someone' : entry.sender;
  }

  function otherParty(entry) {
    if (entry.direction === 'out') return (entry.recipients || [])[0] || null;
    return entry.sender;
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    // Fallback for non-secure contexts (plain http on a LAN address).
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  /**
   * client_msg_id for a send slot: the same content retried (e.g. after a
   * network error) reuses the same id so the server stores it only once.
   */
  function msgIdFor(slot, content) {
    const key = JSON.stringify(content);
    const p = state.pendingIds[slot];
    if (p && p.key === key) return p.id;
    const id = uuid();
    state.pendingIds[slot] = { key, id };
    return id;
  }

  // ------------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(code, message, status) { super(message); this.code = code; this.status = status; }
  }

  async function api(method, path, body) {
    const opts = { method, headers: { Accept: 'application/json' }, cache: 'no-store' };
    if (state.token) opts.headers.Authorization = 'Bearer ' + state.token;
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch (e) {
      throw new ApiError('network', 'Cannot reach the server. Check your connection and try again.', 0);
    }
    let data = null;
    const raw = await res.text().catch(() => '');
    if (raw) { try { data = JSON.parse(raw); } catch (e) { data = null; } }
    if (!res.ok) {
      const err = errorFrom(data, res.status);
      if (res.status === 401 && state.token && path !== '/api/login' && path !== '/api/logout') {
        endSession('Your session has ended. Please sign in again.');
      }
      throw err;
    }
    return data || {};
  }

  function errorFrom(data, status) {
    const e = data && data.error;
    if (e && e.message) return new ApiError(e.code || 'error', String(e.message), status);
    if (data && typeof data.detail === 'string') return new ApiError('error', data.detail, status);
    if (data && Array.isArray(data.detail) && data.detail.length) {
      return new ApiError('bad_request', data.detail.map((d) => d && d.msg ? d.msg : String(d)).join('; '), status);
    }
    return new ApiError('http_' + status, `Request failed (HTTP ${status}).`, status);
  }

  function qs(params) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== '' && v !== null && v !== undefined) p.set(k, String(v));
    const s = p.toString();
    return s ? '?' + s : '';
  }

  // ----------------------------------------------------------- login/logout

  function seqKey() { return SEQ_KEY_PREFIX + (state.me ? state.me.username : ''); }

  function setLastSeq(n) {
    if (typeof n !== 'number' || !(n > state.lastSeq)) return;
    state.lastSeq = n;
    try { sessionStorage.setItem(seqKey(), String(n)); } catch (e) { /* storage full or disabled */ }
  }

  function updateLoginMode() {
    const create = $('login-create').checked;
    $('login-password2-row').hidden = !create;
    $('login-password2').required = create;
    $('login-password').autocomplete = create ? 'new-password' : 'current-password';
    setText('login-title', create ? 'Sign in or create account' : 'Sign in');
    setText('login-submit', create ? 'Continue' : 'Sign in');
    showMsg($('login-error'), '');
  }

  async function onLoginSubmit(ev) {
    ev.preventDefault();
    const username = $('login-username').value.trim();
    const password = $('login-password').value;
    const create = $('login-create').checked;
    const errEl = $('login-error');
    showMsg(errEl, '');
    if (!username) return showMsg(errEl, 'Enter your username.', 'error');
    if (!password) return showMsg(errEl, 'Enter your password.', 'error');
    if (create && password !== $('login-password2').value) {
      return showMsg(errEl, 'The two passwords do not match.', 'error');
    }
    const btn = $('login-submit');
    btn.disabled = true;
    btn.classList.add('busy');
    try {
      state.token = null;
      const res = await api('POST', '/api/login', { username, password, create });
      if (!res.token) throw new ApiError('error', 'The server did not return a session token.', 0);
      state.token = res.token;
      sessionStorage.setItem(TOKEN_KEY, res.token);
      $('login-password').value = '';
      $('login-password2').value = '';
      await startSession(res);
      focusView();
      if (res.created) toast('Welcome to mailnet, ' + res.username + '! Your account was created.', { kind: 'ok' });
    } catch (e) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showMsg(errEl, humanError(e), 'error');
    } finally {
      btn.disabled = false;
      btn.classList.remove('busy');
    }
  }

  /** Put keyboard focus where the user will act: the open screen's list or heading. */
  function focusView() {
    const view = $('view-' + state.view);
    if (!view || view.hidden) return;
    const target = (state.view === 'inbox' && $('inbox-list').querySelector('.entry[tabindex="0"]')) || view.querySelector('h2');
    if (target) {
      if (!target.hasAttribute('tabindex')) target.setAttribute('tabindex', '-1');
      target.focus();
    }
  }

  /** After a token is known: load the user, show the app, start live updates. */
  async function startSession(loginInfo) {
    state.ending = false;
    let me;
    try {
      me = await api('GET', '/api/me');
      try { sessionStorage.setItem(ME_KEY, JSON.stringify(me)); } catch (e) { /* ignore */ }
    } catch (e) {
      // A reload during an outage: keep the session and show the app offline.
      const cached = e.code === 'network' ? JSON.parse(sessionStorage.getItem(ME_KEY) || 'null') : null;
      if (!cached) throw e;
      me = cached;
      state.needsReload = true;
    }
    state.me = me;
    openChannel();
    writeOutbox(readOutbox());   // shows what still waits to be sent
    state.lastSeq = Number(sessionStorage.getItem(seqKey())) || 0;
    setText('me', me.username);
    paintAvatar($('me-avatar'), me.username);
    setText('settings-user', me.username);
    setText('settings-role', me.role || 'user');
    $('pref-allow-pranks').checked = !me.prank_opt_out;
    $('pref-read-receipts').checked = me.read_receipts !== false;
    setUnread(Number(me.unread) || 0);
    $('login-view').hidden = true;
    $('app-view').hidden = false;
    showView(viewFromHash() || 'inbox', { replace: true });

    if (state.needsReload) {
      setOffline(true);
      $('inbox-empty').hidden = false;
      setText('inbox-empty', 'You are offline. Your inbox will load when the broker is back.');
      connectWs();
      return;
    }
    await loadInbox().catch((e) => toast(humanError(e), { kind: 'error' }));
    if (loginInfo && typeof loginInfo.last_seq === 'number' && state.inbox.length === 0) {
      // Empty first page: the server's own last seq is a safe resume point.
      setLastSeq(loginInfo.last_seq);
    }
    connectWs();
    loadWho();
    state.whoTimer = setInterval(loadWho, WHO_REFRESH_MS);
    loadConversations();
  }

  async function logout() {
    // Forget the session first: the server then closes this tab's WebSocket, and that close
    // (or a 401 racing with it) must not read as "your session has ended".
    const token = state.token;
    // Unsent mail is not left behind in this browser for the next person at it.
    try { localStorage.removeItem(outboxKey()); } catch (e) { /* ignore */ }
    endSession('');
    try {
      await fetch('/api/logout', { method: 'POST', cache: 'no-store', headers: { Accept: 'application/json', Authorization: 'Bearer ' + token } });
    } catch (e) { /* offline: the token expires on its own */ }
  }

  /** Forget the session locally and go back to the sign-in screen. */
  function endSession(message) {
    if (state.ending) return;
    state.ending = true;
    stopWs();
    setOffline(false);
    closeChannel();
    clearInterval(state.whoTimer);
    clearTimeout(state.whoReloadTimer);
    try {
      sessionStorage.removeItem(ME_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      if (state.me) sessionStorage.removeItem(seqKey());
    } catch (e) { /* ignore */ }
    Object.assign(state, {
      token: null, me: null, lastSeq: 0, inbox: [], inboxSeqs: new Set(), inboxHasMore: false,
      unread: 0, openSeq: null, conv: { user: null, ids: new Set() }, convPartners: [],
      history: { items: [], query: null }, who: [], knownUsers: new Set(), pendingIds: {},
      needsReload: false, composeTo: [], showArchived: false, replyTo: null,
      sent: { items: [], loaded: false, stale: false, hasMore: false, openId: null, ledgers: new Map(), refresh: new Map() },
    });
    clearInterval(state.ledgerTimer);
    resetSentReader();
    renderChips();
    ['inbox-list', 'sent-list', 'conv-list', 'conv-messages', 'who-list', 'history-list', 'known-users', 'toasts']
      .forEach((id) => $(id).replaceChildren());
    resetReader();
    resetConversationPane();
    setUnread(0);
    $('app-view').hidden = true;
    $('login-view').hidden = false;
    showMsg($('login-error'), message, message ? 'error' : null);
    $('login-username').focus();
  }

  // ----------------------------------------------------------- navigation

  function viewFromHash() {
    const v = location.hash.replace(/^#/, '');
    return VIEWS.includes(v) ? v : null;
  }

  function showView(name, opts) {
    if (!VIEWS.includes(name)) name = 'inbox';
    state.view = name;
    for (const v of VIEWS) $('view-' + v).hidden = v !== name;
    document.querySelectorAll('[data-nav]').forEach((b) => {
      const on = b.dataset.nav === name;
      b.classList.toggle('active', on);
      if (on) b.setAttribute('aria-current', 'page'); else b.removeAttribute('aria-current');
    });
    if (location.hash !== '#' + name) {
      if (opts && opts.replace) history.replaceState(null, '', '#' + name);
      else history.pushState(null, '', '#' + name);
    }
    if (!state.token) return;
    if (name === 'who') loadWho();
    if (name === 'sent' && (!state.sent.loaded || state.sent.stale)) loadSent(false);
    if (name === 'texts') { loadConversations(); markConversationRead(); }
    if (name === 'history' && (state.history.query === null || state.history.stale)) {
      state.history.stale = false;
      runHistory(false);
    }
  }

  // ----------------------------------------------------------------- inbox

  function setUnread(n) {
    state.unread = Math.max(0, n | 0);
    const b = $('unread-count');
    b.textContent = String(state.unread);
    b.dataset.count = String(state.unread);
    b.setAttribute('aria-label', state.unread + ' unread');
    setText('inbox-summary', state.unread ? state.unread + ' unread' : '');
    document.title = state.unread ? `(${state.unread}) mailnet` : 'mailnet';
  }

  async function loadInbox(more) {
    const params = { limit: PAGE_SIZE, archived: state.showArchived ? 'true' : null };
    if (more && state.inbox.length) params.before_seq = Math.min(...state.inbox.map((e) => e.seq));
    const res = await api('GET', '/api/inbox' + qs(params));
    const entries = (res.entries || []).filter((e) => e && typeof e.seq === 'number');
    if (!more) { state.inbox = []; state.inboxSeqs = new Set(); }
    for (const e of entries) addInboxEntry(e);
    state.inboxHasMore = entries.length >= PAGE_SIZE;
    if (typeof res.unread === 'number') setUnread(res.unread);
    if (!more && entries.length) setLastSeq(Math.max(...entries.map((e) => e.seq)));
    renderInbox();
  }

  /** Insert keeping newest-first order; returns false when already present. */
  function addInboxEntry(entry) {
    if (state.inboxSeqs.has(entry.seq)) return false;
    state.inboxSeqs.add(entry.seq);
    let i = 0;
    while (i < state.inbox.length && state.inbox[i].seq > entry.seq) i++;
    state.inbox.splice(i, 0, entry);
    if (entry.sender) state.knownUsers.add(entry.sender);
    return true;
  }

  function renderInbox(freshSeq) {
    const list = $('inbox-list');
    const focusedSeq = document.activeElement && document.activeElement.closest && document.activeElement.closest('#inbox-list .entry')
      ? Number(document.activeElement.dataset.seq) : null;
    list.replaceChildren(...state.inbox.map((e) => renderEntry(e, e.seq === freshSeq)));
    const rows = list.querySelectorAll('.entry');
    const current = list.querySelector('.entry.selected') || rows[0];
    if (current) current.tabIndex = 0;
    if (focusedSeq !== null) {
      const again = list.querySelector(`.entry[data-seq="${focusedSeq}"]`);
      if (again) { rows.forEach((r) => { r.tabIndex = -1; }); again.tabIndex = 0; again.focus(); }
    }
    $('inbox-empty').hidden = state.inbox.length > 0;
    $('inbox-more').hidden = !state.inboxHasMore;
    renderKnownUsers();
  }

  function renderEntry(e, fresh) {
    const kind = safeKind(e.kind);
    const classes = ['entry', 'kind-' + kind];
    if (!e.read) classes.push('unread');
    if (e.seq === state.openSeq) classes.push('selected');
    if (fresh) classes.push('fresh');
    const isRick = kind === 'rickroll';
    const subject = isRick ? 'Someone sent you a surprise' : (e.subject || '');
    const preview = isRick ? 'Open to see it' : firstLine(e.body);
    return h('li', {
      class: classes.join(' '),
      dataset: { seq: String(e.seq), kind: e.kind },
      tabindex: '-1',
      role: 'option',
      'aria-selected': e.seq === state.openSeq ? 'true' : 'false',
      'aria-label': `${kindLabel(kind)} from ${senderName(e)}${subject ? ': ' + subject : ''}${e.read ? '' : ', unread'}`,
      onclick: () => openEntry(e.seq),
      onkeydown: (ev) => onEntryKey(ev, e.seq),
    },
    avatarFor(isRick ? null : e.sender, 'kind-avatar-' + kind),
    h('div', { class: 'entry-main' },
      h('div', { class: 'entry-top' },
        h('span', { class: 'entry-sender' + (e.sender == null ? ' anon' : ''), text: senderName(e) }),
        h('span', { class: 'entry-kind', title: kindLabel(kind) }, icon(kind), h('span', { class: 'sr', text: kindLabel(kind) })),
        h('time', { class: 'entry-time', datetime: e.sent_at || '', title: fmtLong(e.sent_at), text: fmtShort(e.sent_at) })),
      h('div', { class: 'entry-subject', text: subject }),
      h('div', { class: 'entry-body', text: preview }),
      e.archived || (e.require_ack && !e.acked)
        ? h('div', { class: 'entry-tags' },
          e.archived ? h('span', { class: 'tag tag-archived', text: 'Archived' }) : null,
          e.require_ack && !e.acked ? h('span', { class: 'tag tag-ack', text: 'Please acknowledge' }) : null)
        : null));
  }

  /** Arrow keys, Home and End move along the list; Enter or Space opens the message. */
  function onEntryKey(ev, seq) {
    const rows = Array.from($('inbox-list').querySelectorAll('.entry'));
    const i = rows.findIndex((r) => Number(r.dataset.seq) === seq);
    let next = null;
    if (ev.key === 'ArrowDown') next = rows[Math.min(i + 1, rows.length - 1)];
    else if (ev.key === 'ArrowUp') next = rows[Math.max(i - 1, 0)];
    else if (ev.key === 'Home') next = rows[0];
    else if (ev.key === 'End') next = rows[rows.length - 1];
    else if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); openEntry(seq, { focusReader: true }); return; }
    else if (ev.key === 'Escape' && state.openSeq !== null) { ev.preventDefault(); closeReader(); return; }
    if (!next) return;
    ev.preventDefault();
    rows.forEach((r) => { r.tabIndex = -1; });
    next.tabIndex = 0;
    next.focus();
    if (ev.altKey || $('inbox-split').classList.contains('reading')) openEntry(Number(next.dataset.seq));
  }

  /** Back from the reader to the list, focus on the row that was open. */
  function closeReader() {
    const seq = state.openSeq;
    $('inbox-split').classList.remove('reading');
    const row = seq !== null && $('inbox-list').querySelector(`.entry[data-seq="${Number(seq)}"]`);
    if (row) row.focus(); else focusView();
  }

  function findEntry(seq) { return state.inbox.find((e) => e.seq === seq) || null; }

  async function openEntry(seq, opts) {
    const e = findEntry(seq);
    if (!e) return;
    state.openSeq = seq;
    renderReader(e);
    $('inbox-split').classList.add('reading');
    document.querySelectorAll('#inbox-list .entry').forEach((li) => {
      const on = Number(li.dataset.seq) === seq;
      li.classList.toggle('selected', on);
      li.setAttribute('aria-selected', on ? 'true' : 'false');
      li.tabIndex = on ? 0 : -1;
    });
    if (opts && opts.focusReader) $('inbox-reader').querySelector('.reader-subject').focus();
    if (!e.read) await markRead([e]);
  }

  /** Mark entries read on the server and in the local view. */
  async function markRead(entries) {
    const todo = entries.filter((e) => e && !e.read && typeof e.seq === 'number');
    if (!todo.length) return;
    todo.forEach((e) => { e.read = true; });
    setUnread(state.unread - todo.length);
    refreshEntryRows(todo);
    try {
      await api('POST', '/api/read', { seqs: todo.map((e) => e.seq) });
      broadcast({ event: 'mailbox', change: 'read', seqs: todo.map((e) => e.seq) });
    } catch (err) {
      todo.forEach((e) => { e.read = false; });
      setUnread(state.unread + todo.length);
      refreshEntryRows(todo);
      toast('Could not mark as read: ' + humanError(err), { kind: 'error' });
    }
  }

  function refreshEntryRows(entries) {
    for (const e of entries) {
      const inboxEntry = findEntry(e.seq);
      if (inboxEntry && inboxEntry !== e) inboxEntry.read = e.read;
      const li = $('inbox-list').querySelector(`.entry[data-seq="${Number(e.seq)}"]`);
      if (li) {
        li.classList.toggle('unread', !e.read);
        li.setAttribute('aria-label', li.getAttribute('aria-label').replace(/, unread$/, '') + (e.read ? '' : ', unread'));
      }
    }
  }

  function resetReader() {
    state.openSeq = null;
    clearInterval(state.ledgerTimer);
    delete $('inbox-reader').dataset.messageId;
    $('inbox-split').classList.remove('reading');
    $('inbox-reader').replaceChildren(
      h('div', { class: 'reader-placeholder' }, icon('inbox', 'placeholder-icon'), h('p', { text: 'Select a message to read it.' })));
  }

  function renderReader(e) {
    clearInterval(state.ledgerTimer);
    const reader = $('inbox-reader');
    renderMessagePane(reader, e, { back: 'Inbox', onBack: closeReader });
  }

  /**
   * One message in a reader pane (the inbox's or the sent view's): its head, its body or, when it
   * belongs to a thread of several messages, the whole thread as one conversation (loaded after),
   * its actions, and for what the user sent (or an admin, for a message asking to be
   * acknowledged) how far it got with each recipient.
   */
  function renderMessagePane(pane, e, opts) {
    const kind = safeKind(e.kind);
    const mine = e.direction === 'out';
    const back = h('button', { type: 'button', class: 'btn btn-ghost btn-sm reader-back', onclick: opts.onBack },
      icon('back'), opts.back);
    const parts = [back];

    if (kind === 'rickroll' && !mine) {
      parts.push(h('div', { class: 'reader-head' }, kindPill(kind), h('h3', { class: 'reader-subject', tabindex: '-1', text: 'Someone sent you a surprise' }),
        h('div', { class: 'reader-meta muted small' }, h('time', { datetime: e.sent_at || '', text: fmtLong(e.sent_at) }))));
      parts.push(h('div', { class: 'surprise' },
        icon('rickroll', 'surprise-icon'),
        h('p', { text: 'An anonymous someone thinks you will enjoy this link. Click it only if you want to.' }),
        // Fixed link (never taken from message data); opened only by the user's click.
        h('a', { class: 'surprise-link', href: RICKROLL_URL, rel: 'noopener noreferrer', target: '_blank' }, icon('link'), RICKROLL_URL)));
      parts.push(readerActions(e));
    } else {
      const to = (e.recipients || []).join(', ');
      const toText = kind === 'announcement' ? (mine ? ' to everyone' : '') : (to ? ' to ' + to : '');
      parts.push(h('div', { class: 'reader-head' },
        kindPill(kind),
        h('h3', { class: 'reader-subject', tabindex: '-1', text: e.subject || (kind === 'text' ? 'Text message' : '(no subject)') }),
        h('div', { class: 'reader-from' },
          avatarFor(mine ? (state.me && state.me.username) : e.sender),
          h('div', {},
            h('div', {}, h('strong', { text: senderName(e) }), toText ? h('span', { class: 'muted', text: toText }) : null),
            h('time', { class: 'muted small', datetime: e.sent_at || '', text: fmtLong(e.sent_at) })))));
      parts.push(h('div', { class: 'reader-body', text: e.body || '' }));
      parts.push(readerActions(e));
      if (e.require_ack && !mine && state.me && state.me.role === 'admin') parts.push(h('section', { class: 'ledger', 'aria-label': 'Acknowledgements' }));
      if (mine) parts.push(h('section', { class: 'ledger', 'aria-label': 'Delivery' }));
    }
    pane.className = 'pane reader-pane kind-' + kind;
    pane.dataset.messageId = String(e.message_id);
    pane.replaceChildren(...parts.filter(Boolean));
    pane.scrollTop = 0;
    if (kind !== 'rickroll') loadThread(pane, e);
    if (pane.querySelector('.ledger')) {
      loadLedger(e.message_id);
      if (!mine) state.ledgerTimer = setInterval(() => loadLedger(e.message_id), ADMIN_LEDGER_REFRESH_MS);
    }
  }

  function readerActions(e) {
    const kind = safeKind(e.kind);
    const mine = e.direction === 'out';
    const actions = h('div', { class: 'reader-actions' });
    if ((kind === 'email' || kind === 'announcement') && !mine && e.sender) {
      actions.append(h('button', { type: 'button', class: 'btn btn-ghost', id: 'reader-reply', onclick: () => replyEmail(e, false) }, icon('reply'), 'Reply'));
      if (replyAllRecipients(e).length > 1) actions.append(h('button', { type: 'button', class: 'btn btn-ghost', id: 'reader-reply-all', onclick: () => replyEmail(e, true) }, icon('reply'), 'Reply all'));
    }
    if (kind === 'email' && mine && (e.recipients || []).length) {
      actions.append(h('button', { type: 'button', class: 'btn btn-ghost', id: 'reader-reply-all', onclick: () => replyEmail(e, true) }, icon('reply'), 'Reply all'));
    }
    if (kind === 'text' && e.sender && !mine) {
      actions.append(h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => { showView('texts'); openConversation(e.sender); } }, icon('text'), 'Open conversation'));
    }
    if (e.require_ack && !mine && typeof e.seq === 'number') {
      actions.append(h('button', { type: 'button', class: 'btn ' + (e.acked ? 'btn-ghost' : 'btn-primary'), id: 'reader-ack',
        disabled: !!e.acked, 'aria-pressed': e.acked ? 'true' : 'false', onclick: () => acknowledge(e) },
      icon('ok'), e.acked ? 'Acknowledged' : 'Acknowledge'));
    }
    if (typeof e.seq === 'number' && !mine) {
      actions.append(e.archived
        ? h('button', { type: 'button', class: 'btn btn-ghost', id: 'reader-unarchive', onclick: () => setArchived(e, false) }, icon('inbox'), 'Move to inbox')
        : h('button', { type: 'button', class: 'btn btn-ghost', id: 'reader-archive', onclick: () => setArchived(e, true) }, icon('archive'), 'Archive'));
    }
    return actions.childNodes.length ? actions : null;
  }

  /** The message's whole thread, oldest first, in place of its body (when it has more than it). */
  async function loadThread(pane, e) {
    const threadId = e.thread_id || e.message_id;
    let items;
    try {
      const res = await api('GET', '/api/history' + qs({ thread: threadId, limit: 100 }));
      items = (res.items || []).slice().sort((a, b) => a.message_id - b.message_id);
    } catch (err) { return; }   // the message alone is shown already
    if (pane.dataset.messageId !== String(e.message_id) || items.length < 2) return;
    const body = pane.querySelector('.reader-body');
    if (!body) return;
    const list = h('ol', { class: 'thread', 'aria-label': `Conversation, ${items.length} messages` },
      ...items.map((it) => {
        const current = it.message_id === e.message_id;
        const out = it.direction === 'out';
        return h('li', { class: 'thread-msg' + (current ? ' current' : '') + (out ? ' mine' : ''),
          dataset: { messageId: String(it.message_id) }, 'aria-current': current ? 'true' : null },
        h('div', { class: 'thread-top' },
          avatarFor(out ? state.me.username : it.sender, 'avatar-sm'),
          h('strong', { class: 'thread-sender', text: out ? 'You' : (it.sender || 'someone') }),
          it.subject && it.subject !== e.subject ? h('span', { class: 'muted small thread-subject', text: it.subject }) : null,
          h('time', { class: 'muted small thread-time', datetime: it.sent_at || '', title: fmtLong(it.sent_at), text: fmtLong(it.sent_at) })),
        h('div', { class: 'thread-body', text: it.body || '' }));
      }));
    body.replaceWith(h('div', { class: 'thread-head muted small', text: `${items.length} messages in this conversation` }), list);
    const current = list.querySelector('.thread-msg.current');
    if (current && current.scrollIntoView) current.scrollIntoView({ block: 'nearest' });
  }

  async function acknowledge(e) {
    const btn = $('reader-ack');
    if (btn) btn.disabled = true;
    try {
      await api('POST', '/api/acknowledge', { message_id: e.message_id });
      const change = { event: 'mailbox', change: 'acked', seqs: [e.seq] };
      applyMailboxChange(change);
      broadcast(change);
    } catch (err) {
      if (btn) btn.disabled = false;
      toast('Could not acknowledge: ' + humanError(err), { kind: 'error' });
    }
  }

  async function setArchived(e, archive) {
    try {
      await api('POST', archive ? '/api/archive' : '/api/unarchive', { seqs: [e.seq] });
      const change = { event: 'mailbox', change: archive ? 'archived' : 'unarchived', seqs: [e.seq] };
      applyMailboxChange(change);
      broadcast(change);
      toast(archive ? 'Archived.' : 'Moved back to the inbox.', { kind: 'ok' });
    } catch (err) {
      toast((archive ? 'Could not archive: ' : 'Could not move it back: ') + humanError(err), { kind: 'error' });
    }
  }

  function toggleShowArchived() {
    state.showArchived = !state.showArchived;
    const btn = $('inbox-archived');
    btn.setAttribute('aria-pressed', state.showArchived ? 'true' : 'false');
    btn.title = state.showArchived ? 'Archived mail is shown (press to hide it)' : 'Show archived mail too';
    loadInbox().catch((err) => toast(humanError(err), { kind: 'error' }));
  }

  // ------------------------------------------------ the sender's delivery ledger

  /** The marks of a sent message from its counts: ticks (hidden from screen readers) and words. */
  function marksFor(it) {
    const r = it.receipts;
    if (!r || !r.total) return null;
    let ticks = 'tick'; let cls = 'queued'; let text;
    if (it.require_ack) {
      text = `${r.acked} of ${r.total} acknowledged`;
    } else if (r.read === r.total) {
      text = r.total === 1 ? 'Read' : 'Read by all';
    } else if (r.read) {
      text = `Read by ${r.read} of ${r.total}`;
    } else if (r.delivered === r.total) {
      text = r.total === 1 ? 'Delivered' : 'Delivered to all';
    } else if (r.delivered) {
      text = `Delivered to ${r.delivered} of ${r.total}`;
    } else {
      text = 'Sent';
    }
    const everyone = it.require_ack ? r.acked : r.read;
    if (everyone === r.total) { ticks = 'ticks'; cls = 'read'; } else if (r.delivered === r.total) { ticks = 'ticks'; cls = 'delivered'; }
    return h('span', { class: 'marks marks-' + cls, title: text }, icon(ticks, 'tick-icon'), h('span', { class: 'marks-text', text }));
  }

  function lineMarks(state1) {
    const ticks = STATE_RANK[state1] >= 1 ? 'ticks' : 'tick';
    const cls = STATE_RANK[state1] >= 2 ? 'read' : state1 === 'delivered' ? 'delivered' : 'queued';
    return h('span', { class: 'marks marks-' + cls }, icon(ticks, 'tick-icon'), h('span', { class: 'marks-text', text: STATE_WORD[state1] || state1 }));
  }

  async function loadLedger(messageId) {
    try {
      const status = await api('GET', '/api/status' + qs({ message_id: messageId }));
      setLedger(status);
    } catch (err) { /* shown as it was; the next receipt or look tries again */ }
  }

  function setLedger(status) {
    state.sent.ledgers.set(status.message_id, status);
    const item = state.sent.items.find((i) => i.message_id === status.message_id);
    if (item) {
      item.receipts = { total: status.total, delivered: status.delivered, read: status.read, acked: status.acked };
      refreshSentRow(item);
    }
    renderLedger(status);
  }

  /** "2 of 3 acknowledged; not yet: carol" (or delivered/read counts), then one line a recipient. */
  function renderLedger(status) {
    document.querySelectorAll('.reader-pane').forEach((pane) => {
      if (pane.dataset.messageId !== String(status.message_id)) return;
      const box = pane.querySelector('.ledger');
      if (!box) return;
      let head;
      if (status.require_ack) {
        const waiting = status.recipients.filter((l) => l.state !== 'acked').map((l) => l.username);
        head = `${status.acked} of ${status.total} acknowledged` + (waiting.length ? '; not yet: ' + waiting.join(', ') : '');
      } else {
        head = `Delivered to ${status.delivered} of ${status.total}, read by ${status.read}`;
      }
      box.replaceChildren(
        h('h4', { class: 'ledger-head', text: head }),
        h('ul', { class: 'ledger-list' }, ...status.recipients.map((l) => {
          const when = l.acked_at || l.read_at || l.delivered_at;
          return h('li', { class: 'ledger-line', dataset: { username: l.username, state: l.state } },
            avatarFor(l.username, 'avatar-sm'),
            h('span', { class: 'ledger-name', text: l.username }),
            lineMarks(l.state),
            when ? h('time', { class: 'muted small', datetime: when, title: fmtLong(when), text: fmtShort(when) }) : null);
        })));
    });
  }

  /** A recipient's client took, read or acknowledged something the user sent (any node). */
  function onReceiptEvent(msg) {
    if (typeof msg.message_id !== 'number' || !(msg.state in STATE_RANK)) return;
    const status = state.sent.ledgers.get(msg.message_id);
    const line = status && status.recipients.find((l) => l.username === msg.username);
    if (!line) {   // not looked at yet: fetch its ledger (once, for a burst of receipts)
      if (!state.sent.items.some((i) => i.message_id === msg.message_id) || state.sent.refresh.has(msg.message_id)) return;
      state.sent.refresh.set(msg.message_id, setTimeout(() => {
        state.sent.refresh.delete(msg.message_id);
        loadLedger(msg.message_id);
      }, 250));
      return;
    }
    if (STATE_RANK[msg.state] <= STATE_RANK[line.state]) {
      if (msg.state === 'delivered' && !line.delivered_at) line.delivered_at = msg.at;
      return;
    }
    line.state = msg.state;
    const field = { delivered: 'delivered_at', read: 'read_at', acked: 'acked_at' }[msg.state];
    if (!line[field]) line[field] = msg.at;
    if (!line.delivered_at) line.delivered_at = msg.at;
    const ranks = status.recipients.map((l) => STATE_RANK[l.state]);
    status.delivered = ranks.filter((r) => r >= 1).length;
    status.read = ranks.filter((r) => r >= 2).length;
    status.acked = ranks.filter((r) => r >= 3).length;
    setLedger(status);
  }

  // ---------------------------------------------------------------- sent view

  async function loadSent(more) {
    if (!state.token || !state.me) return;
    const params = { q: 'from:' + state.me.username, limit: PAGE_SIZE };
    if (more && state.sent.items.length) params.before_id = Math.min(...state.sent.items.map((i) => i.message_id));
    showMsg($('sent-error'), '');
    try {
      const res = await api('GET', '/api/history' + qs(params));
      const items = (res.items || []).filter((i) => i && i.direction === 'out');
      if (!more) { state.sent.items = []; state.sent.ledgers = new Map(); }
      const have = new Set(state.sent.items.map((i) => i.message_id));
      state.sent.items.push(...items.filter((i) => !have.has(i.message_id)));
      state.sent.loaded = true;
      state.sent.stale = false;
      state.sent.hasMore = (res.items || []).length >= PAGE_SIZE;
      renderSent();
      const open = state.sent.openId !== null && state.sent.items.find((i) => i.message_id === state.sent.openId);
      if (open && !more) loadLedger(open.message_id);
    } catch (err) {
      showMsg($('sent-error'), humanError(err), 'error');
    }
  }

  function renderSent() {
    $('sent-list').replaceChildren(...state.sent.items.map(renderSentRow));
    const rows = $('sent-list').querySelectorAll('.entry');
    const current = $('sent-list').querySelector('.entry.selected') || rows[0];
    if (current) current.tabIndex = 0;
    $('sent-empty').hidden = state.sent.items.length > 0;
    $('sent-more').hidden = !state.sent.hasMore;
  }

  function sentTo(it) {
    if (it.kind === 'announcement') return 'To everyone';
    return 'To ' + ((it.recipients || []).join(', ') || '?');
  }

  function renderSentRow(it) {
    const kind = safeKind(it.kind);
    const selected = it.message_id === state.sent.openId;
    const subject = kind === 'rickroll' ? 'A surprise' : (it.subject || '');
    const marks = marksFor(it);
    return h('li', {
      class: 'entry sent-entry kind-' + kind + (selected ? ' selected' : ''),
      dataset: { messageId: String(it.message_id), kind: it.kind },
      tabindex: '-1', role: 'option', 'aria-selected': selected ? 'true' : 'false',
      'aria-label': `${kindLabel(kind)} ${sentTo(it).toLowerCase()}${subject ? ': ' + subject : ''}${marks ? ', ' + marks.title : ''}`,
      onclick: () => openSent(it.message_id),
      onkeydown: (ev) => onSentKey(ev, it.message_id),
    },
    avatarFor(kind === 'announcement' ? null : (it.recipients || [])[0], 'kind-avatar-' + kind),
    h('div', { class: 'entry-main' },
      h('div', { class: 'entry-top' },
        h('span', { class: 'entry-sender', text: sentTo(it) }),
        h('span', { class: 'entry-kind', title: kindLabel(kind) }, icon(kind), h('span', { class: 'sr', text: kindLabel(kind) })),
        h('time', { class: 'entry-time', datetime: it.sent_at || '', title: fmtLong(it.sent_at), text: fmtShort(it.sent_at) })),
      h('div', { class: 'entry-subject', text: subject }),
      h('div', { class: 'entry-bottom' }, h('span', { class: 'entry-body', text: kind === 'rickroll' ? '' : firstLine(it.body) }), marks)));
  }

  function refreshSentRow(it) {
    const old = $('sent-list').querySelector(`.entry[data-message-id="${Number(it.message_id)}"]`);
    if (!old) return;
    const row = renderSentRow(it);
    row.tabIndex = old.tabIndex;
    const focused = document.activeElement === old;
    old.replaceWith(row);
    if (focused) row.focus();
  }

  function onSentKey(ev, id) {
    const rows = Array.from($('sent-list').querySelectorAll('.entry'));
    const i = rows.findIndex((r) => Number(r.dataset.messageId) === id);
    let next = null;
    if (ev.key === 'ArrowDown') next = rows[Math.min(i + 1, rows.length - 1)];
    else if (ev.key === 'ArrowUp') next = rows[Math.max(i - 1, 0)];
    else if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); openSent(id); return; }
    if (!next) return;
    ev.preventDefault();
    rows.forEach((r) => { r.tabIndex = -1; });
    next.tabIndex = 0;
    next.focus();
  }

  function openSent(id) {
    const it = state.sent.items.find((i) => i.message_id === id);
    if (!it) return;
    state.sent.openId = id;
    document.querySelectorAll('#sent-list .entry').forEach((li) => {
      const on = Number(li.dataset.messageId) === id;
      li.classList.toggle('selected', on);
      li.setAttribute('aria-selected', on ? 'true' : 'false');
      li.tabIndex = on ? 0 : -1;
    });
    $('sent-split').classList.add('reading');
    renderMessagePane($('sent-reader'), it, { back: 'Sent', onBack: () => $('sent-split').classList.remove('reading') });
  }

  function resetSentReader() {
    $('sent-split').classList.remove('reading');
    delete $('sent-reader').dataset.messageId;
    $('sent-reader').replaceChildren(
      h('div', { class: 'reader-placeholder' }, icon('out', 'placeholder-icon'), h('p', { text: 'Select a message to see who got it.' })));
  }

  /** The sender and every other recipient of `e`, without me. */
  function replyAllRecipients(e) {
    const me = state.me ? state.me.username : null;
    return Array.from(new Set([e.sender, ...(e.recipients || [])].filter((n) => n && n !== me)));
  }

  /** The reply's body: an empty line for the caret, then the quote (no trailing `>` lines). */
  function quoteFor(e) {
    const lines = String(e.body || '').replace(/\s+$/, '').split('\n');
    const quoted = lines.map((l) => (l ? '> ' + l : '>')).join('\n');
    return `\n\nOn ${fmtLong(e.sent_at)}, ${e.direction === 'out' ? 'you' : e.sender} wrote:\n${quoted}`;
  }

  /** Compose a reply by email: the broker keeps it in `e`'s thread (in_reply_to). */
  function replyEmail(e, all) {
    showView('compose');
    $('compose-kind').value = 'email';
    updateComposeKind();
    setChips(e.direction === 'out' ? replyAllRecipients(e) : all ? replyAllRecipients(e) : [e.sender]);
    const subj = e.subject || firstLine(e.body).split(/\s+/).slice(0, 8).join(' ');
    $('compose-subject').value = /^re:/i.test(subj) ? subj : 'Re: ' + subj;
    setReplyTo({ message_id: e.message_id, subject: subj });
    const body = $('compose-body');
    body.value = quoteFor(e);
    body.focus();
    body.setSelectionRange(0, 0);
    body.scrollTop = 0;
  }

  function setReplyTo(target) {
    state.replyTo = target;
    const note = $('compose-reply');
    note.hidden = !target;
    note.textContent = target ? `A reply in the conversation “${shorten(target.subject || 'your message', 60)}”.` : '';
  }

  async function markAllRead() {
    await markRead(state.inbox.filter((e) => !e.read));
  }

  // --------------------------------------------------------- live: WebSocket

  function wsUrl() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/ws';
  }

  function setConn(online, label) {
    const dot = $('conn-status');
    dot.dataset.state = online ? 'online' : 'offline';
    const text = label || (online ? 'Online' : 'Offline: reconnecting…');
    dot.title = text;
    setText('conn-label', online ? 'Online' : (state.offline ? 'Offline' : 'Connecting…'));
  }

  /**
   * An outage is shown, not hinted: a banner with what is happening and a "Retry now" button,
   * the who list marked as possibly out of date. Cleared once the live connection is back.
   */
  function setOffline(off) {
    if (off && !state.offline) state.offlineSince = Date.now();
    state.offline = off;
    $('offline-banner').hidden = !off;
    $('who-list').classList.toggle('stale', off);
    $('who-stale').hidden = !off;
    if (!off) { clearInterval(state.wsCountdown); state.wsCountdown = null; }
    setConn(!off && !!state.ws && $('conn-status').dataset.state === 'online');
  }

  function showCountdown() {
    const left = Math.max(0, Math.ceil((state.wsRetryAt - Date.now()) / 1000));
    setText('offline-detail', left > 0 ? `Reconnecting in ${left} s.` : 'Reconnecting…');
  }

  /** Reconnect at once (the "Retry now" button, and the browser saying the network is back). */
  function retryNow() {
    if (!state.token || state.ws) return;
    state.wsBackoff = WS_BACKOFF_MIN_MS;
    connectWs();
  }

  function wsSend(obj) {
    const ws = state.ws;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
  }

  function connectWs() {
    if (!state.token) return;
    state.wsWanted = true;
    clearTimeout(state.wsRetryTimer);
    if (state.ws) return;
    setConn(false, 'Connecting…');
    if (state.offline) setText('offline-detail', 'Reconnecting…');
    let ws;
    try { ws = new WebSocket(wsUrl()); } catch (e) { scheduleReconnect(); return; }
    state.ws = ws;
    let ready = false;

    ws.onopen = () => {
      state.wsLastFrame = Date.now();
      ws.send(JSON.stringify({ op: 'auth', token: state.token, after_seq: state.lastSeq }));
    };
    ws.onmessage = (ev) => {
      state.wsLastFrame = Date.now();
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (!msg || typeof msg !== 'object') return;
      switch (msg.event) {
        case 'ready':
          ready = true;
          state.wsBackoff = WS_BACKOFF_MIN_MS;
          setConn(true);
          startPing();
          if (typeof msg.last_seq === 'number' && state.lastSeq > 0) wsSend({ op: 'ack', seq: state.lastSeq });
          if (state.wsEverReady || state.needsReload) onBackOnline(); else flushOutbox();
          state.wsEverReady = true;
          break;
        case 'mailbox': applyMailboxChange(msg); break;
        case 'mail': onMailEvent(msg.entry); break;
        case 'presence': onPresenceEvent(msg); break;
        case 'receipt': onReceiptEvent(msg); break;
        case 'pong': break;
        case 'error': onWsError(msg); break;
        default: break;
      }
    };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      stopPing();
      if (state.wsWanted && state.token) setOffline(true);
      setConn(false);
      // Closed before "ready": maybe the token was revoked. /api/me answers 401
      // in that case and api() ends the session.
      if (!ready && state.token) api('GET', '/api/me').catch(() => {});
      scheduleReconnect();
    };
  }

  function onWsError(msg) {
    const err = msg.error || {};
    if (err.code === 'auth_failed' || err.code === 'not_authenticated') {
      endSession('Your session has ended. Please sign in again.');
    }
  }

  function scheduleReconnect() {
    if (!state.wsWanted || !state.token) return;
    clearTimeout(state.wsRetryTimer);
    const delay = state.wsBackoff;
    state.wsBackoff = Math.min(state.wsBackoff * 2, WS_BACKOFF_MAX_MS);
    state.wsRetryAt = Date.now() + delay;
    setConn(false, `Offline: reconnecting in ${Math.ceil(delay / 1000)} s…`);
    showCountdown();
    clearInterval(state.wsCountdown);
    state.wsCountdown = setInterval(showCountdown, 500);
    state.wsRetryTimer = setTimeout(connectWs, delay);
  }

  /** The live connection is back after an outage (or after starting offline). */
  async function onBackOnline() {
    setOffline(false);
    // Errors that the outage caused are stale now.
    for (const id of ['compose-status', 'conv-status']) {
      if ($(id).dataset.state === 'error') showMsg($(id), '');
    }
    clearFieldErrors();
    if (state.needsReload) {
      state.needsReload = false;
      setText('inbox-empty', 'Your inbox is empty.');
      await loadInbox().catch(() => {});
      loadConversations();
      if (!state.whoTimer) state.whoTimer = setInterval(loadWho, WHO_REFRESH_MS);
    } else {
      refreshUnread();   // reads may have happened elsewhere meanwhile
    }
    loadWho();
    flushOutbox();
  }

  function startPing() {
    stopPing();
    state.pingTimer = setInterval(() => {
      const ws = state.ws;
      if (!ws) return;
      if (Date.now() - state.wsLastFrame > WS_DEAD_MS) { ws.close(); return; }
      wsSend({ op: 'ping' });
    }, PING_MS);
  }

  function stopPing() { clearInterval(state.pingTimer); state.pingTimer = null; }

  function stopWs() {
    state.wsWanted = false;
    state.wsEverReady = false;
    clearTimeout(state.wsRetryTimer);
    stopPing();
    const ws = state.ws;
    state.ws = null;
    state.wsBackoff = WS_BACKOFF_MIN_MS;
    clearInterval(state.wsCountdown);
    if (ws) { try { ws.close(1000, 'logout'); } catch (e) { /* ignore */ } }
    setConn(false, 'Offline');
  }

  async function refreshUnread() {
    try {
      const me = await api('GET', '/api/me');
      if (typeof me.unread === 'number') setUnread(me.unread);
    } catch (e) { /* ignore */ }
  }

  /** A new mailbox entry pushed by the server. */
  function onMailEvent(entry) {
    if (!entry || typeof entry.seq !== 'number') return;
    if (entry.seq <= state.lastSeq) return;           // seen already: no doubles
    setLastSeq(entry.seq);
    wsSend({ op: 'ack', seq: entry.seq });
    if (!addInboxEntry(entry)) return;
    if (!entry.read) setUnread(state.unread + 1);
    renderInbox(entry.seq);
    if (state.history.query !== null) state.history.stale = true;
    notify(entry);
    if (entry.kind === 'text' && entry.sender) onIncomingText(entry);
  }

  // ------------------------------------------- mailbox changes from elsewhere

  /**
   * A change made in another tab (BroadcastChannel) or on another device (the server's
   * `{"event": "mailbox", "change": ..., "seqs": [...]}`): applied locally, never sent back.
   */
  function applyMailboxChange(msg) {
    if (!msg || !Array.isArray(msg.seqs)) return;
    const seqs = new Set(msg.seqs.filter((n) => typeof n === 'number'));
    const hit = state.inbox.filter((e) => seqs.has(e.seq));
    if (msg.change === 'read' || msg.change === 'acked' || msg.change === 'unread') {
      const read = msg.change !== 'unread';
      const changed = hit.filter((e) => !!e.read !== read);
      changed.forEach((e) => { e.read = read; });
      if (msg.change === 'acked') hit.forEach((e) => { e.acked = true; });
      setUnread(state.unread + (read ? -changed.length : changed.length));
      refreshEntryRows(changed);
      if (msg.change === 'acked') renderInbox();
    } else if (msg.change === 'deleted' || (msg.change === 'archived' && !state.showArchived)) {
      const unreadGone = hit.filter((e) => !e.read).length;
      state.inbox = state.inbox.filter((e) => !seqs.has(e.seq));
      hit.forEach((e) => state.inboxSeqs.delete(e.seq));
      setUnread(state.unread - unreadGone);
      if (seqs.has(state.openSeq)) resetReader();
      renderInbox();
      return;
    } else if (msg.change === 'archived' || msg.change === 'unarchived') {
      hit.forEach((e) => { e.archived = msg.change === 'archived'; });
      // Back in the inbox, but not in this list (archived mail was hidden): read the list again.
      if (hit.length < seqs.size && msg.change === 'unarchived') loadInbox().catch(() => {});
      renderInbox();
    } else {
      loadInbox().catch(() => {});   // a change this page does not know: read the inbox again
      return;
    }
    const open = state.openSeq !== null && seqs.has(state.openSeq) && findEntry(state.openSeq);
    if (open && msg.change !== 'read') renderReader(open);   // its buttons say what it is now
    if (state.view === 'texts') renderConversations();
  }

  function openChannel() {
    closeChannel();
    if (typeof BroadcastChannel !== 'function' || !state.me) return;
    const ch = new BroadcastChannel('mailnet.' + state.me.username);
    ch.onmessage = (ev) => { if (ev.data && ev.data.event === 'mailbox') applyMailboxChange(ev.data); };
    state.channel = ch;
  }

  function closeChannel() {
    if (state.channel) { state.channel.close(); state.channel = null; }
  }

  function broadcast(msg) {
    if (state.channel) state.channel.postMessage(msg);
  }

  function shorten(text, n) {
    const t = String(text || '').replace(/\s+/g, ' ').trim();
    return t.length > n ? t.slice(0, n - 1).trimEnd() + '…' : t;
  }

  /** A system notification, only while the tab is hidden and the user allowed them. */
  function systemNotify(title, body, tag, onclick) {
    if (!document.hidden || typeof Notification !== 'function' || Notification.permission !== 'granted') return false;
    try {
      const n = new Notification(title, { body: shorten(body, TOAST_CHARS), tag, renotify: true });
      n.onclick = () => { window.focus(); if (onclick) onclick(); n.close(); };
      return true;
    } catch (e) { return false; }
  }

  function notify(e) {
    const who0 = e.sender == null ? 'someone' : e.sender;
    const titles = { email: `Email from ${who0}`, text: `Text from ${who0}`, announcement: `Announcement from ${who0}`, rickroll: 'A surprise' };
    const sysBody = e.kind === 'email' || e.kind === 'announcement' ? (e.subject || firstLine(e.body)) : e.kind === 'rickroll' ? 'Someone sent you a surprise' : firstLine(e.body);
    const open = () => {
      if (e.kind === 'text' && e.sender) { showView('texts'); openConversation(e.sender); } else { showView('inbox'); openEntry(e.seq); }
    };
    systemNotify(titles[e.kind] || `Message from ${who0}`, sysBody, 'mailnet-mail', open);
    let text;
    const who = e.sender == null ? 'someone' : e.sender;
    switch (e.kind) {
      case 'email': text = `New email from ${who}: ${e.subject || '(no subject)'}`; break;
      case 'text': text = `New text from ${who}: ${firstLine(e.body)}`; break;
      case 'announcement': text = `Announcement from ${who}: ${e.subject || firstLine(e.body)}`; break;
      case 'rickroll': text = 'Someone sent you a surprise'; break;
      default: text = `New message from ${who}`;
    }
    toast(text, { kind: safeKind(e.kind), mail: true, onclick: open });
  }

  // ---------------------------------------------------------------- toasts

  /**
   * A short notice in the corner, shortened to one line. New mail beyond TOAST_MAX notices at
   * once is grouped into one "N new messages" notice that opens the inbox.
   */
  function toast(text, opts) {
    const o = opts || {};
    const box = $('toasts');
    if (o.mail) {
      const mails = Array.from(box.querySelectorAll('.toast[data-mail]:not(.leaving)'));
      const group = box.querySelector('.toast[data-group]:not(.leaving)');
      if (group || mails.length >= TOAST_MAX) {
        const n = (group ? Number(group.dataset.group) : mails.length) + 1;
        mails.forEach((m) => m.remove());
        if (group) group.remove();
        return toast(`${n} new messages`, { kind: 'info', group: n, onclick: () => { showView('inbox'); focusView(); } });
      }
    }
    while (box.childElementCount >= TOAST_MAX) box.firstElementChild.remove();
    const t = h('button', { type: 'button', class: 'toast toast-' + (o.kind || 'info'), role: o.kind === 'error' ? 'alert' : 'status',
      title: String(text), dataset: o.mail ? { mail: '1' } : o.group ? { group: String(o.group) } : {} },
    icon(o.kind && ICONS[o.kind] ? o.kind : 'inbox'),
    h('span', { class: 'toast-msg', text: shorten(text, TOAST_CHARS) }));
    const close = () => { t.classList.add('leaving'); setTimeout(() => t.remove(), 250); };
    t.addEventListener('click', () => { if (o.onclick) o.onclick(); close(); });
    box.append(t);
    setTimeout(close, o.ms || TOAST_MS);
    return t;
  }

  // ----------------------------------------------------------- who's online

  async function loadWho() {
    if (!state.token) return;
    try {
      const res = await api('GET', '/api/who');
      state.who = (res.users || []).filter((u) => u && u.username);
      showMsg($('who-error'), '');
      renderWho();
    } catch (e) {
      // Unreachable: the offline banner and the stale list already say so.
      showMsg($('who-error'), e.code === 'network' ? '' : humanError(e), 'error');
    }
  }

  function renderWho() {
    const me = state.me ? state.me.username : null;
    const users = state.who.slice().sort((a, b) => (a.username === me ? -1 : b.username === me ? 1 : a.username.localeCompare(b.username)));
    users.forEach((u) => state.knownUsers.add(u.username));
    $('who-list').replaceChildren(...users.map((u) => {
      const idle = Number(u.idle_seconds) || 0;
      const active = idle < 60;
      const since = fmtShort(u.since);
      return h('li', { class: 'who-user' + (active ? ' active' : ' idle'), dataset: { username: u.username } },
        h('span', { class: 'avatar-wrap' }, avatarFor(u.username), h('span', { class: 'presence-dot', 'aria-hidden': 'true', title: active ? 'Active' : 'Idle' })),
        h('div', { class: 'who-main' },
          h('div', { class: 'who-name' }, h('span', { class: 'who-username', text: u.username }), u.username === me ? h('span', { class: 'tag', text: 'you' }) : null),
          h('div', { class: 'who-meta muted small' },
            h('span', { class: 'who-since', title: fmtLong(u.since), text: since ? 'Online since ' + since : 'Online' }),
            h('span', { class: 'who-idle', text: active ? 'Active now' : 'Idle ' + fmtDuration(idle) }),
            Number(u.sessions) > 1 ? h('span', { class: 'who-sessions', text: u.sessions + ' sessions' }) : null)),
        u.username !== me ? h('button', { type: 'button', class: 'btn btn-ghost btn-sm', title: 'Text ' + u.username,
          onclick: () => { showView('texts'); openConversation(u.username); } }, icon('text'), h('span', { class: 'btn-label', text: 'Text' })) : null);
    }));
    $('who-empty').hidden = users.length > 0;
    setText('who-summary', users.length ? users.length + ' online' : '');
    renderKnownUsers();
  }

  function onPresenceEvent(msg) {
    if (!msg.username) return;
    if (msg.online) {
      if (!state.who.some((u) => u.username === msg.username)) {
        state.who.push({ username: msg.username, since: new Date().toISOString(), idle_seconds: 0, sessions: 1 });
      }
    } else {
      state.who = state.who.filter((u) => u.username !== msg.username);
    }
    renderWho();
    // Then fetch the authoritative list (debounced: presence can come in bursts).
    clearTimeout(state.whoReloadTimer);
    state.whoReloadTimer = setTimeout(loadWho, 400);
  }

  function renderKnownUsers() {
    const me = state.me ? state.me.username : null;
    const names = Array.from(state.knownUsers).filter((n) => n && n !== me).sort();
    $('known-users').replaceChildren(...names.map((n) => h('option', { value: n })));
  }

  // -------------------------------------------------------------- compose

  const COMPOSE_KINDS = {
    email: { to: 'To', toPh: 'bob, carol', subject: true, body: true, hint: 'An email to one or more people.' },
    text: { to: 'To', toPh: 'bob', subject: false, body: true, hint: 'A short text to one person.' },
    announcement: { to: null, subject: true, body: true, hint: 'An announcement goes to everyone.' },
    rickroll: { to: 'To', toPh: 'bob', subject: false, body: false, hint: 'Sends a harmless, anonymous rick-roll link. They see "Someone sent you a surprise" and choose whether to click it.' },
  };

  function updateComposeKind() {
    const kind = $('compose-kind').value;
    const cfg = COMPOSE_KINDS[kind] || COMPOSE_KINDS.email;
    $('compose-to-row').hidden = !cfg.to;
    if (cfg.to) { setText('compose-to-label', cfg.to); $('compose-to').placeholder = state.composeTo.length ? '' : cfg.toPh; }
    $('compose-subject-row').hidden = !cfg.subject;
    $('compose-body-row').hidden = !cfg.body;
    $('compose-ack-row').hidden = kind !== 'email' && kind !== 'announcement';
    if (kind !== 'email') setReplyTo(null);
    setText('compose-hint', cfg.hint);
    showMsg($('compose-status'), '');
    clearFieldErrors();
  }

  function splitRecipients(s) {
    return Array.from(new Set(String(s || '').split(/[,;\s]+/).map((x) => x.trim()).filter(Boolean)));
  }

  // Recipients as chips: typed names become chips on Enter, comma, space or leaving the field.
  function setChips(names) {
    state.composeTo = Array.from(new Set(names.filter(Boolean)));
    $('compose-to').value = '';
    renderChips();
  }

  function commitChipInput() {
    const typed = splitRecipients($('compose-to').value);
    if (typed.length) setChips(state.composeTo.concat(typed));
  }

  function renderChips() {
    const box = $('compose-chips');
    if (!box) return;
    box.replaceChildren(...state.composeTo.map((name) => h('span', { class: 'chip', dataset: { name } },
      h('span', { class: 'chip-name', text: name }),
      h('button', { type: 'button', class: 'chip-remove', 'aria-label': 'Remove ' + name, title: 'Remove ' + name,
        onclick: () => { setChips(state.composeTo.filter((n) => n !== name)); $('compose-to').focus(); } }, '×'))));
    const cfg = COMPOSE_KINDS[$('compose-kind').value] || COMPOSE_KINDS.email;
    $('compose-to').placeholder = state.composeTo.length ? '' : (cfg.toPh || '');
  }

  function onChipKey(ev) {
    const input = ev.target;
    if ((ev.key === 'Enter' || ev.key === ',' || ev.key === ';') && input.value.trim()) {
      ev.preventDefault();
      commitChipInput();
    } else if (ev.key === 'Backspace' && !input.value && state.composeTo.length) {
      setChips(state.composeTo.slice(0, -1));
    }
  }

  // Errors in words a person uses, attached to the field they are about.
  const FIELD_OF_ERROR = { unknown_recipient: 'compose-to', prank_refused: 'compose-to' };

  function humanError(e) {
    const code = e && e.code;
    const msg = String((e && e.message) || '');
    const name = (msg.match(/:\s*(\S+)\s*$/) || [])[1];
    switch (code) {
      case 'network': return 'Cannot reach the broker. Check your connection; it is retried when the broker is back.';
      case 'unknown_recipient': return name ? `There is no user called “${name}”. Check the spelling.` : 'One of the recipients does not exist. Check the spelling.';
      case 'prank_refused': return 'That person does not accept rick-rolls.';
      case 'auth_failed': return 'Wrong username or password.';
      case 'rate_limited': return 'Too many attempts. Wait a moment and try again.';
      case 'registration_closed': return 'New accounts cannot be created on this broker.';
      case 'account_disabled': return 'This account is disabled. Ask the administrator.';
      case 'quota_exceeded': return 'A mailbox is full. Try again after some mail is read.';
      case 'storage_full': case 'unavailable': return 'The broker is busy or out of space. Try again shortly.';
      default: break;
    }
    if (!msg) return 'Something went wrong. Try again.';
    const text = msg.charAt(0).toUpperCase() + msg.slice(1);
    return /[.!?]$/.test(text) ? text : text + '.';
  }

  function clearFieldErrors() {
    document.querySelectorAll('#compose-form .field-error').forEach((p) => { p.hidden = true; p.textContent = ''; });
    document.querySelectorAll('#compose-form [aria-invalid]').forEach((el) => {
      el.removeAttribute('aria-invalid');
      el.setAttribute('aria-describedby', (el.getAttribute('aria-describedby') || '').split(' ').filter((x) => !x.endsWith('-error')).join(' ').trim());
      if (!el.getAttribute('aria-describedby')) el.removeAttribute('aria-describedby');
    });
  }

  function fieldError(fieldId, text) {
    const field = $(fieldId);
    const err = $(fieldId + '-error');
    err.textContent = text;
    err.hidden = false;
    field.setAttribute('aria-invalid', 'true');
    const ids = (field.getAttribute('aria-describedby') || '').split(' ').filter(Boolean);
    if (!ids.includes(err.id)) ids.push(err.id);
    field.setAttribute('aria-describedby', ids.join(' '));
    field.focus();
  }

  // The outbox: sends made while the broker cannot be reached, kept in this browser's storage
  // with their client_msg_id, and sent once when the live connection is back.
  function outboxKey() { return OUTBOX_KEY_PREFIX + (state.me ? state.me.username : ''); }

  function readOutbox() {
    try { return JSON.parse(localStorage.getItem(outboxKey()) || '[]'); } catch (e) { return []; }
  }

  function writeOutbox(items) {
    try {
      if (items.length) localStorage.setItem(outboxKey(), JSON.stringify(items));
      else localStorage.removeItem(outboxKey());
    } catch (e) { /* storage disabled */ }
    const n = items.length;
    setText('outbox-count', n ? `${n} waiting to be sent.` : '');
  }

  function keepInOutbox(path, body, done) {
    const items = readOutbox();
    if (!items.some((i) => i.body.client_msg_id === body.client_msg_id)) items.push({ path, body, done });
    writeOutbox(items);
  }

  let flushing = false;
  async function flushOutbox() {
    if (flushing || !state.token) return;
    flushing = true;
    try {
      for (;;) {
        const items = readOutbox();
        if (!items.length) break;
        const item = items[0];
        let sent = false;
        try {
          await api('POST', item.path, item.body);
          sent = true;
        } catch (e) {
          if (e.code === 'network' || e.status >= 500) break;   // still away: keep it
          toast(`Could not send: ${humanError(e)}`, { kind: 'error' });
        }
        writeOutbox(readOutbox().filter((i) => i.body.client_msg_id !== item.body.client_msg_id));
        if (sent) toast(item.done, { kind: 'ok' });
        if (item.path === '/api/texts') loadConversations();
      }
    } finally {
      flushing = false;
    }
  }

  async function onComposeSubmit(ev) {
    ev.preventDefault();
    const btn = $('compose-send');
    if (btn.disabled) return;
    const status = $('compose-status');
    const kind = $('compose-kind').value;
    commitChipInput();
    const recipients = state.composeTo.slice();
    const subject = $('compose-subject').value.trim();
    const body = $('compose-body').value;
    let path; let payload; let done;
    showMsg(status, '');
    clearFieldErrors();

    const fail = (field, m) => { fieldError(field, m); };
    const single = () => (recipients.length === 1 ? recipients[0] : null);

    if (kind === 'email') {
      const to = recipients;
      if (!to.length) return fail('compose-to', 'Add at least one recipient.');
      if (!subject) return fail('compose-subject', 'Add a subject.');
      if (!body.trim()) return fail('compose-body', 'Write a message.');
      path = '/api/emails'; payload = { to, subject, body };
      if (state.replyTo) payload.in_reply_to = state.replyTo.message_id;
      if ($('compose-require-ack').checked) payload.require_ack = true;
      done = `Email sent to ${to.join(', ')}.`;
    } else if (kind === 'text') {
      const to = single();
      if (!to) return fail('compose-to', 'A text goes to exactly one person.');
      if (!body.trim()) return fail('compose-body', 'Write a message.');
      path = '/api/texts'; payload = { to, body };
      done = `Text sent to ${to}.`;
    } else if (kind === 'announcement') {
      if (!subject) return fail('compose-subject', 'Add a subject.');
      if (!body.trim()) return fail('compose-body', 'Write a message.');
      path = '/api/announcements'; payload = { subject, body };
      if ($('compose-require-ack').checked) payload.require_ack = true;
      done = 'Announcement sent.';
    } else if (kind === 'rickroll') {
      const to = single();
      if (!to) return fail('compose-to', 'Pick exactly one person to surprise.');
      path = '/api/rickrolls'; payload = { to };
      done = `Surprise sent to ${to}. They will not know it was you.`;
    } else {
      return showMsg(status, 'Pick a message type.', 'error');
    }
    const body2 = Object.assign({}, payload, { client_msg_id: msgIdFor('compose', [kind, payload]) });
    const clearForm = () => {
      $('compose-subject').value = '';
      $('compose-body').value = '';
      $('compose-require-ack').checked = false;
      setReplyTo(null);
      state.sent.stale = true;
      if (kind !== 'email') setChips([]);
    };

    btn.disabled = true;
    btn.classList.add('busy');
    showMsg(status, 'Sending…', 'pending');
    try {
      const res = await api('POST', path, body2);
      delete state.pendingIds.compose;
      showMsg(status, res.duplicate ? 'Already sent earlier — stored once.' : done, 'ok');
      clearForm();
      if (kind === 'text') loadConversations();
      if (state.history.query !== null) state.history.stale = true;
    } catch (e) {
      if (e.code === 'network') {
        keepInOutbox(path, body2, done);
        delete state.pendingIds.compose;
        clearForm();
        showMsg(status, 'You are offline: this message is kept and will be sent when the broker is back.', 'pending');
      } else if (FIELD_OF_ERROR[e.code]) {
        showMsg(status, '');
        fieldError(FIELD_OF_ERROR[e.code], humanError(e));
      } else {
        showMsg(status, humanError(e), 'error');
      }
    } finally {
      btn.disabled = false;
      btn.classList.remove('busy');
    }
  }

  // -------------------------------------------------------- conversations

  async function loadConversations() {
    if (!state.token) return;
    try {
      const res = await api('GET', '/api/history' + qs({ kind: 'text', limit: 200 }));
      const seen = new Map();
      for (const it of res.items || []) {
        const other = otherParty(it);
        if (!other || (state.me && other === state.me.username && it.direction !== 'out')) continue;
        if (!seen.has(other)) seen.set(other, it);
      }
      state.convPartners = Array.from(seen, ([user, last]) => ({ user, last }));
      state.convPartners.forEach((p) => state.knownUsers.add(p.user));
      renderConversations();
      renderKnownUsers();
    } catch (e) { /* keep the old list */ }
  }

  function renderConversations() {
    const unreadBy = new Map();
    for (const e of state.inbox) {
      if (e.kind === 'text' && !e.read && e.sender) unreadBy.set(e.sender, (unreadBy.get(e.sender) || 0) + 1);
    }
    $('conv-list').replaceChildren(...state.convPartners.map(({ user, last }) => {
      const n = unreadBy.get(user) || 0;
      return h('li', {},
        h('button', { type: 'button', class: 'conv-item' + (user === state.conv.user ? ' active' : '') + (n ? ' unread' : ''),
          dataset: { user }, onclick: () => openConversation(user) },
        avatarFor(user),
        h('span', { class: 'conv-item-main' },
          h('span', { class: 'conv-item-top' }, h('span', { class: 'conv-item-name', text: user }), h('time', { class: 'muted small', text: fmtShort(last.sent_at) })),
          h('span', { class: 'conv-item-last muted small', text: (last.direction === 'out' ? 'You: ' : '') + firstLine(last.body) })),
        n ? h('span', { class: 'badge', text: String(n) }) : null));
    }));
    $('conv-list-empty').hidden = state.convPartners.length > 0;
  }

  function resetConversationPane() {
    state.conv = { user: null, ids: new Set() };
    setText('conv-title', 'No conversation open');
    setText('conv-subtitle', 'Pick someone to start texting.');
    paintAvatar($('conv-avatar'), null);
    $('conv-messages').replaceChildren(h('div', { class: 'conv-placeholder' }, icon('text', 'placeholder-icon'), h('p', { text: 'Your texts will appear here.' })));
    $('conv-body').disabled = true;
    $('conv-send').disabled = true;
    $('conv-body').value = '';
    showMsg($('conv-status'), '');
  }

  async function openConversation(user) {
    user = String(user || '').trim();
    if (!user) return;
    state.conv = { user, ids: new Set() };
    $('conv-user').value = '';
    setText('conv-title', user);
    setText('conv-subtitle', state.who.some((u) => u.username === user) ? 'Online' : 'Texts with ' + user);
    paintAvatar($('conv-avatar'), user);
    // The send box opens only once the broker knows this person (an unknown name is refused).
    $('conv-body').disabled = true;
    $('conv-send').disabled = true;
    showMsg($('conv-status'), '');
    renderConversations();
    const box = $('conv-messages');
    box.replaceChildren(h('div', { class: 'conv-placeholder muted', text: 'Loading…' }));
    $('view-texts').classList.add('conv-open');
    try {
      const res = await api('GET', '/api/history' + qs({ with: user, kind: 'text', limit: 100 }));
      if (state.conv.user !== user) return;       // switched meanwhile
      const items = (res.items || []).slice().reverse();
      box.replaceChildren();
      if (!items.length) box.append(h('div', { class: 'conv-placeholder muted', text: `No texts with ${user} yet. Say hello!` }));
      items.forEach((it) => appendBubble(it));
      scrollConvToEnd();
      $('conv-body').disabled = false;
      $('conv-send').disabled = false;
      state.knownUsers.add(user);
      renderKnownUsers();
      markConversationRead(items);
    } catch (e) {
      if (state.conv.user !== user) return;
      if (e.code === 'network') {   // offline: texts are kept in the outbox until the broker is back
        box.replaceChildren(h('div', { class: 'conv-placeholder muted', text: 'You are offline. Texts you write now are sent when the broker is back.' }));
        $('conv-body').disabled = false;
        $('conv-send').disabled = false;
      } else {
        box.replaceChildren();
        showMsg($('conv-status'), humanError(e), 'error');
        setText('conv-subtitle', 'Cannot text this person');
        $('view-texts').classList.remove('conv-open');
        $('conv-user').value = user;
        $('conv-user').setAttribute('aria-invalid', 'true');
        $('conv-user').focus();
        return;
      }
    }
    if (state.view === 'texts') $('conv-body').focus();
  }

  function appendBubble(it) {
    if (it.message_id != null) {
      if (state.conv.ids.has(it.message_id)) return;
      state.conv.ids.add(it.message_id);
    }
    const box = $('conv-messages');
    const ph = box.querySelector('.conv-placeholder');
    if (ph) ph.remove();
    const mine = it.direction === 'out' || (state.me && it.sender === state.me.username && it.direction !== 'in');
    box.append(h('div', { class: 'bubble ' + (mine ? 'mine' : 'theirs'), dataset: { messageId: it.message_id != null ? String(it.message_id) : '' } },
      h('div', { class: 'bubble-text', text: it.body || '' }),
      h('time', { class: 'bubble-time', datetime: it.sent_at || '', title: fmtLong(it.sent_at), text: fmtShort(it.sent_at) })));
  }

  function scrollConvToEnd() {
    const box = $('conv-messages');
    box.scrollTop = box.scrollHeight;
  }

  /** Mark unread incoming texts of the open conversation read (when visible). */
  function markConversationRead(items) {
    const user = state.conv.user;
    if (!user || state.view !== 'texts' || document.hidden) return;
    const fromInbox = state.inbox.filter((e) => e.kind === 'text' && e.sender === user && !e.read);
    const fromItems = (items || []).filter((e) => e.direction === 'in' && typeof e.seq === 'number' && !e.read && !state.inboxSeqs.has(e.seq));
    markRead(fromInbox.concat(fromItems)).then(renderConversations);
  }

  function onIncomingText(entry) {
    if (entry.sender === state.conv.user) {
      appendBubble(Object.assign({ direction: 'in' }, entry));
      scrollConvToEnd();
      markConversationRead();
    }
    loadConversations();
  }

  async function onConvSubmit(ev) {
    ev.preventDefault();
    const user = state.conv.user;
    const input = $('conv-body');
    const body = input.value;
    const btn = $('conv-send');
    if (!user || !body.trim() || btn.disabled) return;
    btn.disabled = true;
    showMsg($('conv-status'), '');
    try {
      const res = await api('POST', '/api/texts', { to: user, body, client_msg_id: msgIdFor('conv', [user, body]) });
      delete state.pendingIds.conv;
      if (state.conv.user === user) {
        appendBubble({ message_id: res.message_id, direction: 'out', sender: state.me.username, recipients: [user], body, sent_at: new Date().toISOString() });
        scrollConvToEnd();
        input.value = '';
        autoGrow(input);
      }
      loadConversations();
    } catch (e) {
      if (e.code === 'network') {
        keepInOutbox('/api/texts', { to: user, body, client_msg_id: msgIdFor('conv', [user, body]) }, `Text sent to ${user}.`);
        delete state.pendingIds.conv;
        appendBubble({ direction: 'out', body, sent_at: new Date().toISOString() });
        input.value = '';
        showMsg($('conv-status'), 'You are offline: kept, and sent when the broker is back.', 'pending');
      } else {
        showMsg($('conv-status'), humanError(e), 'error');
      }
    } finally {
      btn.disabled = !state.conv.user;
      input.focus();
    }
  }

  function autoGrow(ta) {
    ta.style.height = 'auto';
    ta.style.height = Math.min(ta.scrollHeight, 160) + 'px';
  }

  // --------------------------------------------------------------- history

  function historyQuery() {
    return {
      q: $('history-search').value.trim(),
      with: $('history-with').value.trim(),
      kind: $('history-kind').value,
      since: $('history-since').value,
    };
  }

  async function runHistory(more) {
    const btnMore = $('history-more');
    const btnGo = $('history-go');
    const q = more && state.history.query ? state.history.query : historyQuery();
    const params = Object.assign({}, q, { limit: PAGE_SIZE });
    if (more && q.q) {
      params.offset = state.history.items.length; // a search is ranked: page by position
    } else if (more) {
      const ids = state.history.items.map((i) => i.message_id).filter((x) => typeof x === 'number');
      if (ids.length) params.before_id = Math.min(...ids);
    }
    btnGo.disabled = true; btnMore.disabled = true;
    showMsg($('history-error'), '');
    try {
      const res = await api('GET', '/api/history' + qs(params));
      const items = res.items || [];
      if (!more) { state.history.items = []; state.history.query = q; $('history-list').replaceChildren(); }
      const have = new Set(state.history.items.map((i) => i.message_id));
      const fresh = items.filter((i) => !have.has(i.message_id));
      state.history.items.push(...fresh);
      $('history-list').append(...fresh.map(renderHistoryItem));
      $('history-empty').hidden = state.history.items.length > 0;
      btnMore.hidden = items.length < PAGE_SIZE;
    } catch (e) {
      showMsg($('history-error'), humanError(e), 'error');
    } finally {
      btnGo.disabled = false; btnMore.disabled = false;
    }
  }

  function renderHistoryItem(it) {
    const kind = safeKind(it.kind);
    const out = it.direction === 'out';
    const isRick = kind === 'rickroll';
    const to = (it.recipients || []).join(', ');
    let who;
    if (out) who = kind === 'announcement' ? 'You → everyone' : `You → ${to || '?'}`;
    else who = `${it.sender == null ? 'someone' : it.sender} → you`;
    let title = it.subject || '';
    let body = it.body || '';
    if (isRick) { title = out ? `You rick-rolled ${to}` : 'Someone sent you a surprise'; body = ''; }
    const bodyEl = h('div', { class: 'hist-body', text: body });
    const li = h('li', { class: `hist-item kind-${kind} ${out ? 'out' : 'in'}`, dataset: { messageId: String(it.message_id), kind: it.kind } },
      h('div', { class: 'hist-dir', title: out ? 'Sent' : 'Received' }, icon(out ? 'out' : 'in')),
      h('div', { class: 'hist-main' },
        h('div', { class: 'hist-top' },
          kindPill(kind),
          h('span', { class: 'hist-who', text: who }),
          h('time', { class: 'muted small hist-time', datetime: it.sent_at || '', title: fmtLong(it.sent_at), text: fmtShort(it.sent_at) })),
        title ? h('div', { class: 'hist-subject', text: title }) : null,
        body ? bodyEl : null));
    if (body) li.addEventListener('click', () => li.classList.toggle('expanded'));
    return li;
  }

  // -------------------------------------------------------------- settings

  async function onPrankToggle() {
    const box = $('pref-allow-pranks');
    const allow = box.checked;
    const status = $('pref-status');
    box.disabled = true;
    showMsg(status, 'Saving…', 'pending');
    try {
      const res = await api('PUT', '/api/prefs', { prank_opt_out: !allow });
      const optOut = typeof res.prank_opt_out === 'boolean' ? res.prank_opt_out : !allow;
      box.checked = !optOut;
      if (state.me) state.me.prank_opt_out = optOut;
      showMsg(status, optOut ? 'Rick-rolls are now blocked.' : 'Rick-rolls are allowed.', 'ok');
    } catch (e) {
      box.checked = !allow;
      showMsg(status, humanError(e), 'error');
    } finally {
      box.disabled = false;
    }
  }

  async function onReadReceiptsToggle() {
    const box = $('pref-read-receipts');
    const on = box.checked;
    const status = $('pref-status');
    box.disabled = true;
    showMsg(status, 'Saving…', 'pending');
    try {
      const res = await api('PUT', '/api/prefs', { read_receipts: on });
      box.checked = res.read_receipts !== false;
      showMsg(status, box.checked ? 'People who write to you see when you read it.' : 'Read receipts are off: senders see “delivered” only.', 'ok');
    } catch (e) {
      box.checked = !on;
      showMsg(status, humanError(e), 'error');
    } finally {
      box.disabled = false;
    }
  }

  // ------------------------------------------------------------------ init

  function bindEvents() {
    $('login-form').addEventListener('submit', onLoginSubmit);
    $('login-create').addEventListener('change', updateLoginMode);
    $('logout').addEventListener('click', logout);
    document.querySelectorAll('[data-nav]').forEach((b) => b.addEventListener('click', () => {
      if (b.dataset.nav === 'inbox' && state.view === 'inbox') $('inbox-split').classList.remove('reading');
      showView(b.dataset.nav);
    }));
    window.addEventListener('popstate', () => { if (state.token) showView(viewFromHash() || 'inbox', { replace: true }); });

    $('inbox-refresh').addEventListener('click', () => loadInbox().catch((e) => toast(humanError(e), { kind: 'error' })));
    $('inbox-more').addEventListener('click', () => loadInbox(true).catch((e) => toast(humanError(e), { kind: 'error' })));
    $('inbox-mark-all').addEventListener('click', markAllRead);
    $('inbox-archived').addEventListener('click', toggleShowArchived);
    $('sent-refresh').addEventListener('click', () => loadSent(false));
    $('sent-more').addEventListener('click', () => loadSent(true));
    $('sent-reader').addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') { ev.preventDefault(); $('sent-split').classList.remove('reading'); }
    });
    $('pref-read-receipts').addEventListener('change', onReadReceiptsToggle);

    $('compose-kind').addEventListener('change', () => { setReplyTo(null); updateComposeKind(); });
    $('compose-form').addEventListener('submit', onComposeSubmit);

    $('conv-pick').addEventListener('submit', (ev) => { ev.preventDefault(); $('conv-user').removeAttribute('aria-invalid'); openConversation($('conv-user').value); });
    $('compose-to').addEventListener('keydown', onChipKey);
    $('compose-to').addEventListener('change', commitChipInput);   // a pick from the suggestions
    $('compose-to').addEventListener('blur', commitChipInput);
    $('conn-retry').addEventListener('click', retryNow);
    $('notify-enable').addEventListener('click', askNotifications);
    $('inbox-reader').addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') { ev.preventDefault(); closeReader(); }
    });
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && state.view === 'texts' && $('view-texts').classList.contains('conv-open')) {
        $('view-texts').classList.remove('conv-open');
      }
    });
    $('conv-form').addEventListener('submit', onConvSubmit);
    $('conv-body').addEventListener('input', (ev) => autoGrow(ev.target));
    $('conv-body').addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $('conv-form').requestSubmit(); }
    });

    $('who-refresh').addEventListener('click', loadWho);

    $('history-form').addEventListener('submit', (ev) => { ev.preventDefault(); runHistory(false); });
    $('history-more').addEventListener('click', () => runHistory(true));
    $('history-kind').addEventListener('change', () => runHistory(false));

    $('pref-allow-pranks').addEventListener('change', onPrankToggle);

    // The browser telling us the network or the user is back: reconnect now, not at the next tick.
    window.addEventListener('online', retryNow);
    window.addEventListener('focus', retryNow);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) { retryNow(); markConversationRead(); }
    });
  }

  function updateNotifySetting() {
    const supported = typeof Notification === 'function';
    const perm = supported ? Notification.permission : 'unsupported';
    $('notify-enable').hidden = perm !== 'default';
    setText('notify-state', perm === 'granted' ? 'On: new mail shows a system notification while this tab is hidden.'
      : perm === 'denied' ? 'Blocked in this browser’s site settings.'
        : perm === 'unsupported' ? 'This browser has no system notifications.' : 'Off.');
  }

  async function askNotifications() {
    if (typeof Notification !== 'function') return;
    try { await Notification.requestPermission(); } catch (e) { /* ignore */ }
    updateNotifySetting();
  }

  function registerServiceWorker() {
    if (!('serviceWorker' in navigator)) return;
    navigator.serviceWorker.register('/sw.js').catch(() => { /* not a secure context: no offline shell */ });
  }

  async function init() {
    registerServiceWorker();
    updateNotifySetting();
    fillIcons(document);
    bindEvents();
    updateLoginMode();
    updateComposeKind();
    resetConversationPane();
    renderChips();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) {
      state.token = token;
      try {
        await startSession(null);
        focusView();
        return;
      } catch (e) {
        if (state.token) endSession(e.status === 401 ? 'Your session has ended. Please sign in again.' : humanError(e));
        return;
      }
    }
    $('login-view').hidden = false;
    $('login-username').focus();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
