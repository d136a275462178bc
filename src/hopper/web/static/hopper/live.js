// The live classroom: follow the page's server-sent events and re-fetch the tiles (htmx).
// The stream says only "something changed"; the tiles come from the server, already scoped
// and named (or pseudonymised). Without EventSource, or when the stream fails, poll.
(function () {
  "use strict";
  function start() {
    var live = document.getElementById("live");
    if (!live || typeof htmx === "undefined") return;
    var refresh = function () { htmx.trigger(live, "refresh"); };
    var url = live.dataset.stream;
    var polling = null;
    var poll = function () { if (!polling) polling = setInterval(refresh, 5000); };
    setInterval(refresh, 15000); // "last seen" keeps ticking even when nothing changes
    if (!url || typeof EventSource === "undefined") { if (url) poll(); return; }
    var source = new EventSource(url);
    source.addEventListener("change", refresh);
    source.addEventListener("open", function () {
      if (polling) { clearInterval(polling); polling = null; }
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) poll();
    });
  }
  // After DOMContentLoaded: every deferred script (htmx among them) has run by then.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
