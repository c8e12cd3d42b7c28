// The lpcmon dashboard: wires the stream, the filters, pause, the panels and the banners.
//
// Where events come from, and why nothing goes missing silently:
// - A view (a set of filters) starts with the newest MAX_ROWS matching events from
//   `GET /events`, then opens `/events/stream?after=<that page's next_after>`, so the page and
//   the stream neither overlap nor leave a hole. `/?after=N` instead streams from after id N
//   (replaying, or reporting a gap if the server no longer holds them).
// - Filters are applied by the server: changing one closes the stream, clears the table and
//   starts a new view.
// - The browser reconnects a dropped stream by itself, sending `Last-Event-ID` (the server's
//   `id:` lines), so the server resumes exactly after the last event or gap this page saw,
//   and says `gap` for anything it can no longer replay. If the server answers with an HTTP
//   error the browser gives up; then this page finds out why (401: ask for the token) and
//   reconnects itself from the last id.
// - A restarted server starts its ids at 1 again. That is noticed from `/stats` `started` or
//   from ids going backwards; the view is then reset, and the page says so.
// - Gaps, producer losses and pause-buffer overflow all end up in the red banner, counted.

import { AuthError, HttpError, askToken, getJSON, streamUrl } from './api.js';
import { RateChart } from './chart.js';
import {
  KindCounts,
  MissedBanner,
  age,
  info,
  renderFleet,
  renderLosses,
  renderNotices,
  renderProducers,
} from './panels.js';
import { EventTable } from './table.js';

/** Rows kept in the table; older ones are removed. */
const MAX_ROWS = 500;
/** Events held while paused; beyond this the oldest held ones are dropped, and counted. */
const HOLD_MAX = 10000;
const STATS_EVERY_MS = 2000;
/** Used until /stats (which lists every kind the server knows) has answered. */
const FALLBACK_KINDS = [
  'process.start', 'process.exec', 'process.exit', 'process.setuid', 'process.rename', 'thread.start',
  'thread.exit', 'image.load', 'loss', 'producer.connect', 'producer.disconnect',
];

const $ = (id) => document.getElementById(id);
const fmt = (n) => Number(n || 0).toLocaleString();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Measurements the performance run reads (docs/dashboard-perf.md). Cheap enough to keep on.

const perf = {
  received: 0, // events that arrived on the stream
  perSecond: 0, // of them, in the last whole second
  longTasks: 0, // main-thread tasks over 50 ms (PerformanceObserver 'longtask')
  longTaskMs: 0,
  longestTaskMs: 0,
  handlerMs: 0, // main-thread time in this page's stream handlers (parse, count, queue)
  frames: 0, // table flushes
  frameMs: 0, // main-thread time in them (building rows; the browser's layout comes after)
  slowestFrameMs: 0,
  inputs: 0, // clicks and key presses that took 16 ms or more to handle and paint (Event Timing)
  worstInputDelayMs: 0, // of them, the longest wait before the handler ran
  worstInputMs: 0, // and the longest from input to the next paint
  rows: 0, // table rows in the DOM now
  maxRows: 0, // and the most there ever were
  reset() {
    Object.assign(perf, {
      received: 0, longTasks: 0, longTaskMs: 0, longestTaskMs: 0, handlerMs: 0, frames: 0, frameMs: 0, slowestFrameMs: 0,
      inputs: 0, worstInputDelayMs: 0, worstInputMs: 0, maxRows: 0,
    });
  },
};
window.__lpcmonPerf = perf;
if (window.PerformanceObserver && PerformanceObserver.supportedEntryTypes.includes('longtask')) {
  new PerformanceObserver((list) => {
    for (const t of list.getEntries()) {
      perf.longTasks += 1;
      perf.longTaskMs += t.duration;
      perf.longestTaskMs = Math.max(perf.longestTaskMs, t.duration);
    }
  }).observe({ type: 'longtask', buffered: true });
}
if (window.PerformanceObserver && PerformanceObserver.supportedEntryTypes.includes('event')) {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      perf.inputs += 1;
      perf.worstInputDelayMs = Math.max(perf.worstInputDelayMs, e.processingStart - e.startTime);
      perf.worstInputMs = Math.max(perf.worstInputMs, e.duration);
    }
  }).observe({ type: 'event', durationThreshold: 16, buffered: true });
}

// ---------------------------------------------------------------------------------------------
// Pause buffer: a ring, so holding costs O(1) per event and the oldest are the ones dropped
// (the table shows the newest anyway).

class Hold {
  constructor(capacity) {
    this.items = new Array(capacity);
    this.start = 0;
    this.size = 0;
  }

  /** Adds an item; returns true if the oldest one had to be dropped to make room. */
  push(item) {
    const cap = this.items.length;
    this.items[(this.start + this.size) % cap] = item;
    if (this.size < cap) {
      this.size += 1;
      return false;
    }
    this.start = (this.start + 1) % cap;
    return true;
  }

  /** Everything held, oldest first, and empties the ring. */
  drain() {
    const cap = this.items.length;
    const out = [];
    for (let i = 0; i < this.size; i++) out.push(this.items[(this.start + i) % cap]);
    this.clear();
    return out;
  }

  clear() {
    this.items.fill(undefined);
    this.start = 0;
    this.size = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Page state.

const table = new EventTable($('rows'), MAX_ROWS, showDetail);
const chart = new RateChart($('chart'));
const counts = new KindCounts($('kinds').tBodies[0]);
const banner = new MissedBanner();
const hold = new Hold(HOLD_MAX);

let kinds = [...FALLBACK_KINDS];
let source = null; // the open EventSource
let generation = 0; // bumped by every new view, so callbacks of an old stream do nothing
let lastId = 0; // the stream position: the last event or gap id this view has seen
let paused = false;
let overflow = 0; // events dropped from the pause buffer since the last resume
let downSince = null; // when the stream last dropped, to report the reconnect
let retryMs = 1000;
let serverStarted = null; // /stats `started`: a different value means a restarted server

// ---------------------------------------------------------------------------------------------
// Filters: the form, the page URL (so a view can be bookmarked) and the query parameters.

function filters() {
  const kind = [...document.querySelectorAll('#kinds input:checked')].map((i) => i.value);
  return {
    kind: kind.join(','),
    pid: $('f-pid').value.trim(),
    q: $('f-q').value.trim(),
    host: $('f-host').value.trim(),
  };
}

/** The filter as query parameters, empty ones left out; `extra` is added (after, limit). */
function filterParams(extra = {}) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...filters(), ...extra })) if (v !== '' && v !== undefined) p.set(k, v);
  return p;
}

function buildKindRows() {
  for (const k of kinds) counts.ensure(k);
}

function readUrl() {
  const u = new URLSearchParams(location.search);
  const wanted = new Set(u.getAll('kind').flatMap((k) => k.split(',')));
  for (const i of document.querySelectorAll('#kinds input')) i.checked = wanted.has(i.value);
  $('f-pid').value = u.get('pid') || '';
  $('f-q').value = u.get('q') || '';
  $('f-host').value = u.get('host') || '';
  const after = u.get('after');
  return after !== null && /^\d+$/.test(after) ? Number(after) : undefined;
}

/** Puts the filters in the address bar, minus `after`: a reload starts a fresh view. */
function writeUrl() {
  const p = filterParams();
  history.replaceState(null, '', p.size ? `?${p}` : location.pathname);
}

let appliedKey = null;
let debounce = null;

function applyFilters() {
  clearTimeout(debounce);
  const pidOk = /^\d*$/.test($('f-pid').value.trim());
  $('f-pid').setAttribute('aria-invalid', String(!pidOk));
  showFilterError(pidOk ? '' : 'pid must be a number.');
  if (!pidOk) return;
  const key = filterParams().toString();
  if (key === appliedKey) return;
  appliedKey = key;
  writeUrl();
  openView();
}

function showFilterError(text) {
  $('filter-error').textContent = text;
  $('filter-error').hidden = !text;
}

// ---------------------------------------------------------------------------------------------
// The stream.

function setStatus(state, text) {
  const s = $('status');
  s.dataset.state = state;
  s.textContent = text || state;
}

function closeStream() {
  if (source) source.close();
  source = null;
}

/** Starts a view: clears everything, fills in recent history unless `after` is given, streams. */
async function openView(after) {
  const gen = ++generation;
  closeStream();
  table.clear();
  hold.clear();
  overflow = 0;
  counts.reset();
  downSince = null;
  setStatus('connecting', 'connecting…');
  let start = after;
  if (start === undefined) {
    try {
      const page = await getJSON(`events?${filterParams({ limit: MAX_ROWS })}`);
      if (gen !== generation) return;
      for (const ev of page.events) deliver({ id: ev.id, kind: ev.kind, ev }, false);
      start = page.next_after ?? 0;
    } catch (e) {
      if (gen !== generation) return;
      if ((await recover(e)) && gen === generation) openView(after);
      return;
    }
  }
  $('events-note').textContent =
    after === undefined ? `newest first · last ${MAX_ROWS} kept` : `newest first · streamed from after #${after}`;
  lastId = start;
  connect(gen);
}

/**
 * Waits out a failed request: asks for the token on 401, otherwise backs off. Returns false
 * when retrying cannot help (the server refused the filter), true to try again.
 */
async function recover(error) {
  if (error instanceof AuthError) {
    setStatus('error', 'token needed');
    await askToken();
    return true;
  }
  if (error instanceof HttpError && error.status === 400) {
    // Say why and wait for the user to change the filter, which starts a new view.
    showFilterError(error.message);
    setStatus('error', 'filter refused');
    return false;
  }
  setStatus('reconnecting', 'server unreachable, retrying…');
  if (downSince === null) downSince = performance.now();
  await sleep(retryMs);
  retryMs = Math.min(retryMs * 2, 10000);
  return true;
}

function connect(gen) {
  const es = new EventSource(streamUrl(filterParams({ after: lastId })));
  source = es;
  const onItem = (e) => gen === generation && onEvent(e);
  // SSE `event:` is the kind, and EventSource only dispatches named events to listeners for
  // that name; the kind list comes from /stats, which names every kind the server has.
  for (const k of kinds) es.addEventListener(k, onItem);
  es.addEventListener('message', onItem);
  es.addEventListener('gap', (e) => gen === generation && onGap(e));
  es.onopen = () => gen === generation && onOpen();
  es.onerror = () => gen === generation && onError(es, gen);
}

function onOpen() {
  retryMs = 1000;
  setStatus('live', 'live');
  if (downSince !== null) {
    const secs = ((performance.now() - downSince) / 1000).toFixed(1);
    info(`Reconnected after ${secs} s; the stream resumed after event #${lastId} (anything the server could not replay is reported as a gap).`);
    downSince = null;
    // A restarted server would also accept the reconnect: check at once rather than in 2 s.
    pollStats();
  }
}

function onError(es, gen) {
  if (downSince === null) downSince = performance.now();
  if (es.readyState === EventSource.CONNECTING) {
    setStatus('reconnecting', 'reconnecting…');
    return;
  }
  // CLOSED: the server answered with an HTTP error, so the browser will not retry. Find out
  // why with a plain request, then reconnect from the last id ourselves.
  es.close();
  getJSON(`events?${filterParams({ limit: 1 })}`)
    .then(() => sleep(retryMs).then(() => true))
    .catch((e) => recover(e))
    .then((retry) => retry && gen === generation && connect(gen));
}

// The hot path at thousands of events a second. The SSE event name is the kind, so counting
// needs no parsing; the JSON is parsed only for rows actually drawn (see table.js), for
// losses (the banner) and for events of a kind this page does not know ('message').
function onEvent(e) {
  const t0 = performance.now();
  const id = Number(e.lastEventId);
  if (id <= lastId) {
    restarted(`event ids went back from #${lastId} to #${id}`);
    return;
  }
  lastId = id;
  if (e.type === 'message' || e.type === 'loss') {
    const ev = JSON.parse(e.data);
    deliver({ id, kind: ev.kind, ev }, true);
  } else {
    deliver({ id, kind: e.type, data: e.data }, true);
  }
  perf.handlerMs += performance.now() - t0;
}

function onGap(e) {
  const gap = JSON.parse(e.data);
  lastId = Math.max(lastId, Number(e.lastEventId) || 0);
  banner.gap(gap.missed, gap.reason);
  chart.mark();
  route({ gap });
}

function restarted(why) {
  serverStarted = null;
  info(`The lpcmon server restarted (${why}). Its event ids began again, so this view was reset and reloaded from the new server.`);
  openView();
}

/**
 * Counts an event and sends it to the table, or to the pause buffer. `item` is
 * `{id, kind, data}` (JSON text, parsed when drawn) or `{id, kind, ev}` (already parsed).
 */
function deliver(item, live) {
  counts.add(item.kind, item.id);
  if (item.kind === 'loss') {
    banner.loss(item.ev);
    chart.mark();
  }
  if (live) {
    chart.add();
    perf.received += 1;
  }
  route(item);
}

function route(item) {
  if (paused) {
    if (hold.push(item)) overflow += 1;
  } else {
    table.enqueue(item);
  }
  requestFrame();
}

// ---------------------------------------------------------------------------------------------
// Rendering: one batch per animation frame.

let framePending = false;
let nextFlushAt = 0;
let heldText = '';

function requestFrame() {
  if (framePending) return;
  framePending = true;
  requestAnimationFrame(frame);
}

function frame(now) {
  framePending = false;
  // Drawing gets at most about a fifth of the main thread: after a flush that took `ms`, the
  // next waits 4 × ms. At ordinary rates a flush takes a fraction of a millisecond and runs
  // every frame; in a flood the table updates a few times a second, and the page, its
  // buttons and its counters stay responsive.
  if (now < nextFlushAt) {
    requestFrame();
    return;
  }
  const t0 = performance.now();
  const drawn = table.pending > 0;
  table.flush();
  counts.render();
  renderHeld();
  const empty = table.rows === 0;
  if ($('empty').hidden === empty) $('empty').hidden = !empty;
  // Lay the new rows out now, inside the measurement, rather than later in the frame.
  if (drawn) void table.body.offsetHeight;
  const ms = performance.now() - t0;
  nextFlushAt = performance.now() + 4 * ms;
  perf.frames += 1;
  perf.frameMs += ms;
  perf.slowestFrameMs = Math.max(perf.slowestFrameMs, ms);
  perf.rows = table.rows;
  perf.maxRows = Math.max(perf.maxRows, perf.rows);
}

function renderHeld() {
  const text = paused ? `${fmt(hold.size)} held${overflow ? ` · ${fmt(overflow)} dropped` : ''}` : '';
  if (text === heldText) return;
  heldText = text;
  const held = $('held');
  held.hidden = !paused;
  held.dataset.held = hold.size;
  held.dataset.dropped = overflow;
  held.textContent = text;
}

// ---------------------------------------------------------------------------------------------
// Pause and resume.

function setPaused(on) {
  paused = on;
  const b = $('pause');
  b.setAttribute('aria-pressed', String(on));
  b.textContent = on ? 'Resume' : 'Pause';
  document.body.classList.toggle('paused', on);
  if (!on) {
    // The dropped ones were the oldest held, so their marker goes before (below) the rest.
    if (overflow) {
      banner.gap(overflow, 'pause buffer full');
      table.enqueue({ gap: { missed: overflow, reason: 'pause buffer full' } });
      overflow = 0;
    }
    for (const item of hold.drain()) table.enqueue(item);
  }
  requestFrame();
}

// ---------------------------------------------------------------------------------------------
// /stats: producers, losses, notices, totals; and the restart check.

let polling = false;

async function pollStats() {
  if (polling) return;
  polling = true;
  try {
    applyStats(await getJSON('stats'));
  } catch (e) {
    if (e instanceof AuthError) await askToken();
  } finally {
    polling = false;
  }
}

function applyStats(s) {
  if (serverStarted !== null && s.started !== serverStarted) {
    serverStarted = s.started;
    restarted(`it started again at ${s.started}`);
  }
  serverStarted = s.started;
  const known = Object.keys(s.events_by_kind);
  const fresh = known.filter((k) => !kinds.includes(k));
  if (fresh.length) {
    kinds = [...kinds, ...fresh];
    buildKindRows();
    const es = source;
    const gen = generation;
    for (const k of fresh) es?.addEventListener(k, (e) => gen === generation && onEvent(e));
  }
  renderNotices(s.notices);
  renderProducers(s.producers);
  renderLosses(s);
  renderFleet(s.fleet, (host) => {
    $('f-host').value = host;
    applyFilters();
  });
  // Settle first, so both columns describe the store as of this poll.
  counts.settle(s.store.newest_id);
  counts.server(s.events_by_kind);
  counts.render();
  const st = s.store;
  $('kpi-server').textContent = fmt(Math.round(s.rates.events_per_second));
  $('kpi-store').textContent = `${fmt(st.events)} / ${fmt(st.retain)}`;
  $('kpi-store').title = `ids ${st.oldest_id ?? '–'}–${st.newest_id ?? '–'}; ${fmt(st.evicted)} evicted`;
  $('kpi-producers').textContent = fmt(s.producers.filter((p) => p.connected).length);
  $('kpi-uptime').textContent = age(s.uptime_seconds);
  $('kpi-uptime').title = `started ${s.started}, version ${s.version}`;
}

// ---------------------------------------------------------------------------------------------
// Event detail.

function showDetail(ev) {
  $('detail-h').textContent = `Event #${ev.id} · ${ev.kind}`;
  $('detail-path').textContent = `GET /events/${ev.id}`;
  $('detail-json').textContent = JSON.stringify(ev, null, 2);
  $('detail').showModal();
}

// ---------------------------------------------------------------------------------------------
// Theme: follow the system unless told otherwise (a preference, so localStorage is fine).

const THEMES = ['auto', 'light', 'dark'];

function setTheme(t) {
  document.documentElement.dataset.theme = t;
  $('theme').textContent = `Theme: ${t}`;
  localStorage.setItem('lpcmon.theme', t);
  chart.draw();
}

// ---------------------------------------------------------------------------------------------
// Start.

function wire() {
  const form = $('filters');
  $('kinds').addEventListener('change', (e) => e.target.name === 'kind' && applyFilters());
  // Typing is debounced, so a pid or word is sent once, not once per key.
  form.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(applyFilters, 400);
  });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    applyFilters();
  });
  $('f-clear').addEventListener('click', () => {
    form.reset();
    for (const i of document.querySelectorAll('#kinds input:checked')) i.checked = false;
    applyFilters();
  });
  $('pause').addEventListener('click', () => setPaused(!paused));
  document.addEventListener('keydown', (e) => {
    if (e.key === 'p' && !e.ctrlKey && !e.metaKey && !e.altKey && !e.target.closest('input, textarea, dialog')) {
      setPaused(!paused);
    }
  });
  $('info').querySelector('.dismiss').addEventListener('click', () => ($('info').hidden = true));
  $('detail-close').addEventListener('click', () => $('detail').close());
  $('detail').addEventListener('click', (e) => e.target === $('detail') && $('detail').close());
  $('detail-copy').addEventListener('click', () => navigator.clipboard?.writeText($('detail-json').textContent));
  $('theme').addEventListener('click', () => {
    const now = document.documentElement.dataset.theme || 'auto';
    setTheme(THEMES[(THEMES.indexOf(now) + 1) % THEMES.length]);
  });
  document.addEventListener('visibilitychange', requestFrame);
}

async function boot() {
  wire();
  setTheme(localStorage.getItem('lpcmon.theme') || 'auto');
  buildKindRows();
  // /stats first: it names every kind, and tells us at once whether a token is needed.
  for (;;) {
    try {
      applyStats(await getJSON('stats'));
      break;
    } catch (e) {
      await recover(e);
    }
  }
  const after = readUrl();
  appliedKey = filterParams().toString();
  writeUrl();
  openView(after);
  setInterval(pollStats, STATS_EVERY_MS);
  setInterval(() => {
    perf.perSecond = chart.tick();
    $('kpi-view').textContent = fmt(perf.perSecond);
  }, 1000);
}

boot();
