// WebGL layers drawn at the screen's pixel ratio. plotly.js draws them at twice the plot's size
// whatever the screen (its config plotGlPixelRatio, default 2): on a 1x screen that is four times
// the pixels for nothing, and a browser drawing WebGL in software pays for every one (about 0.3 s
// of the first page load with 10,000 points, benchmarks/bench_dashboard.py). On a 2x screen it
// stays 2. Loaded after assets/plotly-wbcv.min.js (Dash loads assets in name order).
(function () {
  if (!window.Plotly) return;
  var ratio = Math.min(4, Math.max(1, Math.round(window.devicePixelRatio || 1)));
  window.Plotly.setPlotConfig({plotGlPixelRatio: ratio});
})();
