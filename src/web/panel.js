// offsite panel: refreshes the live sections without a reload. Everything works without it;
// it only saves pressing reload. Sections holding something the user is typing are left alone.
(function () {
  "use strict";
  // The message after an action is in the query; a reload should not show it again.
  if (/[?&](ok|error)=/.test(location.search) && window.history.replaceState) {
    history.replaceState(null, "", location.pathname + location.hash);
  }
  var url = document.body.getAttribute("data-sections");
  if (!url || !window.fetch) return;

  // A button being pressed must not be replaced under the pointer. A release outside the
  // page is never seen, so a press counts for two seconds at most.
  var pressedAt = 0;
  document.addEventListener("pointerdown", function () { pressedAt = Date.now(); }, true);
  document.addEventListener("pointerup", function () { pressedAt = 0; }, true);

  function busy(el) {
    if (Date.now() - pressedAt < 2000 || el.contains(document.activeElement)) return true;
    var inputs = el.querySelectorAll("input:not([type=hidden])");
    for (var i = 0; i < inputs.length; i++) {
      if (inputs[i].value !== "") return true;
    }
    return false;
  }

  function schedule() {
    setTimeout(tick, document.hidden ? 10000 : 1000);
  }

  function tick() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 409 || r.status === 401) {
          // The session or CSRF cookie is gone: reload once to get new ones. If cookies do
          // not stick, stop rather than reload forever.
          var again = false;
          try {
            again = sessionStorage.getItem("offsite-reloaded") === "1";
            sessionStorage.setItem("offsite-reloaded", "1");
          } catch (e) { again = true; }
          if (!again) location.reload();
          document.body.classList.add("stale");
          return null;
        }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (sections) {
        if (!sections) return;
        try { sessionStorage.removeItem("offsite-reloaded"); } catch (e) { /* private mode */ }
        document.body.classList.remove("stale");
        Object.keys(sections).forEach(function (id) {
          var el = document.getElementById(id);
          if (!el || el.getAttribute("data-html") === sections[id] || busy(el)) return;
          el.innerHTML = sections[id];
          el.setAttribute("data-html", sections[id]);
        });
        schedule();
      })
      .catch(function () {
        document.body.classList.add("stale");
        schedule();
      });
  }

  schedule();
})();
