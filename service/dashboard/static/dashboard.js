// The dashboard's live updates: server-sent events from /events (fed by LISTEN on the
// database and a short refresh). Each "snapshot" carries the overview and the newest
// rows as HTML the server rendered (escaped there, as on the first load); a row whose
// version is unchanged is kept as it is, so a playing video is never interrupted.
// A "status" says whether the database answers. EventSource reconnects by itself; if
// it gives up (the server was away and answered an error), we start it again.
"use strict";

(function () {
  const rows = document.getElementById("rows");
  const overview = document.getElementById("overview");
  const live = document.getElementById("live");
  if (!rows || !overview || !live || !window.EventSource) {
    return;
  }

  function say(text, state) {
    live.textContent = text;
    live.className = state;
  }

  function element(html) {
    const holder = document.createElement("template");
    holder.innerHTML = html;
    return holder.content.firstElementChild;
  }

  function applyRows(fresh) {
    const wanted = [];
    for (const row of fresh) {
      let el = document.getElementById("row-" + row.id);
      if (row.html !== null && (!el || el.dataset.version !== row.version)) {
        const made = element(row.html);
        if (el) {
          el.replaceWith(made);
        }
        el = made;
      }
      if (el) {
        wanted.push(el);
      }
    }
    wanted.forEach(function (el, index) {
      if (rows.children[index] !== el) {
        rows.insertBefore(el, rows.children[index] || null);
      }
    });
    while (rows.children.length > wanted.length) {
      rows.lastElementChild.remove();
    }
  }

  function onSnapshot(event) {
    const data = JSON.parse(event.data);
    if (data.database !== "ok") {
      say("database unavailable; retrying", "down");
      return;
    }
    say("live", "ok");
    if (data.overview !== null) {
      overview.innerHTML = data.overview;
    }
    applyRows(data.rows);
    document.body.dataset.updated = String(Date.now());
  }

  let source = null;
  function connect() {
    source = new EventSource(rows.dataset.live);
    source.addEventListener("snapshot", onSnapshot);
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        say("dashboard unreachable; retrying", "down");
        source.close();
        window.setTimeout(connect, 2000);
      } else {
        say("reconnecting", "down");
      }
    });
  }
  connect();
})();
