// Hopper's pages: draw each time-series chart (uPlot) from the JSON beside it.
// Everything works without this file: every chart has its data table below it.
(function () {
  "use strict";
  var colours = ["#1a5fb4", "#a51d2d", "#26a269", "#865e3c"];
  var dashes = [[], [6, 4], [2, 3], [10, 3]]; // colour is never the only cue
  function draw(el) {
    if (typeof uPlot === "undefined") return;
    var data = document.getElementById(el.dataset.chart + "-data");
    if (!data) return;
    var spec = JSON.parse(data.textContent);
    var xs = spec.labels.map(function (d) { return Date.parse(d + "T12:00:00Z") / 1000; });
    var series = [{}].concat(spec.series.map(function (s, i) {
      return { label: s.label, stroke: colours[i % 4], dash: dashes[i % 4], width: 2 };
    }));
    var width = Math.max(280, Math.min(el.clientWidth || 800, 1000));
    el.textContent = "";
    new uPlot({ width: width, height: 240, series: series, legend: { show: true },
                scales: { x: { time: true } } },
              [xs].concat(spec.series.map(function (s) { return s.values; })), el);
    var canvas = el.querySelector("canvas");
    if (canvas) canvas.setAttribute("aria-hidden", "true");
  }
  function drawAll() {
    document.querySelectorAll("[data-chart]").forEach(draw);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
})();
