// The small amount of page logic htmx leaves: errors from the JSON API, log follow and filter,
// the connection badge, and links to the other ports of this pod.
(function () {
  "use strict";

  // RunPod's proxy gives each port its own host name (<pod>-<port>.proxy.runpod.net); elsewhere the port differs.
  document.querySelectorAll("[data-port-link]").forEach(function (a) {
    var port = a.getAttribute("data-port-link");
    var host = location.hostname.replace(/-\d+(\.proxy\.runpod\.net)$/, "-" + port + "$1");
    a.href = host !== location.hostname ? location.protocol + "//" + host + "/" : location.protocol + "//" + location.hostname + ":" + port + "/";
  });

  function errorBox(elt) {
    var scope = elt.closest("form, article, section") || document.body;
    return scope.querySelector("[data-error]");
  }

  document.body.addEventListener("htmx:afterRequest", function (evt) {
    var elt = evt.detail.elt, xhr = evt.detail.xhr, box = errorBox(elt);
    if (!xhr) return;
    if (evt.detail.successful) {
      if (box) box.textContent = "";
      if (elt.hasAttribute("data-reset-on-success")) elt.reset();
      if (elt.hasAttribute("data-reload-on-success")) location.reload();
      if (elt.hasAttribute("data-show-token")) {
        try {
          var made = JSON.parse(xhr.responseText);
          elt.querySelector("[data-token]").textContent = "New token (shown once): " + made.token;
          // Listed at once, not after a reload (its Revoke button comes with the next page load).
          var list = document.getElementById("token-list");
          if (list) {
            var empty = list.querySelector("[data-empty]");
            if (empty) empty.remove();
            var item = document.createElement("li");
            item.textContent = made.name + " (" + made.id + ")";
            list.appendChild(item);
          }
        } catch (e) { /* not JSON */ }
      }
      return;
    }
    var message = "Request failed (" + xhr.status + ")";
    try { message = JSON.parse(xhr.responseText).error.message; } catch (e) { /* keep the generic text */ }
    if (box) { box.textContent = message; } else { window.alert(message); }
  });

  document.body.addEventListener("htmx:sendError", function (evt) {
    var box = errorBox(evt.detail.elt);
    if (box) box.textContent = "The dashboard is not answering: reconnecting…";
  });

  function setConnection(live) {
    var badge = document.getElementById("connection");
    if (!badge) return;
    badge.textContent = live ? "live" : "reconnecting…";
    badge.className = "badge " + (live ? "live" : "offline");
  }

  document.body.addEventListener("htmx:wsOpen", function (evt) {
    setConnection(true);
    var follow = document.body.getAttribute("data-follow");
    if (follow) evt.detail.socketWrapper.send(JSON.stringify({ follow: follow }));
  });
  document.body.addEventListener("htmx:wsClose", function () { setConnection(false); });

  // Logs: keep the view at the end while following; filter lines as you type.
  var lines = document.getElementById("log-lines");
  if (lines) {
    var follow = document.getElementById("log-follow"), search = document.getElementById("log-search");
    var scrollDown = function () { if (follow.checked) lines.scrollTop = lines.scrollHeight; };
    var applyFilter = function () {
      var needle = search.value.toLowerCase();
      lines.querySelectorAll("span").forEach(function (s) { s.classList.toggle("hidden", needle !== "" && s.textContent.toLowerCase().indexOf(needle) < 0); });
    };
    scrollDown();
    document.body.addEventListener("htmx:oobAfterSwap", function () { applyFilter(); scrollDown(); });
    search.addEventListener("input", applyFilter);
  }
})();
