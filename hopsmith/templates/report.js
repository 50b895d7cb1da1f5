// The trace viewer of a hopsmith report (hopsmith/report.py inlines this file into report.html).
// Episodes arrive as JSON in #episodes-data; the list renders in chunks as it scrolls and an episode's
// messages are built only when it is opened, so a page with thousands of episodes opens at once.
// Every piece of episode text goes in through textContent: a paragraph can never become markup.
(function () {
  "use strict";
  var CHUNK = 60;
  var OUTCOMES = [
    ["all", "every outcome"], ["correct", "correct"], ["wrong", "wrong (answered, incorrect)"],
    ["no_final_answer", "no answer"], ["search_failure", "search failure"],
    ["extraction_failure", "extraction failure"], ["other", "other wrong"]
  ];
  var LABELS = {correct: "correct", no_final_answer: "no answer", search_failure: "search failure",
    extraction_failure: "extraction failure", other: "other wrong"};
  var PARA = /^\[(p[0-9a-f]{6})\]\s*(.*)$/;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function option(select, value, label) {
    var o = el("option", null, label);
    o.value = value;
    select.appendChild(o);
  }

  var holder = document.getElementById("trace-viewer");
  var dataEl = document.getElementById("episodes-data");
  if (!holder || !dataEl) {
    document.documentElement.setAttribute("data-ready", "1");
    return;
  }
  var data = JSON.parse(dataEl.textContent);
  var episodes = data.episodes;
  var runs = data.runs;
  var byQuestion = {};
  episodes.forEach(function (ep, i) {
    ep.i = i;
    (byQuestion[ep.id] = byQuestion[ep.id] || []).push(ep);
  });

  // -- controls ------------------------------------------------------------------------------------
  var controls = el("div", "controls");
  var runSel = el("select");
  runSel.id = "f-run";
  option(runSel, "all", "every run");
  runs.forEach(function (r, i) { option(runSel, String(i), r.name); });
  if (runs.length > 1) runSel.value = "0";
  var outSel = el("select");
  outSel.id = "f-outcome";
  OUTCOMES.forEach(function (o) { option(outSel, o[0], o[1]); });
  var hopSel = el("select");
  hopSel.id = "f-hops";
  option(hopSel, "all", "any hop count");
  Object.keys(episodes.reduce(function (acc, ep) { acc[ep.h] = 1; return acc; }, {}))
    .sort(function (a, b) { return Number(a) - Number(b); })
    .forEach(function (h) { option(hopSel, h, h + "-hop"); });
  var search = el("input");
  search.id = "f-search";
  search.type = "search";
  search.placeholder = "search questions, answers, queries, paragraphs…";
  var count = el("span", "count");
  count.id = "trace-count";
  (runs.length > 1 ? [["run", runSel]] : []).concat([["outcome", outSel], ["hops", hopSel]]).forEach(function (pair) {
    var label = el("label", null, pair[0] + " ");
    label.appendChild(pair[1]);
    controls.appendChild(label);
  });
  controls.appendChild(search);
  controls.appendChild(count);

  var panes = el("div", "panes");
  var list = el("div", "ep-list");
  list.id = "trace-list";
  var detail = el("div", "ep-detail");
  detail.id = "trace-detail";
  detail.appendChild(el("p", "note", "Pick an episode on the left. Episodes of the same question in other runs open beside it."));
  panes.appendChild(list);
  panes.appendChild(detail);
  holder.appendChild(controls);
  holder.appendChild(panes);

  // -- filtering -------------------------------------------------------------------------------------
  var haystacks = {};
  function haystack(ep) {
    var h = haystacks[ep.i];
    if (h === undefined) {
      var parts = [ep.id, ep.q, ep.p || "", (ep.a || []).join(" "), ep.t || "", ep.ds || ""];
      ep.m.forEach(function (m) {
        if (m.content) parts.push(m.content);
        (m.tool_calls || []).forEach(function (c) { parts.push(JSON.stringify(c.function || c)); });
      });
      h = haystacks[ep.i] = parts.join("\n").toLowerCase();
    }
    return h;
  }

  function matches(ep, f) {
    if (f.run !== "all" && String(ep.r) !== f.run) return false;
    if (f.hops !== "all" && String(ep.h) !== f.hops) return false;
    if (f.outcome === "wrong") {
      if (ep.o === "correct" || ep.o === "no_final_answer") return false;
    } else if (f.outcome !== "all" && ep.o !== f.outcome) return false;
    if (f.text && haystack(ep).indexOf(f.text) < 0) return false;
    return true;
  }

  var shown = [];
  var rendered = 0;
  var sentinel = el("div", "sentinel");
  var more = el("button", "more", "show more");
  more.type = "button";
  more.addEventListener("click", function () { renderChunk(); });

  function apply() {
    var f = {run: runSel.value, outcome: outSel.value, hops: hopSel.value, text: search.value.trim().toLowerCase()};
    shown = episodes.filter(function (ep) { return matches(ep, f); });
    rendered = 0;
    list.textContent = "";
    count.textContent = "showing " + shown.length + " of " + episodes.length + " episodes";
    if (!shown.length) list.appendChild(el("p", "note", "No episode matches these filters."));
    renderChunk();
  }

  function hopsAndType(ep) {
    var hops = ep.h != null ? ep.h + "-hop" : "";
    // MuSiQue's types (2hop, 3hop1, ...) repeat the hop count; say the rest only when it adds something.
    var type = ep.t && ep.t !== ep.h + "hop" ? ep.t : "";
    return hops + (hops && type ? " · " : "") + type;
  }

  function badge(outcome) {
    return el("span", "badge o-" + outcome, LABELS[outcome] || outcome);
  }

  function renderChunk() {
    var end = Math.min(shown.length, rendered + CHUNK);
    var frag = document.createDocumentFragment();
    for (var k = rendered; k < end; k++) frag.appendChild(listItem(shown[k]));
    rendered = end;
    if (sentinel.parentNode) sentinel.parentNode.removeChild(sentinel);
    if (more.parentNode) more.parentNode.removeChild(more);
    list.appendChild(frag);
    if (rendered < shown.length) {
      list.appendChild(sentinel);
      list.appendChild(more);
    }
  }

  function listItem(ep) {
    var item = el("div", "ep-item");
    item.setAttribute("data-index", String(ep.i));
    item.setAttribute("data-outcome", ep.o);
    var top = el("div", "ep-top");
    top.appendChild(badge(ep.o));
    if (runs.length > 1) top.appendChild(el("span", "run", runs[ep.r].name));
    var n = (ep.calls || []).length;
    top.appendChild(el("span", "meta", hopsAndType(ep) + " · " + n + (n === 1 ? " call" : " calls")));
    (byQuestion[ep.id] || []).forEach(function (other) {
      if (other === ep) return;
      var mini = badge(other.o);
      mini.classList.add("mini");
      mini.textContent = runs[other.r].name + ": " + (LABELS[other.o] || other.o);
      top.appendChild(mini);
    });
    item.appendChild(top);
    item.appendChild(el("div", "ep-q", ep.q));
    item.appendChild(el("div", "ep-a", "→ " + (ep.p == null ? "(no answer)" : ep.p) + "   gold: " + (ep.a || [])[0]));
    item.addEventListener("click", function () { open(ep); });
    return item;
  }

  if ("IntersectionObserver" in window) {
    new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting && rendered < shown.length) renderChunk(); });
    }, {root: list, rootMargin: "400px"}).observe(sentinel);
  }

  // -- one question, every run side by side ----------------------------------------------------------
  function open(ep) {
    Array.prototype.forEach.call(list.querySelectorAll(".ep-item.active"), function (n) { n.classList.remove("active"); });
    var node = list.querySelector('.ep-item[data-index="' + ep.i + '"]');
    if (node) node.classList.add("active");
    detail.textContent = "";
    var head = el("div", "q-head");
    head.appendChild(el("h3", null, ep.q));
    head.appendChild(el("p", "note", ep.id + " · " + (ep.ds || "") + " · " + hopsAndType(ep) +
      " · gold: " + (ep.a || []).join(" | ")));
    detail.appendChild(head);
    var same = byQuestion[ep.id] || [ep];  // in run order: base left, tuned right
    var cols = el("div", "side-by-side");
    cols.style.gridTemplateColumns = "repeat(" + same.length + ", minmax(0, 1fr))";
    same.forEach(function (x) { cols.appendChild(episodeView(x, x === ep)); });
    detail.appendChild(cols);
    detail.scrollTop = 0;
  }

  function episodeView(ep, picked) {
    var box = el("div", "episode" + (picked ? " picked" : ""));
    box.setAttribute("data-run", runs[ep.r].name);
    var h = el("div", "ep-head");
    h.appendChild(el("b", null, runs[ep.r].name + " "));
    h.appendChild(badge(ep.o));
    box.appendChild(h);
    box.appendChild(el("p", "facts", "answer: " + (ep.p == null ? "(none)" : ep.p) +
      (ep.f1 != null ? " · F1 " + Number(ep.f1).toFixed(2) : "") + " · " + (ep.turns || 0) +
      (ep.turns === 1 ? " turn" : " turns") + " · stop: " +
      (ep.stop || "?") + (ep.s != null ? " · " + Number(ep.s).toFixed(1) + " s" : "")));
    var sup = {};
    (ep.sup || []).forEach(function (l) { sup[l] = 1; });
    var found = (ep.sup || []).filter(function (l) { return (ep.ret || []).indexOf(l) >= 0; }).length;
    box.appendChild(el("p", "facts", "supporting paragraphs retrieved: " + found + " of " + (ep.sup || []).length));
    var call = 0;
    ep.m.forEach(function (m) {
      if (m.role === "tool") {
        box.appendChild(toolView(m, (ep.calls || [])[call], sup));
        call += 1;
      } else {
        box.appendChild(messageView(m));
      }
    });
    return box;
  }

  function messageView(m) {
    if (m.role === "system") {
      var d = el("details", "msg system");
      d.appendChild(el("summary", null, "system prompt"));
      d.appendChild(el("pre", null, data.systems[m.ref]));
      return d;
    }
    var box = el("div", "msg " + m.role);
    box.appendChild(el("div", "role", m.role));
    var text = m.content || "";
    // <think> blocks fold; an unclosed one runs to the end of the reply.
    var re = /<think>([\s\S]*?)(<\/think>|$)/g;
    var last = 0, match;
    while ((match = re.exec(text)) !== null) {
      if (match.index > last) box.appendChild(el("pre", null, text.slice(last, match.index).trim()));
      var d2 = el("details", "think");
      d2.appendChild(el("summary", null, "thinking (" + match[1].trim().length + " characters)"));
      d2.appendChild(el("pre", null, match[1].trim()));
      box.appendChild(d2);
      last = re.lastIndex;
    }
    var rest = text.slice(last).trim();
    if (rest) box.appendChild(el("pre", null, rest));
    (m.tool_calls || []).forEach(function (c) {
      var f = c.function || c;
      var args = typeof f.arguments === "string" ? f.arguments : JSON.stringify(f.arguments);
      box.appendChild(el("div", "call", "call " + f.name + "(" + args + ")"));
    });
    if (!text && !(m.tool_calls || []).length) box.appendChild(el("pre", "empty", "(empty reply)"));
    return box;
  }

  function toolView(m, call, sup) {
    var invalid = (call && call.valid === false) || m.name === "invalid";
    var box = el("div", "msg tool" + (invalid ? " invalid" : ""));
    var who = m.name && m.name !== "invalid" ? "tool · " + m.name : "tool";
    box.appendChild(el("div", "role", who + (invalid ? " · invalid call" : "")));
    var text = m.content || "";
    var blocks = m.name === "search" ? text.split(/\n\n(?=\[p[0-9a-f]{6}\])/) : [text];
    blocks.forEach(function (b) {
      var first = b.split("\n", 1)[0];
      var hit = PARA.exec(first);
      if (!hit) {
        box.appendChild(el("pre", null, b));
        return;
      }
      var isSup = !!sup[hit[1]];
      var p = el("div", "para " + (isSup ? "supporting" : "distractor"));
      var t = el("div", "para-title");
      t.appendChild(el("span", "badge " + (isSup ? "sup" : "nosup"), isSup ? "supporting" : "not supporting"));
      t.appendChild(el("span", null, " [" + hit[1] + "] " + hit[2]));
      p.appendChild(t);
      p.appendChild(el("pre", null, b.slice(first.length + 1)));
      box.appendChild(p);
    });
    return box;
  }

  var timer = null;
  search.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(apply, 120);
  });
  [runSel, outSel, hopSel].forEach(function (s) { s.addEventListener("change", apply); });
  apply();
  // For benchmarks/report_load.py: filter now (no typing pause) and say how many episodes match.
  function searchNow(text) {
    search.value = text;
    apply();
    return shown.length;
  }
  window.hopsmithReport = {ready: performance.now(), episodes: episodes.length, search: searchNow};
  document.documentElement.setAttribute("data-ready", "1");
})();
