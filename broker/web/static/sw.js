/*
 * mailnet service worker: the offline shell. The page and its static files are fetched from the
 * network first (so an updated broker serves updated files) and kept in a cache; when the broker
 * cannot be reached they come from that cache, so a reload during an outage shows the app (with
 * its offline banner), not the browser's error page. The API and the WebSocket are never cached.
 * Sends made while offline are kept by the page itself (app.js, the outbox in localStorage).
 */
'use strict';

const CACHE = 'mailnet-shell-v1';
const SHELL = ['/', '/static/app.js', '/static/style.css', '/static/invite.js', '/static/icon.svg', '/manifest.webmanifest'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

function isShell(url) {
  return url.origin === self.location.origin && (SHELL.includes(url.pathname) || url.pathname.startsWith('/static/'));
}

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  const navigation = req.mode === 'navigate' && url.origin === self.location.origin && url.pathname === '/';
  if (!navigation && !isShell(url)) return;   // the API, /docs, /openapi.json: straight to the network
  const key = navigation ? '/' : url.pathname;
  event.respondWith(
    fetch(req)
      .then((res) => {
        if (res.ok) {
          const copy = res.clone();
          caches.open(CACHE).then((cache) => cache.put(key, copy));
        }
        return res;
      })
      .catch(() => caches.match(key).then((hit) => hit || Response.error())),
  );
});
