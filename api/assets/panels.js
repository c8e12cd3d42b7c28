// The side panels and banners: per-kind counters, producers, losses, server notices, and the
// banner that says when this view missed events or a producer lost some.

import { clock, lossWhere, producerName } from './table.js';

const $ = (id) => document.getElementById(id);
const fmt = (n) => Number(n || 0).toLocaleString();

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** "3m 20s ago"-style age of an RFC 3339 time, for humans; the exact time is in a tooltip. */
export function age(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function since(iso) {
  return age((Date.now() - Date.parse(iso.replace(/(\.\d{3})\d*/, '$1'))) / 1000);
}

export function bytes(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

/**
 * The kinds table: a filter checkbox per kind, with what this view received next to what the
 * server stored. Rows are made on first sight of a kind, so a kind the page did not know
 * still gets its row.
 *
 * The two columns are taken at the same point: the server column comes from the last /stats
 * poll, so the view column counts only the events up to that poll's newest id. Counting
 * every event received (a couple of seconds ahead of the poll in a flood) once showed a view
 * count above the server's. Events past the snapshot wait in `ahead`, in id order (the
 * stream delivers ids ascending), until a poll covers them.
 */
export class KindCounts {
  constructor(tbody) {
    this.tbody = tbody;
    this.view = new Map(); // kind -> events received with id <= upTo
    this.ahead = []; // [id, kind] received with id > upTo, ascending
    this.upTo = 0; // the newest id of the last /stats poll
    this.cells = new Map(); // kind -> [view cell, server cell]
    this.dirty = false;
  }

  ensure(kind) {
    if (this.cells.has(kind)) return this.cells.get(kind);
    const tr = el('tr');
    tr.dataset.kind = kind;
    const label = tr.appendChild(el('td')).appendChild(el('label', 'chip'));
    const box = label.appendChild(el('input'));
    box.type = 'checkbox';
    box.name = 'kind';
    box.value = kind;
    label.appendChild(el('span', `badge k-${kind.split('.')[0]}`, kind));
    const cells = [tr.appendChild(el('td', 'num view', '0')), tr.appendChild(el('td', 'num server', '0'))];
    this.tbody.appendChild(tr);
    this.cells.set(kind, cells);
    return cells;
  }

  add(kind, id) {
    if (id <= this.upTo) this.count(kind);
    else this.ahead.push([id, kind]);
  }

  count(kind) {
    this.view.set(kind, (this.view.get(kind) || 0) + 1);
    this.dirty = true;
  }

  /** A /stats poll saw ids up to `newestId`: count what this view received up to there. */
  settle(newestId) {
    this.upTo = Math.max(this.upTo, newestId || 0);
    let i = 0;
    while (i < this.ahead.length && this.ahead[i][0] <= this.upTo) this.count(this.ahead[i++][1]);
    if (i) this.ahead.splice(0, i);
  }

  reset() {
    this.view.clear();
    this.ahead = [];
    this.upTo = 0;
    this.dirty = true;
  }

  /** Writes the view counts that changed; called once per frame at most. */
  render() {
    if (!this.dirty) return;
    this.dirty = false;
    for (const kind of this.view.keys()) this.ensure(kind);
    for (const [kind, [cell]] of this.cells) {
      const text = fmt(this.view.get(kind));
      if (cell.textContent !== text) cell.textContent = text;
    }
  }

  server(byKind) {
    for (const [kind, n] of Object.entries(byKind)) {
      const [, cell] = this.ensure(kind);
      cell.textContent = fmt(n);
      cell.closest('tr').classList.toggle('zero', !n && !this.view.get(kind));
    }
  }
}

/** "lost: producer_queue 12" or "no losses", plus any stale, duplicate or malformed counts. */
function lossLine(c) {
  const lost = Object.entries(c.losses).filter(([, n]) => n);
  const extra = [['stale', c.stale], ['duplicates', c.duplicates], ['malformed', c.malformed]].filter(([, n]) => n);
  const parts = [lost.length ? `lost: ${lost.map(([s, n]) => `${s} ${fmt(n)}`).join(', ')}` : 'no losses'];
  if (extra.length) parts.push(extra.map(([s, n]) => `${s} ${fmt(n)}`).join(', '));
  return el('div', lost.length ? 'small bad' : 'small good', parts.join(' · '));
}

/**
 * The producers panel: every connected producer in full, then the few most recently
 * disconnected ones in one line each (the rest are in /stats).
 */
export function renderProducers(list) {
  const ul = $('producers');
  ul.textContent = '';
  const connected = list.filter((p) => p.connected);
  const gone = list.filter((p) => !p.connected).reverse().slice(0, 3);
  if (!connected.length && !gone.length) ul.appendChild(el('li', 'muted', 'No producer has connected yet.'));
  for (const p of [...connected, ...gone]) {
    const li = ul.appendChild(el('li', p.connected ? 'producer up' : 'producer down'));
    li.dataset.instance = p.instance;
    const head = li.appendChild(el('div', 'head'));
    head.appendChild(el('span', 'dot')).setAttribute('aria-hidden', 'true');
    head.appendChild(el('strong', '', p.kind));
    head.appendChild(el('code', 'inst', p.instance.slice(0, 8))).title = p.instance;
    const c = p.counters;
    if (p.connected) {
      const when = li.appendChild(el('div', 'muted small'));
      when.textContent = `${p.os || 'unknown os'} · pid ${p.client_pid} · connected ${since(p.connected_since)} ago`;
      when.title = `since ${p.connected_since}`;
      li.appendChild(
        el('div', 'small', `${fmt(c.events)} events · ${bytes(c.bytes)} · seq ${c.last_seq ?? '–'} · ${fmt(c.heartbeats)} heartbeats`),
      );
      li.appendChild(lossLine(c));
    } else {
      const when = li.appendChild(el('div', 'muted small'));
      when.textContent = `disconnected ${since(p.disconnected_at || p.connected_since)} ago (${p.disconnect_reason || 'unknown'}) · ${fmt(c.events)} events`;
      when.title = `disconnected at ${p.disconnected_at}`;
      li.appendChild(lossLine(c));
    }
  }
  const more = list.length - connected.length - gone.length;
  if (more > 0) ul.appendChild(el('li', 'muted small', `+${more} more disconnected, in /stats`));
}

export function renderLosses(stats) {
  const tbody = $('losses').tBodies[0];
  tbody.textContent = '';
  for (const [stage, n] of Object.entries(stats.losses_by_stage)) {
    const tr = tbody.appendChild(el('tr', n ? 'bad' : 'zero'));
    tr.appendChild(el('td', '', stage));
    tr.appendChild(el('td', 'num', fmt(n)));
  }
  const g = stats.sse;
  $('sse-gaps').textContent =
    `Stream gaps sent to all clients: evicted ${fmt(g.gaps.evicted)} (${fmt(g.missed.evicted)} events), ` +
    `lagged ${fmt(g.gaps.lagged)} (${fmt(g.missed.lagged)} events); ${fmt(g.clients)} clients now.`;
}

/**
 * The hosts panel (`/stats` `fleet`): this server's own publishing, and per origin host its
 * imported events, its losses by stage and its publish lag. `pick(host)` filters by a host.
 */
export function renderFleet(fleet, pick) {
  const panel = $('hosts-panel');
  panel.hidden = !fleet;
  if (!fleet) return;
  const line = $('publish-line');
  const p = fleet.publish;
  line.hidden = !p;
  if (p) {
    line.className = `small ${p.nats_reachable ? '' : 'bad'}`;
    line.textContent =
      `This server publishes as ${p.host} to ${p.stream}: NATS ${p.nats_reachable ? 'reachable' : 'unreachable'}, ` +
      `lag ${fmt(p.lag_ids)} events (${p.lag_seconds.toFixed(1)} s), ${fmt(p.acks)} acks, ` +
      `${fmt(p.retries)} retries, ${fmt(p.lost)} lost before publishing.`;
  }
  const tbody = $('hosts').tBodies[0];
  tbody.textContent = '';
  const hosts = Object.entries(fleet.hosts);
  if (!hosts.length) {
    const tr = tbody.appendChild(el('tr', 'zero'));
    const td = tr.appendChild(el('td', 'muted', fleet.subscribe ? 'no host heard from yet' : 'not subscribing'));
    td.colSpan = 4;
  }
  for (const [host, h] of hosts) {
    const lost = Object.entries(h.losses).filter(([, n]) => n);
    const lagging = h.nats_reachable === false || (h.publish_lag_seconds ?? 0) > 10;
    const tr = tbody.appendChild(el('tr', lost.length || lagging ? 'bad' : ''));
    const name = tr.appendChild(el('td')).appendChild(el('button', 'link', host));
    name.type = 'button';
    name.title = `Show only events of ${host}`;
    name.addEventListener('click', () => pick(host));
    tr.appendChild(el('td', 'num', fmt(h.events)));
    tr.appendChild(el('td', '', lost.length ? lost.map(([s, n]) => `${s} ${fmt(n)}`).join(', ') : 'none'));
    const lag = h.publish_lag_ids === undefined ? '–' : `${fmt(h.publish_lag_ids)} (${h.publish_lag_seconds.toFixed(1)} s)`;
    tr.appendChild(el('td', 'num', lag));
  }
}

/** Server notices (e.g. how to start the sensor): shown for as long as the server says them. */
export function renderNotices(notices) {
  const ul = $('notices');
  ul.textContent = '';
  for (const n of notices) ul.appendChild(el('li', '', n));
  ul.hidden = notices.length === 0;
}

/**
 * The red banner: everything this view did not get. Counts accumulate for the life of the
 * page; dismissing hides the banner until the next gap or loss.
 */
export class MissedBanner {
  constructor() {
    this.box = $('alert');
    this.gaps = 0;
    this.missed = 0;
    this.reasons = new Map();
    this.losses = 0;
    this.lost = 0;
    this.lastLoss = '';
    this.box.querySelector('.dismiss').addEventListener('click', () => (this.box.hidden = true));
  }

  gap(missed, reason) {
    this.gaps += 1;
    this.missed += missed;
    this.reasons.set(reason, (this.reasons.get(reason) || 0) + missed);
    this.render();
  }

  loss(ev) {
    const l = ev.loss || {};
    this.losses += 1;
    this.lost += l.count || 0;
    const where = lossWhere(l, ev.time);
    const when = where.startsWith('at ') ? '' : ` at ${clock(ev.time)}`;
    this.lastLoss = `latest: ${producerName(ev.producer)} lost ${fmt(l.count)} at ${l.stage} ${where}${when}`;
    this.render();
  }

  render() {
    const b = this.box;
    b.dataset.gaps = this.gaps;
    b.dataset.missed = this.missed;
    b.dataset.losses = this.losses;
    b.dataset.lost = this.lost;
    const gaps = $('alert-gaps');
    const why = { evicted: 'the server no longer held them', lagged: 'this view fell behind the stream' };
    gaps.hidden = !this.gaps;
    gaps.textContent =
      `This view missed ${fmt(this.missed)} events in ${fmt(this.gaps)} gap${this.gaps === 1 ? '' : 's'}: ` +
      [...this.reasons].map(([r, n]) => `${fmt(n)} ${r}${why[r] ? ` (${why[r]})` : ''}`).join('; ') +
      '. They are counted, not silently dropped.';
    const losses = $('alert-losses');
    losses.hidden = !this.losses;
    losses.textContent = `Producers reported ${fmt(this.lost)} lost events in ${fmt(this.losses)} loss event${
      this.losses === 1 ? '' : 's'
    }; ${this.lastLoss}.`;
    b.hidden = false;
  }
}

/** The blue banner for connection news: reconnects, server restarts, filter errors. */
export function info(text) {
  $('info-text').textContent = `${clock(new Date().toISOString())} — ${text}`;
  $('info').hidden = false;
}
