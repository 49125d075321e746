// "Invite someone": shows the web UI's LAN address and its QR code (GET /api/invite) to a
// signed-in user. Self-contained: it reads the session token app.js keeps in sessionStorage.
'use strict';
(function () {
  const TOKEN_KEY = 'mailnet.token';
  const $ = (id) => document.getElementById(id);

  async function openInvite() {
    const dialog = $('invite-dialog');
    const img = $('invite-qr');
    $('invite-url').textContent = '';
    $('invite-message').textContent = 'Loading…';
    img.hidden = true;
    dialog.showModal();
    try {
      const res = await fetch('/api/invite', {
        headers: { Accept: 'application/json', Authorization: 'Bearer ' + (sessionStorage.getItem(TOKEN_KEY) || '') },
        cache: 'no-store',
      });
      const data = await res.json();
      if (!res.ok) throw new Error((data.error && data.error.message) || 'HTTP ' + res.status);
      $('invite-url').textContent = data.url || '';
      $('invite-message').textContent = data.message;
      if (data.svg) {
        img.src = 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(data.svg);
        img.alt = 'QR code of ' + data.url;
        img.hidden = false;
      }
    } catch (e) {
      $('invite-message').textContent = 'Cannot get the invitation: ' + e.message;
    }
  }

  function init() { $('invite-open').addEventListener('click', openInvite); }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
