"""What every layer shares: errors, atomic writes, spreadsheet-safe CSV cells, the run store and
its typed records, table names, the cell taxonomy, software info.

Imports nothing else of wbcv's and no torch, so the comparison, the report and the dashboard can
read a run without loading the model's libraries. Layering (imports point down only):
command line -> ``wbcv.dashboards`` -> ``wbcv.validation`` -> ``wbcv.inference`` -> ``wbcv.base``.
"""
