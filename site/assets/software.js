// Software: filter the package table as you type; when few rows are left, list the hosts
// that run each (from the index in the page). The table is complete without it.
(function () {
  "use strict";
  var table = document.getElementById("packages");
  if (!table) { return; }
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  var box = document.getElementById("filter");
  var shown = document.getElementById("shown");
  var indexNode = document.getElementById("package-index");
  var index = indexNode ? JSON.parse(indexNode.textContent) : null;
  var LIST_BELOW = 50; // rows left from which their hosts are listed
  var root = table.getAttribute("data-root") || "";
  box.parentNode.hidden = false;

  var keys = rows.map(function (row) {
    return [row.cells[0].textContent.trim().toLowerCase(), row.cells[1].textContent.trim().toLowerCase()];
  });

  function matches(key, words) {
    return words.every(function (word) {
      var at = word.indexOf("@");
      if (at === -1) { return key[0].indexOf(word) !== -1; }
      var name = word.slice(0, at), version = word.slice(at + 1);
      return key[0] === name && (version === "" || key[1] === version);
    });
  }

  function hostsOf(row) {
    var sets = index.audiences[Number(row.getAttribute("data-a"))];
    var names = [];
    sets.forEach(function (i) { names = names.concat(index.sets[i].hosts); });
    return names.sort();
  }

  function fill(row) {
    var cell = row.cells[3];
    if (!index || !cell || cell.getAttribute("data-filled")) { return; }
    cell.setAttribute("data-filled", "1");
    hostsOf(row).forEach(function (name, i) {
      if (i > 0) { cell.appendChild(document.createTextNode(", ")); }
      var link = document.createElement("a");
      link.href = root + "hosts/" + encodeURIComponent(name) + ".html";
      link.textContent = name;
      cell.appendChild(link);
    });
  }

  function apply() {
    var words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
    var visible = [];
    rows.forEach(function (row, i) {
      var match = matches(keys[i], words);
      row.hidden = !match;
      if (match) { visible.push(row); }
    });
    if (words.length && visible.length <= LIST_BELOW) { visible.forEach(fill); }
    shown.textContent = visible.length + " of " + rows.length + " packages";
    if (history.replaceState) {
      history.replaceState(null, "", box.value ? "#q=" + encodeURIComponent(box.value) : "#");
    }
  }
  var timer = null;
  box.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(apply, rows.length > 2000 ? 150 : 0);
  });
  if (location.hash.indexOf("#q=") === 0) {
    box.value = decodeURIComponent(location.hash.slice(3));
  }
  apply();
}());
