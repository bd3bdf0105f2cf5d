// batchops console: the little that htmx does not do. No inline scripts (the CSP forbids them).
(function () {
  "use strict";

  // "Select every row of this page" checkboxes.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.classList || !box.classList.contains("select-all")) return;
    var name = box.getAttribute("data-select");
    document.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (row) {
      row.checked = box.checked;
    });
  });

  // Notifications that arrive live fade out of the corner after a while.
  document.addEventListener("htmx:sseMessage", function () {
    document.querySelectorAll("#toasts > li:not([data-timer])").forEach(function (toast) {
      toast.setAttribute("data-timer", "1");
      setTimeout(function () { toast.remove(); }, 8000);
    });
  });

  // Small live charts (uPlot) of the overview, redrawn when its figures are refreshed.
  function drawCharts(root) {
    if (typeof window.uPlot === "undefined") return;
    root.querySelectorAll(".chart[data-chart]").forEach(function (box) {
      var data = JSON.parse(box.getAttribute("data-chart"));
      var series = box.getAttribute("data-series");
      var width = Math.max(240, box.clientWidth || 320);
      box.textContent = "";
      new window.uPlot({
        width: width,
        height: 160,
        legend: { show: false },
        scales: { x: { time: true } },
        series: [{}, { label: box.getAttribute("data-label"), stroke: "#1d5fbf", fill: "rgba(29,95,191,0.12)", width: 2 }],
        axes: [{ stroke: "#444" }, { stroke: "#444" }],
      }, [data.hours, data[series]], box);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
  document.addEventListener("htmx:afterSwap", function (event) { drawCharts(event.target); });
})();
