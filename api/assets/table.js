// The live event table: newest first, a bounded number of rows, rendered once per frame.
//
// At thousands of events a second, touching the DOM per event would spend the whole frame
// budget on layout. So events are queued and drawn in one batch per animation frame, and
// only the newest `maxRows` of a batch are ever built: the rest would be pushed out of the
// table in the same frame anyway. Cells get textContent only, never HTML, because
// executables and command lines come from arbitrary processes.

/** Short producer name for a table cell: kind plus the first 8 hex digits of the instance. */
export function producerName(p) {
  return p ? `${p.kind} ${String(p.instance || '').slice(0, 8)}` : '';
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

// clock() is called for every row drawn, and events come in runs within the same second:
// the local hh:mm:ss of the last second seen is kept, so most calls only slice a string.
let lastSecond = '';
let lastClock = '';

/** Local wall-clock time with milliseconds (the detail view has the full nanosecond stamp). */
export function clock(iso) {
  const second = (iso || '').slice(0, 19); // 2026-11-22T10:00:00
  if (second !== lastSecond) {
    const ms = Date.parse(`${second}Z`);
    if (Number.isNaN(ms)) return iso || '';
    const d = new Date(ms);
    lastSecond = second;
    lastClock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  const frac = /^\.(\d{1,3})/.exec(iso.slice(19));
  return `${lastClock}.${frac ? frac[1].padEnd(3, '0') : '000'}`;
}

// Stages whose losses name the lost sequence numbers. Events lost at producer_queue or kernel
// never had one: their first_seq/last_seq only say where they fell, which means nothing to a
// reader, so those show the time instead.
const SEQUENCED_STAGES = new Set(['producer_send', 'transport', 'reassembly', 'server_ingest']);

/** Where a loss happened, for people: its sequence range where it has one, else its time. */
export function lossWhere(l, time) {
  if (!SEQUENCED_STAGES.has(l.stage)) return `at ${clock(time)}`;
  return l.first_seq === l.last_seq ? `(seq ${l.first_seq})` : `(seq ${l.first_seq}–${l.last_seq})`;
}

/** Badge colour family of a kind: its prefix (process, thread, image, producer) or loss. */
function family(kind) {
  return kind.split('.')[0];
}

/** What goes in the executable and command-line columns for each sort of event. */
function describe(ev) {
  const p = ev.process;
  if (p) return [p.executable || (ev.image && ev.image.path) || p.name || '', p.command_line || ''];
  if (ev.image) return [ev.image.path || '', ''];
  if (ev.loss) {
    const l = ev.loss;
    return [`${producerName(ev.producer)} · ${l.stage}`, `${l.count} events lost ${lossWhere(l, ev.time)}`];
  }
  if (ev.kind === 'producer.connect') {
    const pr = ev.producer;
    return [producerName(pr), `connected: ${pr.os || 'unknown os'}, client pid ${pr.client_pid ?? '?'}`];
  }
  if (ev.kind === 'producer.disconnect') return [producerName(ev.producer), `disconnected: ${ev.reason || ''}`];
  return ['', ''];
}

export class EventTable {
  /**
   * @param {HTMLElement} body  the row group the rows go in
   * @param {number} maxRows  rows kept in the DOM; older ones are removed
   * @param {(ev: object) => void} onOpen  called with the event of a row the user opens
   */
  constructor(body, maxRows, onOpen) {
    this.body = body;
    this.maxRows = maxRows;
    this.queue = [];
    this.events = new WeakMap(); // row -> its event, for the detail view
    this.template = document.createElement('div');
    this.template.className = 'row';
    this.template.setAttribute('role', 'row');
    this.template.tabIndex = 0;
    for (let i = 0; i < 7; i++) this.template.appendChild(document.createElement('span')).setAttribute('role', 'cell');
    this.template.children[1].appendChild(document.createElement('span')).className = 'badge';
    // One listener for all rows, so rows cost nothing extra to add and remove.
    const open = (e) => {
      const row = e.target.closest('.row');
      const ev = row && this.events.get(row);
      if (ev) onOpen(ev);
    };
    body.addEventListener('click', open);
    body.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        open(e);
      }
    });
  }

  /**
   * Queues an item for the next frame: `{id, kind, data}` (the event's JSON text),
   * `{id, kind, ev}` (the event) or a gap marker `{gap: {missed, reason}}`.
   */
  enqueue(item) {
    this.queue.push(item);
    // Without frames (a hidden tab) the queue would grow for ever; only the newest maxRows
    // can be shown, so older queued items are let go in chunks (amortised O(1) per event).
    if (this.queue.length > 2 * this.maxRows) this.queue.splice(0, this.queue.length - this.maxRows);
  }

  get pending() {
    return this.queue.length;
  }

  get rows() {
    return this.body.childElementCount;
  }

  clear() {
    this.queue = [];
    this.body.textContent = '';
  }

  /** Draws the queued items; called once per animation frame. */
  flush() {
    if (this.queue.length === 0) return;
    const batch = this.queue.length > this.maxRows ? this.queue.slice(-this.maxRows) : this.queue;
    this.queue = [];
    const fragment = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) fragment.appendChild(this.row(batch[i]));
    this.body.prepend(fragment);
    const excess = this.body.childElementCount - this.maxRows;
    if (excess > 0) {
      // One range deletion instead of a remove() per row.
      const range = document.createRange();
      range.setStartBefore(this.body.children[this.maxRows]);
      range.setEndAfter(this.body.lastElementChild);
      range.deleteContents();
    }
  }

  row(item) {
    if (item.gap) {
      const row = document.createElement('div');
      row.className = 'row gap-row';
      row.setAttribute('role', 'row');
      row.dataset.kind = 'gap';
      const cell = row.appendChild(document.createElement('span'));
      cell.setAttribute('role', 'cell');
      cell.textContent = `${item.gap.missed.toLocaleString()} events not shown here (${item.gap.reason})`;
      return row;
    }
    // Parsed only now: of a flood, only the rows drawn are ever parsed.
    const ev = item.ev || (item.ev = JSON.parse(item.data));
    const row = this.template.cloneNode(true);
    const c = row.children;
    row.dataset.id = ev.id;
    row.dataset.kind = ev.kind;
    const p = ev.process || {};
    const [exe, cmd] = describe(ev);
    c[0].textContent = ev.id;
    const badge = c[1].firstChild;
    badge.textContent = ev.kind;
    badge.classList.add(`k-${family(ev.kind)}`);
    c[2].textContent = clock(ev.time);
    c[3].textContent = p.pid ?? '';
    c[4].textContent = (p.parent && p.parent.pid) ?? '';
    c[5].textContent = exe;
    c[6].textContent = cmd;
    if (ev.kind === 'loss') row.classList.add('loss-row');
    this.events.set(row, ev);
    return row;
  }
}
