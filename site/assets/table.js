// Inventory: filter rows as you type and sort by any column. The table is complete without it.
(function () {
  "use strict";
  var table = document.getElementById("inventory");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var heads = table.tHead.rows[0].cells;
  var box = document.getElementById("filter");
  var shown = document.getElementById("shown");
  box.parentNode.hidden = false;
  var help = document.querySelector(".filter-help");
  if (help) { help.hidden = false; }

  // Plain words look in these fields (never in the failing policies: "failed" is a state,
  // not part of a policy's name); field:value looks in the field it names, exactly.
  var PLAIN = ["host", "state", "flag", "nixos", "profile", "tag", "owner", "vendor", "model"];
  // Hardware, from the row's data-* attributes (the Hardware cell shows them in one line);
  // memory (GiB) is compared with memory>=16, memory<8, ...
  var ROW_FIELDS = ["vendor", "model", "encryption"];
  var NUMBERS = { memory: true };
  var LISTS = { profile: true, tag: true, policy: true };
  var columns = {};
  Array.prototype.forEach.call(heads, function (th, i) {
    var name = th.getAttribute("data-field");
    if (name) { columns[name] = i; }
  });

  function text(node) { return node ? node.textContent.trim().toLowerCase() : ""; }

  function valuesOf(row) {
    var found = {};
    ROW_FIELDS.forEach(function (name) {
      found[name] = [(row.getAttribute("data-" + name) || "").toLowerCase()];
    });
    Object.keys(NUMBERS).forEach(function (name) {
      var number = parseFloat(row.getAttribute("data-" + name) || "");
      found[name] = isNaN(number) ? null : number;
    });
    Object.keys(columns).forEach(function (name) {
      var cell = row.cells[columns[name]];
      if (name === "state") {
        found.state = [text(cell.querySelector(".badge:not(.flag)"))];
        found.flag = Array.prototype.map.call(cell.querySelectorAll(".badge.flag"), text);
      } else if (LISTS[name]) {
        found[name] = text(cell).split(/\s*,\s*/).filter(Boolean);
      } else {
        found[name] = [text(cell)];
      }
    });
    return found;
  }
  var values = rows.map(valuesOf);
  var plain = values.map(function (v) {
    return PLAIN.map(function (name) { return (v[name] || []).join(" "); }).join(" | ");
  });

  function parse(query) {
    var terms = [];
    var pattern = /([a-z]+)(>=|<=|>|<)(\d+(?:\.\d+)?)|([a-z]+):"([^"]*)"?|([a-z]+):(\S+)|"([^"]*)"?|(\S+)/g;
    var match;
    while ((match = pattern.exec(query.toLowerCase())) !== null) {
      if (match[1] && NUMBERS[match[1]]) {
        terms.push({ field: match[1], compare: match[2], number: parseFloat(match[3]) });
        continue;
      }
      match = [match[0], match[4], match[5], match[6], match[7], match[8], match[9]];
      var field = match[1] || match[3];
      var value = match[2] !== undefined ? match[2] : match[4];
      if (field && !NUMBERS[field] && values.length && values[0][field] !== undefined) {
        terms.push({ field: field, value: value.trim() });
      } else {
        terms.push({ word: (match[5] !== undefined ? match[5] : match[0]).trim() });
      }
    }
    return terms.filter(function (t) { return t.word !== "" && t.value !== ""; });
  }

  function matches(i, term) {
    if (term.word !== undefined) { return plain[i].indexOf(term.word) !== -1; }
    if (term.compare !== undefined) {
      var n = values[i][term.field];
      if (n === null) { return false; }  // unknown: never matches a comparison
      return term.compare === ">=" ? n >= term.number : term.compare === "<=" ? n <= term.number
        : term.compare === ">" ? n > term.number : n < term.number;
    }
    return values[i][term.field].indexOf(term.value) !== -1;
  }

  function applyFilter() {
    var terms = parse(box.value);
    var count = 0;
    rows.forEach(function (row, i) {
      var match = terms.every(function (t) { return matches(i, t); });
      row.hidden = !match;
      if (match) { count += 1; }
    });
    shown.textContent = count + " of " + rows.length + " hosts";
    if (history.replaceState) {
      history.replaceState(null, "", box.value ? "#q=" + encodeURIComponent(box.value) : "#");
    }
  }
  var timer = null;
  box.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(applyFilter, rows.length > 2000 ? 150 : 0);
  });
  if (location.hash.indexOf("#q=") === 0) {
    box.value = decodeURIComponent(location.hash.slice(3));
  }
  applyFilter();

  function key(row, column) {
    var cell = row.cells[column];
    var value = cell.getAttribute("data-sort");
    return value !== null ? value : cell.textContent.trim().toLowerCase();
  }
  Array.prototype.forEach.call(heads, function (th, column) {
    th.setAttribute("aria-sort", "none");
    th.tabIndex = 0;
    function sort() {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.setAttribute("aria-sort", "none"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var keyed = rows.map(function (row, i) { return [key(row, column), i, row]; });
      keyed.sort(function (a, b) {
        var na = parseFloat(a[0]), nb = parseFloat(b[0]);
        var c = (!isNaN(na) && !isNaN(nb) && String(na) === a[0] && String(nb) === b[0])
          ? na - nb : (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
        return (ascending ? c : -c) || a[1] - b[1];
      });
      var fragment = document.createDocumentFragment();
      keyed.forEach(function (k) { fragment.appendChild(k[2]); });
      body.appendChild(fragment);
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
  });
}());
