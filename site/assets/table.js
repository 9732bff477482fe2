// Inventory: filter rows as you type and sort by any column. The table is complete without it.
(function () {
  "use strict";
  var table = document.getElementById("inventory");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
  var box = document.getElementById("filter");
  var shown = document.getElementById("shown");
  box.parentNode.hidden = false;

  function applyFilter() {
    var words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
    var count = 0;
    rows.forEach(function (row, i) {
      var match = words.every(function (w) { return texts[i].indexOf(w) !== -1; });
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
  var heads = table.tHead.rows[0].cells;
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
