#!/bin/sh
# Rebuilds the dashboard's vendored browser scripts in ../assets:
#   plotly-wbcv.min.js          plotly.js with only the trace types the dashboard draws;
#   plotly.css                  plotly.js's style rules as a stylesheet (wbcv.dashboards.app.LeanDash
#                               tells plotly.js not to insert them one by one as it loads);
#   regenerator-runtime.min.js  the one part of @babel/polyfill that Dash's scripts need
#                               (wbcv.dashboards.app.LeanDash leaves the 99 KB polyfill out of the page).
#
#   sh dashboards/plotly_bundle/build.sh        (needs Node.js >= 20 and the npm registry)
#
# Why: dcc.Graph otherwise loads plotly.js's full 4.8 MB bundle (every trace type), and evaluating
# it was the largest part of the dashboard's first load (benchmarks/bench_dashboard.py). Dash puts
# every .js file of dashboards/assets in the page; once it has defined window.Plotly, dcc.Graph
# uses it and never fetches the full bundle. The built file is committed, so installing and testing
# wbcv needs neither Node.js nor the network; rebuild it only when TRACES or the plotly.js version
# change. The version must be the one the Python plotly package ships
# (python -c "import plotly.offline as o; print(o.get_plotlyjs_version())"): after upgrading
# plotly, set it in package.json, run `npm install --package-lock-only` here, then this script;
# tests/test_dashboard_assets.py fails until the two agree.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../assets/plotly-wbcv.min.js"
TRACES="scatter, scattergl, heatmap"  # as registered by entry.js
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$here/entry.js" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
version=$(node -p "require('$work/node_modules/plotly.js/package.json').version")
# The options of plotly.js's own build (its esbuild-config.js) that matter for these traces; the
# maplibre stylesheet that its registry requires for map traces is left out (no map trace here).
cd "$work"  # esbuild resolves the alias from here
./node_modules/.bin/esbuild entry.js \
  --bundle --minify --format=iife --global-name=Plotly --target=es2016 \
  --define:global=window --define:define.amd=false --alias:regl=@plotly/regl \
  --loader:.css=empty --legal-comments=eof --log-level=warning \
  --banner:js="/*! plotly.js v$version (MIT, Plotly Inc.), partial bundle for wbcv, traces: $TRACES; built by dashboards/plotly_bundle/build.sh */" \
  --outfile="$out"
echo "wrote $out ($(wc -c <"$out") bytes, plotly.js $version: $TRACES)"
css="$here/../assets/plotly.css"
{ printf '/*! plotly.js v%s (MIT, Plotly Inc.) dist/plotly.css; copied by dashboards/plotly_bundle/build.sh */\n' "$version"
  cat node_modules/plotly.js/dist/plotly.css; echo; } >"$css"
echo "wrote $css ($(wc -c <"$css") bytes)"
# Dash's lazy loader calls the global regeneratorRuntime (its code is compiled for old browsers);
# the runtime sets that global when loaded as a plain script.
rt="$here/../assets/regenerator-runtime.min.js"
rt_version=$(node -p "require('$work/node_modules/regenerator-runtime/package.json').version")
./node_modules/.bin/esbuild node_modules/regenerator-runtime/runtime.js \
  --minify --target=es2016 --legal-comments=eof --log-level=warning \
  --banner:js="/*! regenerator-runtime v$rt_version (MIT, Facebook), for Dash without @babel/polyfill; built by dashboards/plotly_bundle/build.sh */" \
  --outfile="$rt"
echo "wrote $rt ($(wc -c <"$rt") bytes, regenerator-runtime $rt_version)"
