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

  function fill(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (_, key) { return String(values[key]); });
  }

  // Meals: "every day" ticks a column of the week; the members' search hides who does not
  // match and "select all shown" ticks who is left; the total follows every tick.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.classList) return;
    if (box.classList.contains("select-column")) {
      var column = box.getAttribute("data-column");
      document.querySelectorAll('input[name=meal][data-column="' + column + '"]:not(:disabled)').forEach(function (meal) {
        meal.checked = box.checked;
      });
    } else if (box.classList.contains("select-shown")) {
      document.querySelectorAll(box.getAttribute("data-scope") + " li:not([hidden]) input[type=checkbox]:not(:disabled)").forEach(function (member) {
        member.checked = box.checked;
      });
    }
    if (box.closest && box.closest("#order-form")) orderTotal();
  });
  document.addEventListener("input", function (event) {
    var field = event.target;
    if (field.hasAttribute && field.hasAttribute("data-filter")) {
      var words = field.value.trim().toLowerCase();
      document.querySelectorAll(field.getAttribute("data-filter") + " li[data-search]").forEach(function (row) {
        row.hidden = words !== "" && row.getAttribute("data-search").indexOf(words) < 0;
      });
    }
    if (field.hasAttribute && field.hasAttribute("data-counter")) {
      var counter = document.querySelector(field.getAttribute("data-counter"));
      // characters as the server counts them (code points), not UTF-16 units
      counter.textContent = fill(counter.getAttribute("data-template"), { n: Array.from(field.value).length, max: counter.getAttribute("data-max") });
    }
  });

  function orderTotal() {
    var output = document.getElementById("order-total");
    var meals = document.querySelectorAll("#order-form input[name=meal]:checked");
    var members = document.querySelectorAll("#order-form input[name=member]:checked").length;
    var cents = 0;
    meals.forEach(function (meal) { cents += Number(meal.getAttribute("data-price")) * members; });
    var count = document.getElementById("member-count");
    if (count) count.textContent = fill(count.getAttribute("data-template"), { n: members, total: count.getAttribute("data-total") });
    if (output) {
      output.textContent = fill(output.getAttribute("data-template"), {
        meals: meals.length, members: members, orders: meals.length * members, amount: (cents / 100).toFixed(2),
      });
    }
  }

  // A CSV chosen for a new video batch is read into the rows' text box, to be seen and edited there.
  document.addEventListener("change", function (event) {
    var input = event.target;
    if (!input.hasAttribute || !input.hasAttribute("data-fill") || !input.files || !input.files.length) return;
    var reader = new FileReader();
    reader.onload = function () {
      var box = document.querySelector(input.getAttribute("data-fill"));
      box.value = String(reader.result).replace(/^\uFEFF/, "");
      input.value = "";
      box.dispatchEvent(new Event("input", { bubbles: true }));
    };
    reader.readAsText(input.files[0]);
  });

  // The kitchen summary's print button.
  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest("[data-print]")) window.print();
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
