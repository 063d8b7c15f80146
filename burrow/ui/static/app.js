// The dashboard: three views (overview, account, queue) chosen by the URL fragment, each
// sampled every 1.5 s while the tab is visible. Reads come from /ui-api; writes go through the
// ordinary v1.0 API. Every name, id and body is put in the page as text (dom.js), never markup.

import { AuthError, call, getJson, randomId, seg, setToken, token } from './api.js';
import { Chart } from './chart.js';
import { $, bytes, duration, fill, fmt, h, rate, replace } from './dom.js';

const PERIOD_MS = 1500;
const MESSAGES_PAGE = 20;
const DEPTH = [
  { key: 'visible', label: 'Visible' },
  { key: 'in_flight', label: 'In flight' },
  { key: 'delayed', label: 'Delayed' },
];
const RATES = [
  { key: 'sent', label: 'Sent' },
  { key: 'delivered', label: 'Delivered' },
  { key: 'deleted', label: 'Deleted' },
];

let stopView = () => {};

// -- errors, sign-in, who ---------------------------------------------------------------

function showError(message) {
  const el = $('error');
  replace(el, message);
  el.hidden = !message;
}

function showSignIn(message) {
  $('sign-in').hidden = false;
  $('view').hidden = true; // nothing to show without a token
  replace($('who'), 'signed out');
  replace($('sign-in-message'), token() ? message : '');
  $('token').focus();
}

/** Report a failed call: a 401 asks for a token, anything else shows in the banner. */
function failed(error) {
  if (error instanceof AuthError) showSignIn(error.message);
  else showError(error.message);
}

function showWho(who) {
  let text = 'auth off';
  if (who.auth) text = who.admin ? 'signed in: admin' : `signed in: account ${who.account}`;
  if (who.auth && !who.write) text += ' (read-only)';
  replace($('who'), text);
  $('sign-out').hidden = !token();
}

function crumbs(...items) {
  const nav = $('crumbs');
  replace(nav);
  items.forEach(([text, href], i) => {
    if (i) nav.append(h('span', { class: 'sep', 'aria-hidden': 'true' }, '/'));
    nav.append(href ? h('a', { href }, text) : h('span', { class: 'here' }, text));
  });
}

// -- building blocks ----------------------------------------------------------------------

/** Calls `load` now and every PERIOD_MS while the tab is visible; returns the stop function. */
function every(load) {
  let stopped = false;
  let timer = 0;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await load();
        showError('');
      } catch (error) {
        failed(error);
        if (error instanceof AuthError) return; // signing in starts the view again
      }
    }
    if (!stopped) timer = setTimeout(tick, PERIOD_MS);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** Per-second change of numbers between two samples (null for the first). */
class Rates {
  constructor() {
    this.last = new Map();
  }

  /** The rate of `value` under `key` since its previous sample at monotonic seconds `at`. */
  of(key, value, at) {
    const previous = this.last.get(key);
    this.last.set(key, [value, at]);
    if (!previous || at <= previous[1]) return null;
    return (value - previous[0]) / (at - previous[1]);
  }
}

function card(label, id, extra = '') {
  return h('div', { class: `card ${extra}` }, h('div', { class: 'label' }, label), h('div', { class: 'value', id }, '—'));
}

function chartPanel(title, series, id) {
  const canvas = h('canvas', { class: 'chart', id, role: 'img', 'aria-label': title });
  const legend = h('div', { class: 'legend' },
    series.map((s) => h('span', {}, h('i', { class: `swatch s-${s.key}` }), s.label)));
  const panel = h('section', { class: 'panel' }, h('h2', {}, title), canvas, legend);
  const chart = new Chart(canvas, series);
  requestAnimationFrame(() => chart.draw()); // the empty axes, once the canvas is laid out
  return { panel, chart };
}

function table(head, rows, empty, numeric = []) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('table', {},
    h('thead', {}, h('tr', {}, head.map((c, i) => h('th', { class: numeric.includes(i) ? 'num' : null }, c)))),
    h('tbody', {}, rows));
}

function set(id, value) {
  const el = $(id);
  if (el) replace(el, value);
}

function pager(state, next, reload) {
  const first = h('button', { type: 'button', class: 'secondary', disabled: !state.markers.length, onclick: () => {
    state.markers = [];
    state.marker = null;
    reload();
  } }, '« First');
  const back = h('button', { type: 'button', class: 'secondary', disabled: !state.markers.length, onclick: () => {
    state.marker = state.markers.pop() ?? null;
    reload();
  } }, '‹ Previous');
  const forward = h('button', { type: 'button', class: 'secondary', disabled: !next, onclick: () => {
    state.markers.push(state.marker);
    state.marker = next;
    reload();
  } }, 'Next ›');
  return h('div', { class: 'pager' }, first, back, forward);
}

const accountHref = (account) => `#/a/${seg(account)}`;
const queueHref = (account, queue) => `#/q/${seg(account)}/${seg(queue)}`;

// -- overview -----------------------------------------------------------------------------

function overview(view) {
  crumbs(['Overview']);
  const depth = chartPanel('Messages by state', DEPTH, 'chart-depth');
  const flow = chartPanel('Message rates (per second)', RATES, 'chart-rates');
  const accounts = h('div', { id: 'accounts' });
  const state = { marker: null, markers: [] };
  const rates = new Rates();
  const open = h('form', { class: 'row', id: 'open-queue', onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    location.hash = queueHref(data.get('account').trim(), data.get('queue').trim());
  } },
  h('label', { for: 'open-account' }, 'Account'),
  h('input', { id: 'open-account', name: 'account', required: true, autocomplete: 'off' }),
  h('label', { for: 'open-queue-name' }, 'Queue'),
  h('input', { id: 'open-queue-name', name: 'queue', required: true, autocomplete: 'off' }),
  h('button', { type: 'submit' }, 'Open'));
  replace(view,
    h('div', { class: 'title' }, h('h1', {}, 'Overview')),
    h('div', { class: 'cards' }, card('Accounts', 'total-accounts'), card('Queues', 'total-queues'),
      card('Visible', 'total-visible', 's-visible'), card('In flight', 'total-in-flight', 's-in_flight'),
      card('Delayed', 'total-delayed', 's-delayed'), card('Sent', 'rate-sent', 'rate'),
      card('Delivered', 'rate-delivered', 'rate'), card('Deleted', 'rate-deleted', 'rate')),
    h('div', { class: 'grid two' }, depth.panel, flow.panel),
    h('section', { class: 'panel' }, h('h2', {}, 'Accounts'), accounts),
    h('section', { class: 'panel' }, h('h2', {}, 'Open a queue'),
      h('p', { class: 'muted' }, 'Any queue, even one that does not exist yet: sending to it creates it.'), open));

  const load = async () => {
    const data = await getJson('/ui-api', { marker: state.marker });
    showWho(data.who);
    const at = data.sampled_at;
    const sum = (key) => data.accounts.reduce((n, a) => n + a[key], 0);
    const totals = { visible: sum('visible'), in_flight: sum('in_flight'), delayed: sum('delayed') };
    set('total-accounts', fmt(data.accounts.length) + (data.next_marker ? '+' : ''));
    set('total-queues', fmt(sum('queues')));
    set('total-visible', fmt(totals.visible));
    set('total-in-flight', fmt(totals.in_flight));
    set('total-delayed', fmt(totals.delayed));
    depth.chart.push(totals);
    flow.panel.hidden = !data.messages;
    for (const el of view.querySelectorAll('.card.rate')) el.hidden = !data.messages;
    if (data.messages) {
      const r = {};
      for (const s of RATES) r[s.key] = rates.of(`m:${s.key}`, data.messages[s.key], at);
      set('rate-sent', rate(r.sent));
      set('rate-delivered', rate(r.delivered));
      set('rate-deleted', rate(r.deleted));
      if (r.sent !== null) flow.chart.push(r);
    }
    const rows = data.accounts.map((a) => {
      const change = rates.of(`a:${a.name}`, a.visible + a.in_flight + a.delayed, at);
      const partial = a.more_queues ? h('span', { class: 'muted', title: 'of the first queues only' }, ' +') : null;
      return h('tr', {},
        h('td', {}, h('a', { href: accountHref(a.name), class: 'name' }, a.name)),
        h('td', { class: 'num' }, fmt(a.queues), partial),
        h('td', { class: 'num' }, fmt(a.visible)),
        h('td', { class: 'num' }, fmt(a.in_flight)),
        h('td', { class: 'num' }, fmt(a.delayed)),
        h('td', { class: 'num' }, rate(change, true)));
    });
    replace(accounts,
      table(['Account', 'Queues', 'Visible', 'In flight', 'Delayed', 'Change'], rows,
        'No accounts yet. An account appears when one of its queues holds a message: open a queue below and send one.',
        [1, 2, 3, 4, 5]),
      data.next_marker || state.markers.length ? pager(state, data.next_marker, load) : null);
  };
  return every(load);
}

// -- account --------------------------------------------------------------------------------

function account(view, name) {
  crumbs(['Overview', '#/'], [name]);
  const depth = chartPanel('Messages by state (queues on this page)', DEPTH, 'chart-depth');
  const queues = h('div', { id: 'queues' });
  const state = { marker: null, markers: [] };
  const rates = new Rates();
  replace(view,
    h('div', { class: 'title' }, h('h1', {}, h('span', { class: 'muted' }, 'Account '), h('span', { class: 'name' }, name))),
    h('div', { class: 'grid side' },
      h('div', { class: 'cards stack' }, card('Queues', 'total-queues'), card('Visible', 'total-visible', 's-visible'),
        card('In flight', 'total-in-flight', 's-in_flight'), card('Delayed', 'total-delayed', 's-delayed')),
      depth.panel),
    h('section', { class: 'panel' }, h('h2', {}, 'Queues'), queues));

  const load = async () => {
    const data = await getJson(`/ui-api/${seg(name)}`, { marker: state.marker });
    showWho(data.who);
    const at = data.sampled_at;
    const sum = (key) => data.queues.reduce((n, q) => n + q[key], 0);
    const totals = { visible: sum('visible'), in_flight: sum('in_flight'), delayed: sum('delayed') };
    set('total-queues', fmt(data.queues.length) + (data.next_marker ? '+' : ''));
    set('total-visible', fmt(totals.visible));
    set('total-in-flight', fmt(totals.in_flight));
    set('total-delayed', fmt(totals.delayed));
    depth.chart.push(totals);
    const rows = data.queues.map((q) => h('tr', {},
      h('td', {}, h('a', { href: queueHref(name, q.name), class: 'name' }, q.name)),
      h('td', {}, h('span', { class: `badge ${q.sqs ? 'sqs' : ''}` }, q.sqs ? (q.fifo ? 'SQS FIFO' : 'SQS') : 'v1.0')),
      h('td', { class: 'num' }, fmt(q.visible)),
      h('td', { class: 'num' }, fmt(q.in_flight)),
      h('td', { class: 'num' }, fmt(q.delayed)),
      h('td', { class: 'num' }, rate(rates.of(q.name, q.visible + q.in_flight + q.delayed, at), true))));
    replace(queues,
      table(['Queue', 'Kind', 'Visible', 'In flight', 'Delayed', 'Change'], rows,
        'No queues in this account. A queue appears when it holds a message (SQS queues also while empty).',
        [2, 3, 4, 5]),
      data.truncated ? h('p', { class: 'muted' }, 'This account has more queues than the dashboard sorts (1000): only those are listed.') : null,
      data.next_marker || state.markers.length ? pager(state, data.next_marker, load) : null);
  };
  return every(load);
}

// -- queue ----------------------------------------------------------------------------------

function queue(view, acct, name) {
  crumbs(['Overview', '#/'], [acct, accountHref(acct)], [name]);
  const base = `/v1.0/${seg(acct)}/${seg(name)}`;
  const depth = chartPanel('Messages by state', DEPTH, 'chart-depth');
  const messages = h('div', { id: 'messages' });
  const attributes = h('section', { class: 'panel', id: 'sqs-attributes', hidden: true });
  const status = h('p', { class: 'status', id: 'status', role: 'status' });
  const state = { marker: null, markers: [], who: null };
  const rates = new Rates();

  const say = (text, bad = false) => {
    replace(status, text);
    status.className = bad ? 'status error-text' : 'status';
  };
  /** Run a write, then refresh the list; a refusal shows beside the controls. */
  const act = async (what, done) => {
    try {
      await what();
      say(done);
    } catch (error) {
      if (error instanceof AuthError) showSignIn(error.message);
      say(error.message, true);
    }
    await loadMessages();
  };

  const send = h('form', { id: 'send-form', class: 'send', onsubmit: (event) => {
    event.preventDefault();
    const form = event.target;
    const id = form.elements.id.value.trim() || randomId();
    act(() => call('PUT', `${base}/${seg(id)}`, { query: { ttl: form.elements.ttl.value, hide: form.elements.hide.value }, body: form.elements.body.value }),
      `Sent message ${id}.`).then(() => form.elements.id.value = '');
  } },
  h('label', {}, 'Body', h('textarea', { name: 'body', rows: 4, spellcheck: 'false' })),
  h('div', { class: 'row' },
    h('label', {}, 'Message id', h('input', { name: 'id', placeholder: 'random', autocomplete: 'off' })),
    h('label', { class: 'short' }, 'TTL (s)', h('input', { name: 'ttl', inputmode: 'numeric', pattern: '[0-9]*', placeholder: 'default' })),
    h('label', { class: 'short' }, 'Hide (s)', h('input', { name: 'hide', inputmode: 'numeric', pattern: '[0-9]*', placeholder: '0' }))),
  h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Send message')));

  const confirm = h('span', { class: 'confirm', hidden: true },
    'Delete every message, hidden ones too? ',
    h('button', { type: 'button', class: 'danger', id: 'purge-confirm', onclick: () => {
      confirm.hidden = true;
      purge.hidden = false;
      state.marker = null;
      state.markers = [];
      act(() => call('DELETE', base, { query: { match_hidden: 'true' } }).catch((error) => {
        if (error.status !== 404) throw error; // 404: nothing to delete
      }), 'Queue purged.');
    } }, 'Yes, purge'),
    h('button', { type: 'button', class: 'secondary', onclick: () => {
      confirm.hidden = true;
      purge.hidden = false;
    } }, 'Cancel'));
  const purge = h('button', { type: 'button', class: 'danger', id: 'purge', onclick: () => {
    confirm.hidden = false;
    purge.hidden = true;
  } }, 'Purge queue…');
  const writes = h('section', { class: 'panel', id: 'writes' }, h('h2', {}, 'Send a message'), send);
  const purging = h('span', { class: 'tools' }, confirm, purge);

  replace(view,
    h('div', { class: 'title' },
      h('h1', {}, h('span', { class: 'muted' }, 'Queue '), h('span', { class: 'name' }, name)),
      h('span', { class: 'badge', id: 'kind' }, '')),
    h('div', { class: 'cards' }, card('Visible', 'count-visible', 's-visible'), card('In flight', 'count-in-flight', 's-in_flight'),
      card('Delayed', 'count-delayed', 's-delayed'), card('Change', 'count-rate', 'rate')),
    h('div', { class: 'grid side-right' }, depth.panel, writes),
    status,
    h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Messages'),
      h('span', { class: 'tools' }, purging,
        h('button', { type: 'button', class: 'secondary', id: 'refresh', onclick: () => loadMessages() }, 'Refresh'))),
    messages),
    attributes);

  const messageRow = (m) => {
    const body = m.body_encoding === 'base64'
      ? [h('span', { class: 'badge' }, 'binary, base64'), ' ', m.body]
      : m.body;
    const actions = state.who && state.who.write ? h('td', { class: 'actions' },
      m.hide > 0 ? h('button', { type: 'button', class: 'secondary release', onclick: () => act(
        () => call('POST', `${base}/${seg(m.id)}`, { query: { hide: 0 } }), `Released message ${m.id}.`) }, 'Release') : null,
      h('button', { type: 'button', class: 'danger delete', onclick: () => act(
        () => call('DELETE', `${base}/${seg(m.id)}`), `Deleted message ${m.id}.`) }, 'Delete')) : null;
    return h('tr', { class: 'message' },
      h('td', { class: 'id' }, m.id),
      h('td', { class: 'num' }, m.ttl ? duration(m.ttl) : 'never'),
      h('td', { class: 'num' }, m.hide ? duration(m.hide) : h('span', { class: 'muted' }, 'visible')),
      h('td', { class: 'num' }, fmt(m.receives)),
      h('td', { class: 'num' }, bytes(m.bytes)),
      h('td', { class: 'body' }, body, m.body_cut ? h('span', { class: 'muted' }, ' …') : null),
      actions);
  };

  async function loadMessages() {
    try {
      const data = await getJson(`/ui-api/${seg(acct)}/${seg(name)}`, { marker: state.marker, limit: MESSAGES_PAGE });
      show(data);
      const head = ['ID', 'TTL', 'Hide', 'Receives', 'Size', 'Body'];
      if (state.who.write) head.push('');
      const first = state.markers.length * MESSAGES_PAGE + 1;
      replace(messages,
        table(head, data.messages.map(messageRow),
          state.marker ? 'No messages on this page.' : 'No messages in this queue. Send one above.', [1, 2, 3, 4]),
        data.messages.length ? h('p', { class: 'muted' },
          `Messages ${fmt(first)}–${fmt(first + data.messages.length - 1)}, hidden ones included; TTL and hide as of ${new Date().toLocaleTimeString()}.`) : null,
        data.next_marker || state.markers.length ? pager(state, data.next_marker, loadMessages) : null);
    } catch (error) {
      failed(error);
    }
  }

  function show(data) {
    state.who = data.who;
    showWho(data.who);
    writes.hidden = purging.hidden = !data.who.write;
    const c = data.counts;
    set('count-visible', fmt(c.visible));
    set('count-in-flight', fmt(c.in_flight));
    set('count-delayed', fmt(c.delayed));
    set('count-rate', rate(rates.of('q', c.visible + c.in_flight + c.delayed, data.sampled_at), true));
    set('kind', data.sqs ? (data.fifo ? 'SQS FIFO queue' : 'SQS queue') : 'v1.0 queue');
    $('kind').classList.toggle('sqs', Boolean(data.sqs));
    depth.chart.push(c);
    attributes.hidden = !data.sqs;
    if (data.sqs) {
      replace(attributes, h('h2', {}, 'SQS attributes'), h('dl', { class: 'attributes' },
        Object.entries(data.sqs).map(([key, value]) => [h('dt', {}, key), h('dd', {}, value)])));
    }
  }

  loadMessages();
  return every(async () => show(await getJson(`/ui-api/${seg(acct)}/${seg(name)}`, { limit: 0 })));
}

// -- routing ----------------------------------------------------------------------------------

function route() {
  stopView();
  showError('');
  const view = $('view');
  view.hidden = false;
  const parts = location.hash.replace(/^#\/?/, '').split('/').map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return '';
    }
  });
  if (parts[0] === 'a' && parts[1]) stopView = account(view, parts[1]);
  else if (parts[0] === 'q' && parts[1] && parts[2]) stopView = queue(view, parts[1], parts[2]);
  else stopView = overview(view);
}

$('sign-in-form').addEventListener('submit', (event) => {
  event.preventDefault();
  setToken($('token').value.trim());
  $('token').value = '';
  $('sign-in').hidden = true;
  route();
});
$('sign-out').addEventListener('click', () => {
  setToken('');
  route();
});
window.addEventListener('hashchange', route);
route();
