"""The `vila-tf` command line: one module per command, the run options declared once
(`vila_tf.cli.options`), one model loader and the exit codes (`vila_tf.core.exits`)."""
