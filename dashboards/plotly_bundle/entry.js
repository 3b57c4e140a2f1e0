// plotly.js with only what the dashboard draws: scatter (core), scattergl, heatmap. Every component
// (error bars, shapes, annotations, legend, hover, modebar, ...) comes with the core.
// Keep TRACES in build.sh and this list the same; tests/test_dashboard_assets.py checks them
// against the trace types that validation/figures.py and dashboards/app.py build.
'use strict';
var Plotly = require('plotly.js/lib/core');
Plotly.register([require('plotly.js/lib/scattergl'), require('plotly.js/lib/heatmap')]);
module.exports = Plotly;
