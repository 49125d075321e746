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
  const WS_BACKOFF_MAX_MS = 15000;
  const TOAST_MS = 6000;
  const VIEWS = ['inbox', 'texts', 'compose', 'who', 'history', 'settings'];
  const KIND_LABEL = { email: 'Email', text: 'Text', announcement: 'Announcement', rickroll: 'Surprise' };
  const TOKEN_KEY = 'mailnet.token';
  const SEQ_KEY_PREFIX = 'mailnet.lastSeq.';

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
    wsBackoff: 1000,
    wsRetryTimer: null,
    wsEverReady: false,
    pingTimer: null,
    wsLastFrame: 0,
    whoTimer: null,
    whoReloadTimer: null,
    pendingIds: {},           // slot -> {key, id}: client_msg_id reused on retry
    ending: false,
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
      if (res.created) toast('Welcome to mailnet, ' + res.username + '! Your account was created.', { kind: 'ok' });
    } catch (e) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showMsg(errEl, e.message, 'error');
    } finally {
      btn.disabled = false;
      btn.classList.remove('busy');
    }
  }

  /** After a token is known: load the user, show the app, start live updates. */
  async function startSession(loginInfo) {
    state.ending = false;
    const me = await api('GET', '/api/me');
    state.me = me;
    state.lastSeq = Number(sessionStorage.getItem(seqKey())) || 0;
    setText('me', me.username);
    paintAvatar($('me-avatar'), me.username);
    setText('settings-user', me.username);
    setText('settings-role', me.role || 'user');
    $('pref-allow-pranks').checked = !me.prank_opt_out;
    setUnread(Number(me.unread) || 0);
    $('login-view').hidden = true;
    $('app-view').hidden = false;
    showView(viewFromHash() || 'inbox', { replace: true });

    await loadInbox().catch((e) => toast(e.message, { kind: 'error' }));
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
    const btn = $('logout');
    btn.disabled = true;
    try { await api('POST', '/api/logout'); } catch (e) { /* token may already be gone */ }
    btn.disabled = false;
    endSession('');
  }

  /** Forget the session locally and go back to the sign-in screen. */
  function endSession(message) {
    if (state.ending) return;
    state.ending = true;
    stopWs();
    clearInterval(state.whoTimer);
    clearTimeout(state.whoReloadTimer);
    try {
      sessionStorage.removeItem(TOKEN_KEY);
      if (state.me) sessionStorage.removeItem(seqKey());
    } catch (e) { /* ignore */ }
    Object.assign(state, {
      token: null, me: null, lastSeq: 0, inbox: [], inboxSeqs: new Set(), inboxHasMore: false,
      unread: 0, openSeq: null, conv: { user: null, ids: new Set() }, convPartners: [],
      history: { items: [], query: null }, who: [], knownUsers: new Set(), pendingIds: {},
    });
    ['inbox-list', 'conv-list', 'conv-messages', 'who-list', 'history-list', 'known-users', 'toasts']
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
    const params = { limit: PAGE_SIZE };
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
    list.replaceChildren(...state.inbox.map((e) => renderEntry(e, e.seq === freshSeq)));
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
      tabindex: '0',
      role: 'button',
      'aria-label': `${kindLabel(kind)} from ${senderName(e)}${e.read ? '' : ', unread'}`,
      onclick: () => openEntry(e.seq),
      onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); openEntry(e.seq); } },
    },
    avatarFor(isRick ? null : e.sender, 'kind-avatar-' + kind),
    h('div', { class: 'entry-main' },
      h('div', { class: 'entry-top' },
        h('span', { class: 'entry-sender' + (e.sender == null ? ' anon' : ''), text: senderName(e) }),
        h('span', { class: 'entry-kind', title: kindLabel(kind) }, icon(kind), h('span', { class: 'sr', text: kindLabel(kind) })),
        h('time', { class: 'entry-time', datetime: e.sent_at || '', title: fmtLong(e.sent_at), text: fmtShort(e.sent_at) })),
      h('div', { class: 'entry-subject', text: subject }),
      h('div', { class: 'entry-body', text: preview })));
  }

  function findEntry(seq) { return state.inbox.find((e) => e.seq === seq) || null; }

  async function openEntry(seq) {
    const e = findEntry(seq);
    if (!e) return;
    state.openSeq = seq;
    renderReader(e);
    $('inbox-split').classList.add('reading');
    document.querySelectorAll('#inbox-list .entry').forEach((li) => li.classList.toggle('selected', Number(li.dataset.seq) === seq));
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
    } catch (err) {
      todo.forEach((e) => { e.read = false; });
      setUnread(state.unread + todo.length);
      refreshEntryRows(todo);
      toast('Could not mark as read: ' + err.message, { kind: 'error' });
    }
  }

  function refreshEntryRows(entries) {
    for (const e of entries) {
      const inboxEntry = findEntry(e.seq);
      if (inboxEntry && inboxEntry !== e) inboxEntry.read = e.read;
      const li = $('inbox-list').querySelector(`.entry[data-seq="${Number(e.seq)}"]`);
      if (li) li.classList.toggle('unread', !e.read);
    }
  }

  function resetReader() {
    state.openSeq = null;
    $('inbox-split').classList.remove('reading');
    $('inbox-reader').replaceChildren(
      h('div', { class: 'reader-placeholder' }, icon('inbox', 'placeholder-icon'), h('p', { text: 'Select a message to read it.' })));
  }

  function renderReader(e) {
    const kind = safeKind(e.kind);
    const back = h('button', { type: 'button', class: 'btn btn-ghost btn-sm reader-back', onclick: () => { $('inbox-split').classList.remove('reading'); } },
      icon('back'), 'Inbox');
    const parts = [back];

    if (kind === 'rickroll' && e.direction !== 'out') {
      parts.push(h('div', { class: 'reader-head' }, kindPill(kind), h('h3', { class: 'reader-subject', text: 'Someone sent you a surprise' }),
        h('div', { class: 'reader-meta muted small' }, h('time', { datetime: e.sent_at || '', text: fmtLong(e.sent_at) }))));
      parts.push(h('div', { class: 'surprise' },
        icon('rickroll', 'surprise-icon'),
        h('p', { text: 'An anonymous someone thinks you will enjoy this link. Click it only if you want to.' }),
        // Fixed link (never taken from message data); opened only by the user's click.
        h('a', { class: 'surprise-link', href: RICKROLL_URL, rel: 'noopener noreferrer', target: '_blank' }, icon('link'), RICKROLL_URL)));
    } else {
      const to = (e.recipients || []).join(', ');
      parts.push(h('div', { class: 'reader-head' },
        kindPill(kind),
        h('h3', { class: 'reader-subject', text: e.subject || (kind === 'text' ? 'Text message' : '(no subject)') }),
        h('div', { class: 'reader-from' },
          avatarFor(e.sender),
          h('div', {},
            h('div', {}, h('strong', { text: senderName(e) }), to && kind !== 'announcement' ? h('span', { class: 'muted', text: ' to ' + to }) : null),
            h('time', { class: 'muted small', datetime: e.sent_at || '', text: fmtLong(e.sent_at) })))));
      parts.push(h('div', { class: 'reader-body', text: e.body || '' }));
      const actions = h('div', { class: 'reader-actions' });
      if (kind === 'email' && e.sender) {
        actions.append(h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => replyEmail(e) }, icon('reply'), 'Reply'));
      }
      if (kind === 'text' && e.sender) {
        actions.append(h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => { showView('texts'); openConversation(e.sender); } }, icon('text'), 'Open conversation'));
      }
      if (actions.childNodes.length) parts.push(actions);
    }
    const reader = $('inbox-reader');
    reader.className = 'pane reader-pane kind-' + kind;
    reader.replaceChildren(...parts);
    reader.scrollTop = 0;
  }

  function replyEmail(e) {
    showView('compose');
    $('compose-kind').value = 'email';
    updateComposeKind();
    $('compose-to').value = e.sender;
    const subj = e.subject || '';
    $('compose-subject').value = /^re:/i.test(subj) ? subj : 'Re: ' + subj;
    const quoted = String(e.body || '').split('\n').map((l) => '> ' + l).join('\n');
    $('compose-body').value = `\n\nOn ${fmtLong(e.sent_at)}, ${e.sender} wrote:\n${quoted}`;
    $('compose-body').focus();
    $('compose-body').setSelectionRange(0, 0);
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
    const text = label || (online ? 'Live: connected' : 'Offline: reconnecting…');
    dot.title = text;
    dot.setAttribute('aria-label', text);
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
          state.wsBackoff = 1000;
          setConn(true);
          startPing();
          if (typeof msg.last_seq === 'number' && state.lastSeq > 0) wsSend({ op: 'ack', seq: state.lastSeq });
          if (state.wsEverReady) refreshUnread();   // reconnect: reads may have happened elsewhere
          state.wsEverReady = true;
          break;
        case 'mail': onMailEvent(msg.entry); break;
        case 'presence': onPresenceEvent(msg); break;
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
    setConn(false, `Offline: reconnecting in ${Math.round(delay / 1000)} s…`);
    state.wsRetryTimer = setTimeout(connectWs, delay);
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
    state.wsBackoff = 1000;
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

  function notify(e) {
    let text;
    const who = e.sender == null ? 'someone' : e.sender;
    switch (e.kind) {
      case 'email': text = `New email from ${who}: ${e.subject || '(no subject)'}`; break;
      case 'text': text = `New text from ${who}: ${firstLine(e.body)}`; break;
      case 'announcement': text = `Announcement from ${who}: ${e.subject || firstLine(e.body)}`; break;
      case 'rickroll': text = 'Someone sent you a surprise'; break;
      default: text = `New message from ${who}`;
    }
    toast(text, {
      kind: safeKind(e.kind),
      onclick: () => {
        if (e.kind === 'text' && e.sender) { showView('texts'); openConversation(e.sender); } else { showView('inbox'); openEntry(e.seq); }
      },
    });
  }

  // ---------------------------------------------------------------- toasts

  function toast(text, opts) {
    const o = opts || {};
    const box = $('toasts');
    while (box.childElementCount >= 4) box.firstElementChild.remove();
    const t = h('div', { class: 'toast toast-' + (o.kind || 'info'), role: o.kind === 'error' ? 'alert' : 'status' },
      icon(o.kind && ICONS[o.kind] ? o.kind : 'inbox'),
      h('span', { class: 'toast-msg', text }));
    const close = () => { t.classList.add('leaving'); setTimeout(() => t.remove(), 250); };
    t.addEventListener('click', () => { if (o.onclick) o.onclick(); close(); });
    box.append(t);
    setTimeout(close, o.ms || TOAST_MS);
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
      showMsg($('who-error'), e.message, 'error');
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
        h('span', { class: 'avatar-wrap' }, avatarFor(u.username), h('span', { class: 'presence-dot', 'aria-hidden': 'true' })),
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
    email: { to: 'To (comma separated)', toPh: 'bob, carol', subject: true, body: true, hint: 'An email to one or more people.' },
    text: { to: 'To', toPh: 'bob', subject: false, body: true, hint: 'A short text to one person.' },
    announcement: { to: null, subject: true, body: true, hint: 'An announcement goes to everyone.' },
    rickroll: { to: 'To', toPh: 'bob', subject: false, body: false, hint: 'Sends a harmless, anonymous rick-roll link. They see "Someone sent you a surprise" and choose whether to click it.' },
  };

  function updateComposeKind() {
    const kind = $('compose-kind').value;
    const cfg = COMPOSE_KINDS[kind] || COMPOSE_KINDS.email;
    $('compose-to-row').hidden = !cfg.to;
    if (cfg.to) { setText('compose-to-label', cfg.to); $('compose-to').placeholder = cfg.toPh; }
    $('compose-subject-row').hidden = !cfg.subject;
    $('compose-body-row').hidden = !cfg.body;
    setText('compose-hint', cfg.hint);
    showMsg($('compose-status'), '');
  }

  function splitRecipients(s) {
    return Array.from(new Set(String(s || '').split(/[,;\s]+/).map((x) => x.trim()).filter(Boolean)));
  }

  async function onComposeSubmit(ev) {
    ev.preventDefault();
    const btn = $('compose-send');
    if (btn.disabled) return;
    const status = $('compose-status');
    const kind = $('compose-kind').value;
    const toRaw = $('compose-to').value;
    const subject = $('compose-subject').value.trim();
    const body = $('compose-body').value;
    let path; let payload; let done;

    const fail = (m) => showMsg(status, m, 'error');
    const single = () => {
      const list = splitRecipients(toRaw);
      if (list.length !== 1) return null;
      return list[0];
    };

    if (kind === 'email') {
      const to = splitRecipients(toRaw);
      if (!to.length) return fail('Add at least one recipient.');
      if (!subject) return fail('Add a subject.');
      if (!body.trim()) return fail('Write a message.');
      path = '/api/emails'; payload = { to, subject, body };
      done = `Email sent to ${to.join(', ')}.`;
    } else if (kind === 'text') {
      const to = single();
      if (!to) return fail('A text goes to exactly one person.');
      if (!body.trim()) return fail('Write a message.');
      path = '/api/texts'; payload = { to, body };
      done = `Text sent to ${to}.`;
    } else if (kind === 'announcement') {
      if (!subject) return fail('Add a subject.');
      if (!body.trim()) return fail('Write a message.');
      path = '/api/announcements'; payload = { subject, body };
      done = 'Announcement sent.';
    } else if (kind === 'rickroll') {
      const to = single();
      if (!to) return fail('Pick exactly one person to surprise.');
      path = '/api/rickrolls'; payload = { to };
      done = `Surprise sent to ${to}. They will not know it was you.`;
    } else {
      return fail('Pick a message type.');
    }
    const body2 = Object.assign({}, payload, { client_msg_id: msgIdFor('compose', [kind, payload]) });

    btn.disabled = true;
    btn.classList.add('busy');
    showMsg(status, 'Sending…', 'pending');
    try {
      const res = await api('POST', path, body2);
      delete state.pendingIds.compose;
      showMsg(status, res.duplicate ? 'Already sent earlier — stored once.' : done, 'ok');
      $('compose-subject').value = '';
      $('compose-body').value = '';
      if (kind !== 'email') $('compose-to').value = '';
      if (kind === 'text') loadConversations();
      if (state.history.query !== null) state.history.stale = true;
    } catch (e) {
      showMsg(status, e.message, 'error');
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
    $('conv-body').disabled = false;
    $('conv-send').disabled = false;
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
      markConversationRead(items);
    } catch (e) {
      if (state.conv.user !== user) return;
      box.replaceChildren(h('div', { class: 'form-error', text: e.message }));
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
      showMsg($('conv-status'), e.message, 'error');
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
      showMsg($('history-error'), e.message, 'error');
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
      showMsg(status, e.message, 'error');
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

    $('inbox-refresh').addEventListener('click', () => loadInbox().catch((e) => toast(e.message, { kind: 'error' })));
    $('inbox-more').addEventListener('click', () => loadInbox(true).catch((e) => toast(e.message, { kind: 'error' })));
    $('inbox-mark-all').addEventListener('click', markAllRead);

    $('compose-kind').addEventListener('change', updateComposeKind);
    $('compose-form').addEventListener('submit', onComposeSubmit);

    $('conv-pick').addEventListener('submit', (ev) => { ev.preventDefault(); openConversation($('conv-user').value); });
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

    window.addEventListener('online', () => { if (state.token && !state.ws) { state.wsBackoff = 1000; connectWs(); } });
    document.addEventListener('visibilitychange', () => { if (!document.hidden) markConversationRead(); });
  }

  async function init() {
    fillIcons(document);
    bindEvents();
    updateLoginMode();
    updateComposeKind();
    resetConversationPane();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) {
      state.token = token;
      try {
        await startSession(null);
        return;
      } catch (e) {
        if (state.token) endSession(e.status === 401 ? 'Your session has ended. Please sign in again.' : e.message);
        return;
      }
    }
    $('login-view').hidden = false;
    $('login-username').focus();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
