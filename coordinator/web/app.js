// The nice dashboard: reads /status, /api/history and /api/events (see
// docs/design.md, "The dashboard") and draws everything itself, in SVG.
'use strict';

const $ = (id) => document.getElementById(id);
const LN2 = Math.log(2);
const DIM = 784; // MNIST

let status = null;      // the newest Status
let hist = null;        // the newest HistoryView
let wantVersion = -1;   // history version the newest frame names
let fetching = false;
let samplesStep = -1;
let axis = 'step';      // 'step' or 'time'
// Options in the address, read only here: #time (wall-clock axis), #poll
// (poll /status instead of the event stream, as a proxy that buffers
// streams needs, or a headless browser that waits for the page to go idle).
const hashOpts = new Set(location.hash.slice(1).split(',').filter((o) => o));

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
function fmt(v, d) { return (v === undefined || v === null || !isFinite(v)) ? '–' : Number(v).toFixed(d); }
function fmtDur(s) {
  if (!isFinite(s) || s < 0) return '–';
  if (s < 60) return Math.round(s) + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
  const h = Math.floor(s / 3600);
  return h + ' h ' + Math.round((s % 3600) / 60) + ' min';
}
function fmtBytes(b) {
  if (!b) return '–';
  if (b >= 1e9) return (b / 1e9).toFixed(2) + ' GB';
  if (b >= 1e6) return (b / 1e6).toFixed(1) + ' MB';
  return (b / 1e3).toFixed(1) + ' kB';
}
function clock(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
}

// ---------- status ----------

function drawStatus(st) {
  status = st;
  const phase = $('phase');
  phase.textContent = st.phase;
  phase.className = 'pill ' + ({ running: 'ok', finished: 'ok', holding: 'warn', preparing: 'warn', idle: 'warn' }[st.phase] || '');
  $('gen').textContent = st.generation;
  const healthy = st.health === 'ok';
  const h = $('health');
  h.textContent = healthy ? 'healthy' : 'degraded';
  h.className = 'pill ' + (healthy ? 'ok' : 'bad');
  h.title = st.health;

  const total = st.epochs * st.steps_per_epoch;
  $('step').textContent = st.step;
  $('steps').textContent = total || '–';
  const runFrac = total > 0 ? Math.min(1, st.step / total) : 0;
  $('runbar').style.width = (100 * runFrac).toFixed(2) + '%';
  $('runpct').textContent = (100 * runFrac).toFixed(1) + ' %';
  const done = st.phase === 'finished' || (total > 0 && st.step >= total);
  $('epoch').textContent = done ? st.epochs : st.epoch;
  $('epochs').textContent = st.epochs;
  $('sie').textContent = done ? st.steps_per_epoch : st.step_in_epoch;
  $('spe').textContent = st.steps_per_epoch;
  const epochFrac = done ? 1 : (st.steps_per_epoch > 0 ? st.step_in_epoch / st.steps_per_epoch : 0);
  $('epochbar').style.width = (100 * epochFrac).toFixed(2) + '%';
  $('epochpct').textContent = (100 * epochFrac).toFixed(1) + ' %';
  // The ETA is the coordinator's (eta_seconds), never guessed here.
  $('eta').textContent = done ? 'done' : ('eta_seconds' in st && st.eta_seconds > 0 ? fmtDur(st.eta_seconds) : '–');
  $('sps').textContent = fmt(st.samples_per_sec, 1);
  $('nll').textContent = st.step > 0 ? fmt(st.train_nll, 2) : '–';
  const scored = st.scores && st.scores.length > 0;
  $('testll').textContent = scored ? fmt(st.test_ll, 2) : 'after epoch 1';
  $('bpd').textContent = scored ? fmt(st.bits_per_dim, 4) : '–';
  $('busbw').textContent = st.allreduce_busbw_GBps > 0 ? fmt(st.allreduce_busbw_GBps, 2) + ' GB/s' : '–';
  $('config').textContent = st.config_hash || '';
  drawMembers();
  drawRing(st);
  drawHealth(st);
  if (hist) drawCheckpoints();
}

function drawMembers() {
  if (!status) return;
  const tb = $('members').tBodies[0];
  const ms = (hist && hist.members) || {};
  const rows = (status.workers || []).map((w) => {
    const m = ms[w.id];
    const last = m ? fmt(m.seconds, 2) + ' s <span class="note">(step ' + m.step + ')</span>' : '–';
    const split = m ? fmt(m.grad, 2) + ' / ' + fmt(m.ar, 2) + ' s' : '–';
    return '<tr><td class="mono">' + esc(w.id) + '</td><td class="mono">' + esc(w.addr) + '</td><td><span class="state ' + esc(w.state) + '">' + esc(w.state) +
      '</span></td><td>' + (w.rank >= 0 ? w.rank : '–') + '</td><td>' + esc(w.gossip) + '</td><td class="num">' + last + '</td><td class="num">' + split + '</td></tr>';
  });
  tb.innerHTML = rows.length ? rows.join('') : '<tr><td colspan="7" class="empty">no worker attached</td></tr>';
  $('members-note').textContent = (status.workers || []).length + ' attached, ' + (status.ring || []).length + ' in the ring';
}

function drawRing(st) {
  const svg = $('ring');
  const ring = st.ring || [];
  const cx = 150, cy = 105, r = 66;
  let out = '<defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8a93a6"/></marker></defs>';
  if (ring.length === 0) {
    out += '<text class="empty" x="150" y="105" text-anchor="middle">no ring: ' + esc(st.phase) + '</text>';
  } else {
    const pos = ring.map((_, i) => {
      const a = -Math.PI / 2 + 2 * Math.PI * i / ring.length;
      return [cx + r * Math.cos(a), cy + r * Math.sin(a)];
    });
    if (ring.length > 1) {
      for (let i = 0; i < ring.length; i++) {
        const [x1, y1] = pos[i], [x2, y2] = pos[(i + 1) % ring.length];
        const dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy) || 1, k = 24 / len;
        out += '<line x1="' + (x1 + dx * k).toFixed(1) + '" y1="' + (y1 + dy * k).toFixed(1) + '" x2="' + (x2 - dx * k).toFixed(1) + '" y2="' + (y2 - dy * k).toFixed(1) +
          '" stroke="#8a93a6" stroke-width="1.6" marker-end="url(#arr)"/>';
      }
    }
    ring.forEach((id, i) => {
      const [x, y] = pos[i];
      out += '<circle cx="' + x.toFixed(1) + '" cy="' + y.toFixed(1) + '" r="20" fill="#e7f5ff" stroke="#2f6fdb" stroke-width="1.5"/>' +
        '<text x="' + x.toFixed(1) + '" y="' + (y + 4).toFixed(1) + '" text-anchor="middle" fill="#1864ab" font-weight="600" class="rank">' + i + '</text>' +
        '<text x="' + x.toFixed(1) + '" y="' + (y + (y < cy ? -26 : 34)).toFixed(1) + '" text-anchor="middle" class="mono">' + esc(id.length > 18 ? id.slice(0, 17) + '…' : id) + '</text>';
    });
  }
  svg.innerHTML = out;
  $('ring-note').textContent = ring.length ? 'generation ' + st.generation + ', rank order' : '';
}

function drawHealth(st) {
  const rf = st.refused_messages || {};
  const refused = (rf.stale || 0) + (rf.non_member || 0) + (rf.invalid || 0) + (rf.identity || 0) + (rf.hello || 0);
  const yes = (ok, good, bad) => '<span class="' + (ok ? 'ok' : 'bad') + '">' + (ok ? good : bad) + '</span>';
  const rows = [
    ['health', yes(st.health === 'ok', 'ok', esc(st.health))],
    ['ledger', yes(st.ledger_ok && !st.ledger_error, 'every commit partitions its batch', st.ledger_errors + ' bad commits' + (st.ledger_error ? '; file: ' + esc(st.ledger_error.error) : ''))],
    ['digests', yes(st.digests_agree, 'replicas agree', st.digest_mismatches + ' mismatches')],
    ['non-finite steps', yes(!st.non_finite_steps, '0', st.non_finite_steps)],
    ['checkpoints refused', yes(!st.checkpoints_refused, '0', st.checkpoints_refused)],
    ['refused messages', refused === 0 ? '<span class="ok">0</span>' : '<span class="warn">' + refused + '</span> <span class="note">stale ' + (rf.stale || 0) + ', non-member ' + (rf.non_member || 0) +
      ', invalid ' + (rf.invalid || 0) + ', identity ' + (rf.identity || 0) + ', hello ' + (rf.hello || 0) + '</span>'],
    ['steps', st.committed_steps + ' committed, ' + st.redone_steps + ' redone, ' + st.generations + ' generations'],
    ['last checkpoint', st.last_checkpoint_age_seconds > 0 ? 'step ' + st.last_checkpoint_step + ', ' + fmtDur(st.last_checkpoint_age_seconds) + ' ago' : (st.last_checkpoint_step > 0 ? 'step ' + st.last_checkpoint_step : 'none yet')],
  ];
  if (st.last_refused) rows.push(['last refusal', '<span class="note">' + esc(st.last_refused) + '</span>']);
  $('healthlist').innerHTML = rows.map(([k, v]) => '<dt>' + k + '</dt><dd>' + v + '</dd>').join('');
}

// ---------- history ----------

function drawHistory(h) {
  hist = h;
  drawMembers();
  drawCheckpoints();
  drawEvents();
  drawCurves();
}

function drawCheckpoints() {
  const tb = $('checkpoints').tBodies[0];
  const now = Date.now();
  const cs = (hist.checkpoints || []).slice(-8).reverse();
  tb.innerHTML = cs.length ? cs.map((c) => '<tr><td class="num">' + c.step + '</td><td class="num">' + fmtDur((now - c.t) / 1000) + '</td><td class="num">' + fmtBytes(c.bytes) +
    '</td><td><span class="state ' + esc(c.outcome) + '" title="' + esc(c.error || (c.outcome === 'stored' ? 'the replicas agreed on its digest; written and checksummed in ' + fmt(c.write_seconds, 2) + ' s' : 'verified when loaded')) + '">' +
    esc(c.outcome === 'stored' ? 'agreed · stored' : c.outcome) + '</span></td><td class="mono">' + esc(c.sha256 || '') + '</td></tr>').join('')
    : '<tr><td colspan="5" class="empty">none taken by this coordinator yet</td></tr>';
}

function drawEvents() {
  const tb = $('events').tBodies[0];
  const ev = (hist.events || []).slice().reverse();
  tb.innerHTML = ev.length ? ev.map((e) => '<tr><td class="t mono">' + clock(e.t) + '</td><td class="k"><span class="kind ' + esc(e.kind) + '">' + esc(e.kind) + '</span></td><td class="x">' +
    esc(e.text) + (e.count > 1 ? ' <span class="note">×' + e.count + '</span>' : '') + '</td></tr>').join('')
    : '<tr><td class="empty">no events yet</td></tr>';
  $('events-note').textContent = ev.length ? ev.length + ' newest first' : '';
}

// ---------- charts ----------

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function tickLabel(v, span) {
  const a = Math.abs(v);
  if (a >= 1e5) return v.toExponential(1);
  if (span >= 20 || Number.isInteger(v)) return String(Math.round(v));
  if (span >= 2) return v.toFixed(1);
  if (span >= 0.2) return v.toFixed(2);
  return v.toFixed(3);
}

// chart draws series into an SVG: each {pts: [[x, y]...], color, kind:
// 'line' | 'dots' | 'area' (a band from y0 to y)}. xTime labels x as clock.
function chart(svg, series, opt) {
  const W = svg.clientWidth || 600, H = svg.clientHeight || 220;
  svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
  const L = 58, R = 14, T = 10, B = 30;
  const all = series.flatMap((s) => s.pts.map((p) => [p[0], p[1], s.kind === 'area' ? p[2] : p[1]]));
  const fin = all.filter((p) => isFinite(p[0]) && isFinite(p[1]));
  if (fin.length === 0) {
    svg.innerHTML = '<text class="empty" x="' + W / 2 + '" y="' + H / 2 + '" text-anchor="middle">' + esc(opt.empty || 'no data yet') + '</text>';
    return;
  }
  let x0 = Math.min(...fin.map((p) => p[0])), x1 = Math.max(...fin.map((p) => p[0]));
  let y0 = Math.min(...fin.map((p) => Math.min(p[1], p[2]))), y1 = Math.max(...fin.map((p) => Math.max(p[1], p[2])));
  if (opt.zero) y0 = Math.min(0, y0);
  // A few long pauses (a generation change, an evaluation) would flatten
  // everything else: with opt.clip the axis ends well above the 95th
  // percentile and higher points are drawn at its top.
  let clipped = 0;
  if (opt.clip && fin.length >= 20) {
    const ys = fin.map((p) => Math.max(p[1], p[2])).sort((a, b) => a - b);
    const cap = ys[Math.floor(0.95 * (ys.length - 1))] * 2;
    if (cap > 0 && y1 > cap) { y1 = cap; clipped = ys.filter((v) => v > cap).length; }
  }
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.06;
  y1 += pad; if (!opt.zero) y0 -= pad;
  const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const Y = (y) => T + (1 - (Math.min(y, y1) - y0) / (y1 - y0)) * (H - T - B);
  let out = '';
  const yt = niceTicks(y0, y1, 5);
  for (const v of yt) {
    out += '<line class="grid" x1="' + L + '" x2="' + (W - R) + '" y1="' + Y(v).toFixed(1) + '" y2="' + Y(v).toFixed(1) + '"/>' +
      '<text x="' + (L - 6) + '" y="' + (Y(v) + 4).toFixed(1) + '" text-anchor="end">' + tickLabel(v, y1 - y0) + '</text>';
  }
  let xt;
  if (opt.xTime) {
    const spanS = (x1 - x0) / 1000;
    const step = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400].find((s) => spanS / s <= 7) || 86400;
    xt = [];
    for (let v = Math.ceil(x0 / 1000 / step) * step * 1000; v <= x1; v += step * 1000) xt.push(v);
  } else {
    xt = niceTicks(x0, x1, 7);
  }
  for (const v of xt) {
    if (v < x0 || v > x1) continue;
    out += '<line class="grid" y1="' + T + '" y2="' + (H - B) + '" x1="' + X(v).toFixed(1) + '" x2="' + X(v).toFixed(1) + '"/>' +
      '<text x="' + X(v).toFixed(1) + '" y="' + (H - B + 16) + '" text-anchor="middle">' + (opt.xTime ? clock(v).slice(0, 5 + (((x1 - x0) / 1000) < 600 ? 3 : 0)) : tickLabel(v, x1 - x0)) + '</text>';
  }
  out += '<line class="axis" x1="' + L + '" x2="' + (W - R) + '" y1="' + (H - B) + '" y2="' + (H - B) + '"/><line class="axis" x1="' + L + '" x2="' + L + '" y1="' + T + '" y2="' + (H - B) + '"/>';
  out += '<text x="' + (W - R) + '" y="' + (H - 2) + '" text-anchor="end">' + (opt.xTime ? 'wall clock' : 'step') + '</text>';
  if (clipped) out += '<text x="' + (W - R) + '" y="' + (T + 10) + '" text-anchor="end">' + clipped + (clipped === 1 ? ' point' : ' points') + ' above ' + tickLabel(y1, y1 - y0) + ' drawn at the top</text>';
  for (const s of series) {
    const pts = s.pts.filter((p) => isFinite(p[0]) && isFinite(p[1]));
    if (pts.length === 0) continue;
    if (s.kind === 'area') {
      const top = pts.map((p) => X(p[0]).toFixed(1) + ',' + Y(p[1]).toFixed(1));
      const bot = pts.slice().reverse().map((p) => X(p[0]).toFixed(1) + ',' + Y(p[2]).toFixed(1));
      out += '<polygon points="' + top.concat(bot).join(' ') + '" fill="' + s.color + '" fill-opacity="0.85" stroke="none"/>';
    } else if (s.kind === 'dots') {
      for (const p of pts) out += '<circle cx="' + X(p[0]).toFixed(1) + '" cy="' + Y(p[1]).toFixed(1) + '" r="4" fill="' + s.color + '" stroke="#fff" stroke-width="1.5"><title>' + esc(s.title ? s.title(p) : p[1]) + '</title></circle>';
    } else {
      out += '<polyline points="' + pts.map((p) => X(p[0]).toFixed(1) + ',' + Y(p[1]).toFixed(1)).join(' ') + '" fill="none" stroke="' + s.color + '" stroke-width="' + (s.width || 1.6) + '" stroke-linejoin="round"/>';
    }
  }
  svg.innerHTML = out;
}

function drawCurves() {
  if (!hist) return;
  const pts = hist.points || [];
  const time = axis === 'time';
  const xOf = (p) => (time ? p.t : p.step);
  const css = getComputedStyle(document.documentElement);
  const col = (n) => css.getPropertyValue(n).trim();
  const scores = (status && status.scores) || [];
  const et = hist.epoch_times || {};
  const ex = (e) => (time ? (et[e.epoch] !== undefined ? et[e.epoch] : NaN) : e.step);
  const train = pts.map((p) => [xOf(p), p.nll]);
  const test = scores.map((e) => [ex(e), -e.test_ll, e]);
  const emptyNote = pts.length ? '' : 'no step committed by this coordinator yet';
  chart($('ch-nll'), [
    { pts: train, color: col('--c1') },
    { pts: test, color: col('--c2'), kind: 'dots', title: (p) => 'epoch ' + p[2].epoch + ': test LL ' + p[2].test_ll.toFixed(2) },
  ], { xTime: time, empty: emptyNote });
  const bpd = (nll) => 8 + nll / (DIM * LN2);
  chart($('ch-bpd'), [
    { pts: pts.map((p) => [xOf(p), bpd(p.nll)]), color: col('--c1') },
    { pts: scores.map((e) => [ex(e), e.bits_per_dim, e]), color: col('--c2'), kind: 'dots', title: (p) => 'epoch ' + p[2].epoch + ': ' + p[2].bits_per_dim.toFixed(4) + ' bits/dim' },
  ], { xTime: time, empty: emptyNote });
  // Stacked: gradient, all-reduce, commit wait, update.
  const keys = ['grad', 'ar', 'wait', 'upd'];
  const stacks = keys.map(() => []);
  for (const p of pts) {
    let base = 0;
    keys.forEach((k, i) => { stacks[i].push([xOf(p), base + p[k], base]); base += p[k]; });
  }
  chart($('ch-time'), keys.map((k, i) => ({ pts: stacks[i], color: col('--s' + (i + 1)), kind: 'area' }))
    .concat([{ pts: pts.filter((p) => p.wall > 0).map((p) => [xOf(p), p.wall]), color: col('--c5'), width: 1.2 }]), { xTime: time, zero: true, clip: true, empty: emptyNote });
  chart($('ch-sps'), [{ pts: pts.filter((p) => p.sps > 0).map((p) => [xOf(p), p.sps]), color: col('--c3') }], { xTime: time, zero: true, empty: emptyNote });
  $('bucket-note').textContent = hist.bucket > 1 ? 'each point is the mean of ' + hist.bucket + ' steps' : (pts.length ? 'one point per committed step' : '');
}

// ---------- samples ----------

function drawSamples(step, note) {
  const img = $('samples'), empty = $('samples-empty');
  if (step < 0) {
    empty.textContent = 'no sample grid yet: ' + (note || 'drawn at the first checkpoint this coordinator takes');
    return;
  }
  if (step === samplesStep) return;
  samplesStep = step;
  // The query only defeats the browser's cache; the server ignores it.
  img.src = '/api/samples.png?step=' + step;
  img.hidden = false;
  empty.hidden = true;
  $('samples-note').textContent = 'the checkpoint at step ' + step + ', 64 samples';
}

// ---------- data ----------

async function fetchHistory() {
  if (fetching) return;
  fetching = true;
  try {
    const r = await fetch('/api/history', { cache: 'no-store' });
    if (r.ok) {
      const h = await r.json();
      drawHistory(h);
    }
  } catch (e) {
    // The next frame asks again.
  } finally {
    fetching = false;
  }
  if (hist && hist.version < wantVersion) setTimeout(fetchHistory, 300);
}

function onFrame(f) {
  drawStatus(f.status);
  drawSamples(f.samples_step, f.samples_note);
  wantVersion = f.history_version;
  if (!hist || hist.version !== wantVersion) fetchHistory();
}

let pollTimer = null;
async function poll() {
  try {
    const r = await fetch('/status', { cache: 'no-store' });
    if (r.ok) {
      const st = await r.json();
      drawStatus(st);
      fetchHistory();
    }
    // Without the stream's frames, the grid's step comes from its header.
    const g = await fetch('/api/samples.png', { method: 'HEAD', cache: 'no-store' });
    const step = g.ok ? parseInt(g.headers.get('X-Nice-Step'), 10) : -1;
    drawSamples(isFinite(step) ? step : -1);
  } catch (e) { /* the next poll tries again */ }
}

function connect() {
  const live = $('live');
  const es = new EventSource('/api/events');
  es.addEventListener('status', (ev) => {
    live.textContent = 'live';
    live.className = 'pill ok';
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
    try { onFrame(JSON.parse(ev.data)); } catch (e) { /* a bad frame: wait for the next */ }
  });
  es.onerror = () => {
    live.textContent = 'reconnecting';
    live.className = 'pill off';
    // Streams refused (too many open) or the coordinator away: poll
    // until the stream is back.
    if (!pollTimer) pollTimer = setInterval(poll, 3000);
  };
}

function setAxis(a) {
  axis = a;
  $('ax-step').classList.toggle('on', a === 'step');
  $('ax-time').classList.toggle('on', a === 'time');
  // The choice stays in the address (#time), for links and reloads.
  if (a === 'time') hashOpts.add('time'); else hashOpts.delete('time');
  history.replaceState(null, '', hashOpts.size ? '#' + [...hashOpts].join(',') : location.pathname);
  drawCurves();
}
$('ax-step').addEventListener('click', () => setAxis('step'));
$('ax-time').addEventListener('click', () => setAxis('time'));
if (hashOpts.has('time')) setAxis('time');
window.addEventListener('resize', drawCurves);
poll();
if (hashOpts.has('poll')) {
  $('live').textContent = 'polling';
  $('live').className = 'pill ok';
  pollTimer = setInterval(poll, 2000);
} else {
  connect();
}
