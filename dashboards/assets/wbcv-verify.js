// Verification of the gallery's cells from the keyboard (wbcv.dashboards.verify records them).
// Arrows move between the cells of the open sample (a click picks one), Enter accepts the cell's
// class, 1-7 reclassify it (the order of wbcv.validation.verification_log.VERIFIED_CHOICES); the
// next cell is then picked. Decisions are sent one after another, in the order they were made; the
// server's answer (the record, or why it refused) is shown under the sample's title.
(function () {
  var CHOICES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "unclassified", "not_wbc"];
  var pending = Promise.resolve();

  function cells() { return Array.prototype.slice.call(document.querySelectorAll("#gallery figure.cell")); }

  function pick(list, i) {
    if (!list.length) return null;
    var at = Math.max(0, Math.min(list.length - 1, i));
    list.forEach(function (c, j) { c.classList.toggle("focused", j === at); });
    list[at].scrollIntoView({block: "nearest"});
    return list[at];
  }

  function say(text, failed) {
    var status = document.getElementById("verify-status");
    if (!status) return;
    status.textContent = text;
    status.className = failed ? "fail" : "";
  }

  function show(cell, entry) {
    var caption = cell.querySelector("figcaption");
    var mark = caption.querySelector(".verified");
    if (!mark) {
      mark = document.createElement("span");
      mark.className = "verified";
      caption.appendChild(mark);
    }
    mark.textContent = " " + (entry.action === "accept" ? "\u2713" : "\u2192") + " " + entry.to + " (" + entry.user + ")";
  }

  function send(cell, to) {
    var body = JSON.stringify({cell_path: cell.getAttribute("data-cell"), to: to});
    var url = cell.getAttribute("data-verify-url");
    pending = pending.then(function () {
      return fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: body,
                         credentials: "same-origin"})
        .then(function (r) { return r.json().then(function (answer) { return {ok: r.ok, answer: answer}; }); })
        .then(function (res) {
          if (!res.ok) { say(res.answer.error || "refused", true); return; }
          show(cell, res.answer);
          say("record " + res.answer.seq + ": " + res.answer.cell_path + " " + res.answer.from + " \u2192 " +
              res.answer.to + " by " + res.answer.user, false);
        })
        .catch(function (e) { say("not recorded: " + e, true); });
    });
  }

  document.addEventListener("click", function (ev) {
    var cell = ev.target.closest && ev.target.closest("#gallery figure.cell");
    if (cell) pick(cells(), cells().indexOf(cell));
  });

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var t = ev.target;
    if (t && (/^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(t.tagName) || t.isContentEditable)) return;
    var list = cells();
    if (!list.length) return;
    var current = list.indexOf(document.querySelector("#gallery figure.cell.focused"));
    var to;
    if (ev.key === "ArrowRight" || ev.key === "ArrowDown") {
      pick(list, current + 1);
    } else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") {
      pick(list, current < 0 ? 0 : current - 1);
    } else if (ev.key === "Enter" || (ev.key >= "1" && ev.key <= String(CHOICES.length))) {
      to = ev.key === "Enter" ? null : CHOICES[Number(ev.key) - 1];
      var cell = pick(list, current < 0 ? 0 : current);  // nothing picked yet: the first cell
      send(cell, to);
      pick(list, list.indexOf(cell) + 1);
    } else {
      return;
    }
    ev.preventDefault();
  });
})();
