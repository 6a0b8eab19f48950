// SLA countdowns on the alerts page: the server renders the text, this keeps it current.
"use strict";
(function () {
  function tick() {
    document.querySelectorAll(".countdown[data-due]").forEach(function (el) {
      var minutes = Math.floor((Date.parse(el.dataset.due) - Date.now()) / 60000);
      el.textContent = minutes >= 0 ? "剩余 " + minutes + " 分钟" : "已超时 " + (-minutes) + " 分钟";
      el.classList.toggle("late", minutes < 0);
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    // The server's clock decides while the page is fresh (tests run it on a fixed clock).
    document.querySelectorAll(".countdown").forEach(function (el) {
      el.classList.toggle("late", el.textContent.indexOf("超时") >= 0);
    });
    setInterval(tick, 30000);
  });
})();
