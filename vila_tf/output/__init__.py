"""The output layer: every file a command writes (results, rankings, reports, contact sheets)
is checked, locked, recorded for `--resume` and written through here; names written losslessly."""
