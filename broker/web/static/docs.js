/*
 * The HTTP API reference at /docs: renders the broker's own /openapi.json into a page (paths,
 * parameters, bodies, responses, schemas). A page of our own rather than a vendored Swagger UI
 * or ReDoc bundle: nothing to fetch from elsewhere, no inline scripts or styles (the page's CSP
 * stays strict), and ~150 lines instead of a megabyte. Text is inserted with textContent only.
 */
(function () {
  'use strict';

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined) continue;
      if (k === 'text') el.textContent = String(v); else el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function refName(ref) { return String(ref).split('/').pop(); }

  function typeOf(schema) {
    if (!schema) return 'any';
    if (schema.$ref) return refName(schema.$ref);
    if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(' | ');
    if (schema.anyOf || schema.oneOf) return (schema.anyOf || schema.oneOf).map(typeOf).join(' | ');
    if (schema.type === 'array') return typeOf(schema.items) + '[]';
    if (Array.isArray(schema.type)) return schema.type.join(' | ');
    return schema.type || 'object';
  }

  function typeCell(schema) {
    const t = typeOf(schema);
    if (schema && (schema.$ref || (schema.items && schema.items.$ref))) {
      const name = refName(schema.$ref || schema.items.$ref);
      return h('td', {}, h('a', { href: '#schema-' + name }, h('code', { text: t })));
    }
    return h('td', {}, h('code', { text: t }));
  }

  function propsTable(schema) {
    const props = (schema && schema.properties) || {};
    const required = new Set((schema && schema.required) || []);
    const names = Object.keys(props);
    if (!names.length) return null;
    return h('table', {},
      h('thead', {}, h('tr', {}, h('th', { text: 'Field' }), h('th', { text: 'Type' }), h('th', { text: 'Description' }))),
      h('tbody', {}, names.map((n) => h('tr', {},
        h('td', {}, h('code', { text: n }), required.has(n) ? ' (required)' : ''),
        typeCell(props[n]),
        h('td', { text: props[n].description || '' })))));
  }

  function bodySchema(content) {
    const json = content && content['application/json'];
    return json ? json.schema : null;
  }

  function renderOp(path, method, op) {
    const id = 'op-' + (op.operationId || method + path.replace(/\W+/g, '-'));
    const parts = [h('h3', { id }, h('span', { class: 'method', text: method }), h('span', { text: path }))];
    if (op.summary) parts.push(h('p', { text: op.summary }));
    if (op.description) parts.push(h('p', { class: 'muted', text: op.description }));
    const params = op.parameters || [];
    if (params.length) {
      parts.push(h('h4', { text: 'Parameters' }), h('table', {},
        h('thead', {}, h('tr', {}, h('th', { text: 'Name' }), h('th', { text: 'In' }), h('th', { text: 'Type' }), h('th', { text: 'Description' }))),
        h('tbody', {}, params.map((p) => h('tr', {},
          h('td', {}, h('code', { text: p.name }), p.required ? ' (required)' : ''),
          h('td', { text: p.in }), typeCell(p.schema), h('td', { text: p.description || '' }))))));
    }
    const req = op.requestBody && bodySchema(op.requestBody.content);
    if (req) {
      parts.push(h('h4', { text: 'Request body' }));
      parts.push(req.$ref ? h('p', {}, h('a', { href: '#schema-' + refName(req.$ref) }, h('code', { text: refName(req.$ref) }))) : propsTable(req));
    }
    const responses = Object.entries(op.responses || {});
    if (responses.length) {
      parts.push(h('h4', { text: 'Responses' }), h('table', {},
        h('tbody', {}, responses.map(([code, r]) => {
          const s = bodySchema(r.content);
          return h('tr', {}, h('td', {}, h('code', { text: code })), s ? typeCell(s) : h('td'), h('td', { text: r.description || '' }));
        }))));
    }
    return { id, el: h('section', { class: 'op', 'aria-labelledby': id }, parts) };
  }

  async function main() {
    const intro = document.getElementById('apidocs-intro');
    let doc;
    try {
      const res = await fetch('/openapi.json', { headers: { Accept: 'application/json' } });
      doc = await res.json();
    } catch (e) {
      intro.textContent = 'Cannot load /openapi.json: ' + e.message;
      return;
    }
    const info = doc.info || {};
    document.getElementById('apidocs-title').textContent = (info.title || 'HTTP API') + ' reference' + (info.version ? ' (' + info.version + ')' : '');
    intro.textContent = info.description || '';
    const toc = h('ul');
    const ops = document.getElementById('apidocs-ops');
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const [method, op] of Object.entries(item)) {
        if (!op || typeof op !== 'object' || !op.responses) continue;
        const { id, el } = renderOp(path, method, op);
        ops.append(el);
        toc.append(h('li', {}, h('a', { href: '#' + id }, method.toUpperCase() + ' ' + path)));
      }
    }
    document.getElementById('apidocs-toc').append(toc);
    const schemas = (doc.components && doc.components.schemas) || {};
    document.getElementById('apidocs-schemas').append(...Object.entries(schemas).map(([name, s]) => h('section', { class: 'op', 'aria-labelledby': 'schema-' + name },
      h('h3', { id: 'schema-' + name, text: name }),
      s.description ? h('p', { class: 'muted', text: s.description }) : null,
      propsTable(s) || h('pre', { text: JSON.stringify(s, null, 2) }))));
    if (location.hash) { const t = document.getElementById(location.hash.slice(1)); if (t) t.scrollIntoView(); }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', main); else main();
})();
