"""Culling a shoot (`vila-tf cull`): capture times, bursts and near-duplicates grouped, each group's
pick, star ratings and rejects by a documented rule, a reason in words for each photo, and the
report a photographer looks at. Pure numpy and Pillow over rows the model already wrote; the files
it leads to (CSV, XMP sidecars) are written by `vila_tf.output`. docs/culling.md is the user's page."""
