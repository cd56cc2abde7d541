// The errands dashboard's only script: the live part of a page (#live) refreshes itself
// every few seconds from the same URL (so its filters stay), and forms that ask first.
(function () {
  "use strict";
  const live = document.getElementById("live");
  const every = live ? Number(live.dataset.refresh || 0) : 0;
  const stamp = document.querySelector("[data-updated]");

  function busy() {
    const active = document.activeElement;
    return document.hidden || (active && live.contains(active) && active.matches("input, select, textarea"));
  }

  async function refresh() {
    if (busy()) return;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      if (!fresh) return;
      live.replaceChildren(...Array.from(fresh.childNodes).map((node) => document.adoptNode(node)));
      live.dataset.refresh = fresh.dataset.refresh || "";
      const freshStamp = page.querySelector("[data-updated]");
      if (stamp && freshStamp) stamp.textContent = freshStamp.textContent;
      bindConfirms(live);
      if (!fresh.dataset.refresh) clearInterval(timer); // e.g. the job has finished
    } catch (error) {
      // The server is restarting or the network dropped: try again next time.
    }
  }

  function bindConfirms(scope) {
    scope.querySelectorAll("form[data-confirm]").forEach((form) => {
      if (form.dataset.bound) return;
      form.dataset.bound = "1";
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  bindConfirms(document);
  const timer = every > 0 ? setInterval(refresh, every * 1000) : null;
})();
